"""int8-nncf: static int8 made by NNCF (OpenVINO's quantizer) for the `ov` backend, under our accuracy gate.

NNCF's transformer recipe (`nncf.quantize(model_type=TRANSFORMER, preset=PERFORMANCE)`: symmetric int8, per-channel
weights, SmoothQuant on the MatMuls, attention's Q·Kᵀ quantized too) on the bundle's fp32 ONNX, through NNCF's ONNX
backend: the result is a standard QDQ ONNX file, so it lives in the bundle like every other variant, OpenVINO turns
its Q/DQ pairs into its own int8 kernels, and ONNX Runtime's CPU provider runs it too. Where the gate fails, our
search keeps the weight MatMuls with the largest estimated error in float (NNCF's `IgnoredScope`), the same ladder
as int8-qdq, until it passes on calibration text; the held-out gate, run on OpenVINO, has the last word.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import onnx

from ..console import status
from ..export import graph
from ..runtime.errors import UserError
from .gate import verdicts
from .int8 import WEIGHT_LEVELS, consistent_per_weight, node_scores, restore_sharing, weight_matmuls

FRACTIONS = (0, 1 / 12, 1 / 6, 1 / 3, 1 / 2)


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise UserError("int8-nncf needs nncf: pip install 'trtpipe[export]'") from None
    return nncf


@contextlib.contextmanager
def quiet_nncf():
    """NNCF logs a line per algorithm step and draws its own progress bars; ours says what it is doing."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def quantize_nncf(
    model: onnx.ModelProto, feeds: list[dict], ignored: list[str] | None = None
) -> tuple[onnx.ModelProto, dict]:
    """One NNCF run: its transformer recipe with `ignored` weight MatMuls left in float."""
    nncf = import_nncf()
    started = time.perf_counter()
    inputs = {i.name for i in model.graph.input}
    dataset = nncf.Dataset([{k: v for k, v in feed.items() if k in inputs} for feed in feeds])
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    scope = nncf.IgnoredScope(names=list(ignored), validate=False) if ignored else None
    with quiet_nncf():
        quantized = nncf.quantize(
            model,
            dataset,
            preset=nncf.QuantizationPreset.PERFORMANCE,
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(feeds),
            # 7-bit weights in every layer (NNCF's default fixes the first only): AVX2 CPUs without VNNI saturate
            # full-range int8 weights, as int8.REDUCE_RANGE measured for ONNX Runtime
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
            **({"ignored_scope": scope} if scope else {}),
        )
    restore_sharing(quantized)  # one int8 copy of each of ALBERT's shared weights
    return quantized, {
        "quantizer": f"nncf {nncf.__version__}",
        "recipe": "nncf.quantize(preset=PERFORMANCE, model_type=TRANSFORMER, overflow_fix=ENABLE)",
        "calibration_batches": len(feeds),
        "seconds": round(time.perf_counter() - started, 1),
        **int8_matmuls(quantized),
    }


def int8_matmuls(model: onnx.ModelProto) -> dict:
    """How many MatMuls read a DequantizeLinear on each side: weight × activation, activation × activation."""
    produced = {out: node for node in model.graph.node for out in node.output}
    inits = {i.name for i in model.graph.initializer}

    def dequantized(name: str) -> bool:
        node = produced.get(name)
        return node is not None and node.op_type == "DequantizeLinear"

    def weight(name: str) -> bool:
        node = produced.get(name)
        return name in inits or (
            node is not None and node.op_type == "DequantizeLinear" and node.input[0] in inits
        )

    kinds = Counter()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        if all(dequantized(i) for i in node.input[:2]):
            kinds["int8_weight_matmuls" if weight(node.input[1]) else "int8_activation_matmuls"] += 1
        else:
            kinds["float_matmuls"] += 1
    counts = Counter(
        n.op_type for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
    )
    return {
        "int8_weight_matmuls": kinds["int8_weight_matmuls"],
        "int8_activation_matmuls": kinds["int8_activation_matmuls"],
        "float_matmuls": kinds["float_matmuls"],
        "qdq_nodes": dict(counts),
    }


def quantize_nncf_gated(
    source: Path, feeds: list[dict], passes: Callable[[onnx.ModelProto], bool]
) -> tuple[onnx.ModelProto, dict]:
    """NNCF's recipe; if the gate fails on calibration text, the weight MatMuls with the largest estimated error
    (1/12, 1/6, 1/3, 1/2 of them, with every node that shares their weight) stay float until it passes. The last
    rung tried is returned when none passes (the held-out gate then refuses it)."""
    model = onnx.load(str(source))
    graph.bypass_weight_identities(model)  # bundles exported before the export pass did this
    scores = node_scores(model, feeds[:4], gemm=True, levels=WEIGHT_LEVELS)
    order = sorted(scores, key=lambda n: -scores[n]["per-channel"])
    weight_of = {n.name: n.input[1] for n in weight_matmuls(model, gemm=True)}
    tried: list[dict] = []
    result = None
    for fraction in FRACTIONS:
        worst = set(order[: int(round(fraction * len(order)))])
        plan = consistent_per_weight({n: "fp32" if n in worst else "per-channel" for n in order}, weight_of)
        ignored = [n for n in order if plan[n] == "fp32"]
        if tried and len(ignored) == tried[-1]["float_weight_nodes"]:
            continue  # sharing made this rung the same as the last one
        candidate = onnx.ModelProto()
        candidate.CopyFrom(model)  # each rung starts from the untouched export
        with status(f"int8-nncf: NNCF's transformer recipe, {len(ignored)} weight MatMuls kept float"):
            quantized, report = quantize_nncf(candidate, feeds, ignored)
        ok = passes(quantized)
        tried.append({"float_weight_nodes": len(ignored), **verdicts(passes, ok)})
        result = (quantized, {**report, "fp32_nodes": ignored, "plans_tried": tried})
        if ok:
            break
    return result
