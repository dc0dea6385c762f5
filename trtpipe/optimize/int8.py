"""int8: dynamic quantisation for the CPU (ORT, VNNI) and static symmetric QDQ for TensorRT.

Dynamic int8 quantises only MatMuls with a constant weight (activation × activation MatMuls — QKᵀ and AV — stay
fp32), each by its plan's scheme: per-tensor (fastest), per-channel (per output column) or fp32; int8_plan.py searches
the plan. The estimated quantisation error of a node (weight rounding error plus the dynamic per-tensor activation
error measured on calibration text) orders that search where errors are not measured, and the static QDQ fallback.
"""

from __future__ import annotations

import contextvars
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..console import progress
from ..export import graph
from .gate import verdicts

EXTRA = {"MatMulConstBOnly": True, "DefaultTensorType": onnx.TensorProto.FLOAT}
# REDUCE_RANGE: on x86 CPUs without VNNI (AVX2 only: this machine's AMD EPYC) ONNX Runtime's u8 × s8 kernels add
# pairs of products in 16 bits with saturation, and full-range int8 weights overflow them. Measured here: MiniLM's
# dynamic int8 with s8 weights, every weight per tensor, 0.959 / 0.922 sentence cosine (mean / min); tiny ModernBERT's
# gate failed at every plan. The gate runs where a bundle is built, not where it is deployed, so every bundle gets
# weights that cannot saturate anywhere: dynamic int8 stores u8 weights (u8 × u8 kernels, full 8 bits: MiniLM 0.981
# per tensor, 0.9931 / 0.9843 per channel, as fast as s8 on this CPU: 173-177 vs 180 ms at b8 s128), and static
# int8-qdq, which TensorRT reads as symmetric s8, keeps 7 bits ([-64, 63]; tiny BERT 0.976 → 0.9993). On VNNI CPUs
# u8 weights forgo VNNI's u8 × s8 instruction: dynamic int8 there is slower than it could be (not measured here).
WEIGHT_LEVELS = 63
# `optimize --int8-weights s8` (explicit, never the default): full-range s8 weights, which VNNI's u8 × s8 instruction
# multiplies directly; u8 × u8 runs on slower kernels there (MiniLM b8 s128 on an AVX-512 VNNI EPYC, the same plan:
# s8 1.67× fp32, u8 1.13×; `python bench/int8_weights.py`). Such a variant saturates on x86 CPUs without VNNI, so
# its manifest entry names the CPU it needs (`cpu_needs`) and the runtime refuses it elsewhere (runtime/cpu.py).
INT8_WEIGHTS = ("u8", "s8")
WEIGHTS: contextvars.ContextVar[str] = contextvars.ContextVar("int8_weights", default="u8")


def restore_sharing(model: onnx.ModelProto) -> None:
    """ORT's quantizer rewrites Gemm(transB) as MatMul on a transposed copy (un-tying a tied MLM head) and gives
    each node its own quantised weight (copies of ALBERT's shared layers): tie and deduplicate again."""
    graph.tie_transposed_weights(model)
    graph.dedupe_initializers(model)


def weight_matmuls(model: onnx.ModelProto, gemm: bool = False) -> list[onnx.NodeProto]:
    """Named MatMul (and with gemm=True, Gemm) nodes whose second input is a constant weight."""
    inits = {i.name for i in model.graph.initializer}
    ops = ("MatMul", "Gemm") if gemm else ("MatMul",)
    return [
        n
        for n in model.graph.node
        if n.op_type in ops and len(n.input) > 1 and n.input[1] in inits and n.name
    ]


def _weight_error(w: np.ndarray, per_channel: bool, levels: int = 127) -> float:
    w = w.astype(np.float64)
    scale = np.abs(w).max(axis=0, keepdims=True) if per_channel else np.abs(w).max()
    scale = np.where(scale == 0, 1.0, scale) / levels
    q = np.clip(np.round(w / scale), -levels, levels) * scale
    return float(np.sqrt(np.mean((w - q) ** 2)) / max(np.sqrt(np.mean(w**2)), 1e-12))


