"""fp16 with fp32 islands found by a real-text scan, baked into the graph as Casts (so ORT and a strongly typed
TensorRT build honour the same choice).

1. Run the fp32 graph on real text with every intermediate tensor exposed; record max |x| per tensor.
2. Block (keep fp32): LayerNorm / Softmax / Pow / ReduceMean by default, the nodes that produce the graph's
   outputs (logits, embeddings), and every node whose output leaves fp16's range (with a safety margin).
3. Convert, run again, and also block nodes whose output drifts by more than `max_rel_error` from fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

DEFAULT_BLOCK_OPS = ["LayerNormalization", "SkipLayerNormalization", "Softmax", "Pow", "ReduceMean"]
SHAPE_OPS = {
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Flatten",
    "Identity",
    "Transpose",
    "Concat",
    "Gather",
    "Slice",
    "Cast",
}
FP16_MAX = 65504.0


def _float_tensors(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    out = {}
    for node in model.graph.node:
        for name in node.output:
            info = known.get(name)
            if info is not None and info.type.tensor_type.elem_type in (
                TensorProto.FLOAT,
                TensorProto.FLOAT16,
            ):
                out[name] = info
    return out


class TensorProbe:
    """An unoptimised session of `model` that also returns intermediate float tensors (every tensor is the graph's
    own, not a fused kernel's)."""

    def __init__(self, model: onnx.ModelProto, names: list[str] | None = None):
        import onnxruntime as ort

        probe = onnx.ModelProto.FromString(model.SerializeToString())
        tensors = _float_tensors(probe)
        wanted = [n for n in (names if names is not None else list(tensors)) if n in tensors]
        existing = {o.name for o in probe.graph.output}
        for name in wanted:
            if name not in existing:
                probe.graph.output.append(
                    helper.make_tensor_value_info(name, tensors[name].type.tensor_type.elem_type, None)
                )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.names = [o.name for o in self.session.get_outputs() if o.name in set(wanted)]
        self.inputs = {i.name for i in self.session.get_inputs()}

    def run(self, feed: dict) -> dict[str, np.ndarray]:
        values = self.session.run(self.names, {k: v for k, v in feed.items() if k in self.inputs})
        return {n: np.asarray(v, dtype=np.float32) for n, v in zip(self.names, values)}


def peak_abs(model: onnx.ModelProto, feeds: list[dict]) -> dict[str, float]:
    probe = TensorProbe(model)
    peaks: dict[str, float] = {}
    for feed in feeds:
        for name, value in probe.run(feed).items():
            finite = np.abs(value[np.isfinite(value)])
            peaks[name] = max(peaks.get(name, 0.0), float(finite.max()) if finite.size else 0.0)
            if not np.isfinite(value).all():
                peaks[name] = float("inf")
    return peaks


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output}


def output_compute_nodes(model: onnx.ModelProto) -> list[str]:
    """The compute nodes that produce each graph output (walking back through shape-only ops)."""
    producers = _producers(model)
    names = []
    for output in model.graph.output:
        if output.name.startswith("present."):
            continue  # the KV cache is a concat of past and new rows, no arithmetic
        node = producers.get(output.name)
        seen = 0
        while node is not None and node.op_type in SHAPE_OPS and seen < 16:
            node = producers.get(node.input[0])
            seen += 1
        while node is not None and node.op_type == "Add" and seen < 20:  # bias add: keep with its MatMul/Gemm
            names.append(node.name)
            node = next(
                (
                    producers[i]
                    for i in node.input
                    if i in producers and producers[i].op_type in ("MatMul", "Gemm")
                ),
                None,
            )
            seen += 1
        if node is not None:
            names.append(node.name)
    return [n for n in names if n]


def overflow_nodes(model: onnx.ModelProto, peaks: dict[str, float], margin: float = 0.5) -> list[str]:
    """Nodes whose output magnitude exceeds margin × fp16 max on the scanned text."""
    producers = _producers(model)
    return sorted(
        {
            producers[n].name
            for n, peak in peaks.items()
            if n in producers and producers[n].name and peak > margin * FP16_MAX
        }
    )