def node_scores(
    model: onnx.ModelProto, feeds: list[dict], gemm: bool = False, levels: int = 127
) -> dict[str, dict[str, float]]:
    """Estimated relative output error of each weight MatMul under per-tensor and per-channel weights, with
    dynamic uint8 per-tensor activations: e ≈ e_weight + e_activation."""
    from .fp16 import TensorProbe

    inits = {i.name: i for i in model.graph.initializer}
    nodes = weight_matmuls(model, gemm)
    graph_inputs = {i.name for i in model.graph.input}
    probe_names = [n.input[0] for n in nodes if n.input[0] not in graph_inputs]
    probe = TensorProbe(model, probe_names)
    act_err: dict[str, list[float]] = {}
    for feed in feeds:
        values = probe.run(feed)
        for node in nodes:
            x = values.get(node.input[0])
            if x is None:
                x = feed.get(node.input[0])
            if x is None:
                continue
            x = x.astype(np.float64)
            lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
            scale = (hi - lo) / 255.0
            rms = float(np.sqrt(np.mean(x**2))) or 1e-12
            act_err.setdefault(node.name, []).append(scale / np.sqrt(12.0) / rms)
    scores = {}
    for node in nodes:
        w = numpy_helper.to_array(inits[node.input[1]])
        if node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute):
            w = w.T  # output columns are rows of a transposed weight
        e_x = float(np.mean(act_err.get(node.name, [0.0])))
        scores[node.name] = {
            "per-tensor": e_x + _weight_error(w, False, levels),
            "per-channel": e_x + _weight_error(w, True, levels),
        }
    return scores


SAFETY = {"per-tensor": 0, "per-channel": 1, "fp32": 2}


def consistent_per_weight(plan: dict[str, str], weight_of: dict[str, str]) -> dict[str, str]:
    """Nodes that share a weight (ALBERT's layers) get one scheme, the safest any of them asked for: ORT's quantizer
    replaces a weight the first time it quantises it, so a second scheme for the same weight would leave a
    DequantizeLinear + fp32 MatMul behind (int8 ALBERT-base ran at 1.14× instead of 2×+ for that)."""
    safest: dict[str, str] = {}
    for node, scheme in plan.items():
        weight = weight_of.get(node, node)
        if weight not in safest or SAFETY[scheme] > SAFETY[safest[weight]]:
            safest[weight] = scheme
    return {node: safest[weight_of.get(node, node)] for node in plan}


def quiet_quantizer():
    """ORT's quantizers log pre-processing advice on the root logger and per-node INFO lines; keep them quiet."""
    import contextlib
    import logging

    @contextlib.contextmanager
    def silenced():
        loggers = [logging.getLogger(), logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")]
        levels = [lg.level for lg in loggers]
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)

    return silenced()


def apply_dynamic(
    model: onnx.ModelProto, plan: dict[str, str], per_row: bool = True, weights: str | None = None
) -> onnx.ModelProto:
    """Quantise per the plan: per-channel nodes first, then per-tensor nodes (two ORT passes). per_row (default):
    activations quantised per row (int8_rows), so a batched GPT-2 step gives every row what it gets alone and an
    encoder gives a text the same vectors whatever it is batched or padded with; per_row=False keeps ONNX Runtime's
    one scale per tensor (for comparison). weights: "u8" or "s8" (INT8_WEIGHTS); by default the WEIGHTS context's,
    which `optimize` sets for the whole search."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    per_channel = [n for n, scheme in plan.items() if scheme == "per-channel"]
    per_tensor = [n for n, scheme in plan.items() if scheme == "per-tensor"]
    with tempfile.TemporaryDirectory() as tmp, quiet_quantizer():
        current = Path(tmp) / "in.onnx"
        onnx.save(model, str(current))
        for index, (nodes, channel) in enumerate(((per_channel, True), (per_tensor, False))):
            if not nodes:
                continue
            target = Path(tmp) / f"pass{index}.onnx"
            quantize_dynamic(
                str(current),
                str(target),
                per_channel=channel,
                weight_type=QuantType.QInt8 if (weights or WEIGHTS.get()) == "s8" else QuantType.QUInt8,
                nodes_to_quantize=nodes,
                extra_options=EXTRA,
            )
            current = target
        quantized = onnx.load(str(current))
    restore_sharing(quantized)
    if per_row:
        from .int8_rows import per_row_activations

        per_row_activations(quantized)
    return quantized


# ------------------------------------------------------------------------------------------ static QDQ (TRT)


class FeedReader:
    """onnxruntime.quantization.CalibrationDataReader over prepared feeds, with a progress bar."""

    def __init__(self, feeds: list[dict], input_names: set[str], bar=None, task=None):
        self.feeds = feeds
        self.names = input_names
        self.index = 0
        self.bar, self.task = bar, task

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        feed = {k: v for k, v in self.feeds[self.index].items() if k in self.names}
        self.index += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        return feed

    def rewind(self):
        self.index = 0


def quantize_qdq_gated(
    source: Path, feeds: list[dict], method: str, passes: Callable[[onnx.ModelProto], bool]
):
    """Static QDQ; if the gate fails on calibration text, the weight MatMuls with the largest estimated error stay
    fp32 (1/12, 1/6, 1/3, 1/2 of them, with every node that shares their weight) until it passes. Returns
    (model, report)."""
    model = onnx.load(str(source))
    with tempfile.TemporaryDirectory() as tmp:
        if graph.bypass_weight_identities(model):  # bundles exported before the export pass did this
            source = Path(tmp) / "source.onnx"
            onnx.save(model, str(source))
        scores = node_scores(model, feeds[:4], gemm=True, levels=WEIGHT_LEVELS)
        order = sorted(scores, key=lambda n: -scores[n]["per-channel"])
        weight_of = {n.name: n.input[1] for n in weight_matmuls(model, gemm=True)}
        tried = []
        result = None
        for fraction in (0, 1 / 12, 1 / 6, 1 / 3, 1 / 2):
            worst = order[: int(round(fraction * len(order)))]
            # a weight stays fp32 for every node that shares it (ALBERT), or it would be stored twice
            plan = consistent_per_weight(
                {n: "fp32" if n in worst else "per-channel" for n in order}, weight_of
            )
            excluded = [n for n in order if plan[n] == "fp32"]
            if tried and len(excluded) == tried[-1]["fp32_nodes"]:
                continue  # sharing made this rung the same as the last one
            quantized, report = quantize_qdq(source, feeds, method, exclude=excluded)
            ok = passes(quantized)
            tried.append({"fp32_nodes": len(excluded), **verdicts(passes, ok)})
            result = (quantized, {**report, "fp32_nodes": excluded, "plans_tried": tried})
            if ok:
                break
    return result


def uniform_feeds(feeds: list[dict]) -> list[dict]:
    """Histogram calibrators stack tensors across batches, so every feed must have one shape: keep the most common
    batch size, pad sequences to the longest (left for GPT-2 prefill, right for encoders), and drop decode steps."""
    prefill = [
        f for f in feeds if "past_key_values.0.key" not in f or f["past_key_values.0.key"].shape[2] == 0
    ]
    sizes = [f["input_ids"].shape[0] for f in prefill]
    batch = max(set(sizes), key=sizes.count)
    chosen = [f for f in prefill if f["input_ids"].shape[0] == batch]
    width = max(f["input_ids"].shape[1] for f in chosen)
    out = []
    for feed in chosen:
        padded = {}
        pad = width - feed["input_ids"].shape[1]
        for name, value in feed.items():
            if name in ("input_ids", "attention_mask", "token_type_ids", "position_ids") and pad:
                spec = ((0, 0), (pad, 0)) if "past_key_values.0.key" in feed else ((0, 0), (0, pad))
                value = np.pad(value, spec)
            padded[name] = value
        out.append(padded)
    return out


def quantize_qdq(
    source: Path,
    feeds: list[dict],
    method: str = "minmax",
    percentile: float = 99.999,
    exclude: list[str] | None = None,
) -> tuple[onnx.ModelProto, dict]:
    """Static int8 QDQ, symmetric activations and per-channel symmetric weights, as TensorRT expects."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    model = onnx.load(str(source))
    inputs = {i.name for i in model.graph.input}
    inits = {i.name for i in model.graph.initializer}
    # activation × activation MatMuls (QKᵀ, AV) stay fp32, as in the dynamic variant
    act_matmuls = [
        n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits and n.name
    ]
    # DedicatedQDQPair: only the quantised consumer reads the Q/DQ'd tensor; residual adds keep fp32 values
    extra = {
        "ActivationSymmetric": True,
        "WeightSymmetric": True,
        "MatMulConstBOnly": True,
        "QuantizeBias": False,
        "CalibPercentile": percentile,
        "DefaultTensorType": onnx.TensorProto.FLOAT,
        "DedicatedQDQPair": True,
        "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
    }
    if method != "minmax":
        feeds = uniform_feeds(feeds)
    with tempfile.TemporaryDirectory() as tmp, progress() as bar, quiet_quantizer():
        task = bar.add_task(f"int8-qdq: calibrating ({method})", total=len(feeds))
        target = Path(tmp) / "qdq.onnx"
        quantize_static(
            str(source),
            str(target),
            FeedReader(feeds, inputs, bar, task),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            calibrate_method=methods[method],
            extra_options=extra,
            nodes_to_exclude=list(exclude or []) + act_matmuls,
            reduce_range=True,  # 7-bit weights: see REDUCE_RANGE
        )
        quantized = onnx.load(str(target))
    restore_sharing(quantized)
    counts = {
        op: sum(1 for n in quantized.graph.node if n.op_type == op)
        for op in ("QuantizeLinear", "DequantizeLinear")
    }
    return quantized, {
        "method": method,
        "calibration_batches": len(feeds),
        "qdq_nodes": counts,
        "symmetric": True,
        "per_channel_weights": True,
        "weight_bits": 7,
    }