def drift_nodes(
    model32: onnx.ModelProto, model16: onnx.ModelProto, feeds: list[dict], max_rel_error: float
) -> list[str]:
    """Nodes whose fp16 output differs from fp32 by more than max_rel_error (relative RMS over the feeds)."""
    producers = _producers(model32)
    names = [n for n, node in producers.items() if node.name and node.op_type not in SHAPE_OPS | {"Constant"}]
    probe32, probe16 = TensorProbe(model32, names), TensorProbe(model16, names)
    err: dict[str, float] = {}
    num: dict[str, float] = {}
    for feed in feeds:
        a_all, b_all = probe32.run(feed), probe16.run(feed)
        for name, a in a_all.items():
            b = b_all.get(name)
            if b is None or a.shape != b.shape:
                continue
            with np.errstate(invalid="ignore", over="ignore"):
                d = np.nan_to_num(b.astype(np.float64) - a, nan=1e30, posinf=1e30, neginf=1e30)
            finite = np.isfinite(a)
            err[name] = err.get(name, 0.0) + float((d[finite] ** 2).sum())
            num[name] = num.get(name, 0.0) + float((a[finite].astype(np.float64) ** 2).sum())
    return sorted({producers[n].name for n in err if num[n] > 0 and np.sqrt(err[n] / num[n]) > max_rel_error})


def clamp_constants(model: onnx.ModelProto, limit: float = FP16_MAX) -> int:
    """Clamp finite float constants beyond ±limit (e.g. transformers' attention-mask value finfo(fp32).min) to
    ±limit: in fp16 they would become ±inf, and 0 · inf = NaN where a mask multiplies them. Masked logits still
    vanish in softmax (exp(−65504) = 0), so fp32 results do not change."""
    from onnx import numpy_helper

    changed = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for tensor in tensors:
        if tensor.data_type != TensorProto.FLOAT:
            continue
        array = numpy_helper.to_array(tensor)
        big = np.isfinite(array) & (np.abs(array) > limit)
        if big.any():
            clipped = np.where(big, np.sign(array) * limit, array).astype(np.float32)
            tensor.CopyFrom(numpy_helper.from_array(clipped, tensor.name))
            changed += int(big.sum())
    return changed


def convert(model: onnx.ModelProto, node_block: list[str], op_block: list[str]) -> onnx.ModelProto:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    copy = onnx.ModelProto.FromString(model.SerializeToString())
    clamp_constants(copy)
    return convert_float_to_float16(
        copy,
        keep_io_types=True,
        op_block_list=op_block,
        node_block_list=node_block,
        disable_shape_infer=False,
    )


def to_fp16(
    source: Path, feeds: list[dict], max_rel_error: float = 0.05, extra_block: list[str] | None = None
):
    """Return (fp16 model, report). The report lists every fp32 island and why it is one."""
    model = onnx.load(str(source))
    peaks = peak_abs(model, feeds)
    outputs = output_compute_nodes(model)
    overflow = overflow_nodes(model, peaks)
    block = sorted(set(outputs) | set(overflow) | set(extra_block or []))
    converted = convert(model, block, DEFAULT_BLOCK_OPS)
    drift = [n for n in drift_nodes(model, converted, feeds, max_rel_error) if n not in block]
    if drift:
        block = sorted(set(block) | set(drift))
        converted = convert(model, block, DEFAULT_BLOCK_OPS)
    islands = {op: sum(1 for n in model.graph.node if n.op_type == op) for op in DEFAULT_BLOCK_OPS}
    report = {
        "fp32_ops": {k: v for k, v in islands.items() if v},
        "fp32_nodes": {
            "outputs": outputs,
            "overflow": overflow,
            "drift": drift,
            "user": list(extra_block or []),
        },
        "max_rel_error": max_rel_error,
        "scan_batches": len(feeds),
        "peak_abs_activation": max((p for p in peaks.values() if np.isfinite(p)), default=0.0),
        "casts": sum(1 for n in converted.graph.node if n.op_type == "Cast"),
    }
    return converted, report
