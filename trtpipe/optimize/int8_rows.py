"""Dynamic int8 activations quantised per row, so a row's answer does not depend on the rows batched with it.

ONNX Runtime's dynamic quantisation (`DynamicQuantizeLinear`) takes one scale and zero point for the whole
activation tensor: in a batched GPT-2 step every row's int8 rounding then depends on the other rows' ranges, and
BatchEngine would give a request other tokens than it gets alone. Each `DynamicQuantizeLinear` is replaced here by
a per-row symmetric one — scale = max |x| of the row / 127, zero point 128 (u8), q = round(x / scale) + 128 — whose
outputs keep their names and meaning, so the MatMulInteger, Cast and scale Muls after it run as before (the row
scales broadcast against the weights' per-channel scales). Integer GEMMs are exact, so a row's result is the same
alone or in any batch.

One trap, in ONNX Runtime rather than in the graph: its optimizer fuses MatMulInteger → Cast → Mul(scales) →
Add(bias) into MatMulIntegerToFloat, and that kernel multiplies by a non-scalar A scale *after* adding the bias —
bias × row scale. Trained biases then wreck the output (MiniLM sentence cosine 0.64 against fp32; random-init
GPT-2s have zero biases and hid it). The fusion takes an Add of a constant in either operand order, so each bias
Add after a per-row MatMul is written Sub(x, −bias): the same sum bit for bit (negation is exact), which the fusion
does not take; the fused kernel still applies the row scale, to the product alone.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

ZERO_POINT = 128

LEVELS = 127.0


def reduce_max(x: str, y: str, name: str, opset: int) -> onnx.NodeProto:
    if opset >= 18:
        return helper.make_node("ReduceMax", [x, "rows/axes"], [y], name=name, keepdims=1)
    return helper.make_node("ReduceMax", [x], [y], name=name, axes=[-1], keepdims=1)


def per_row_activations(model: onnx.ModelProto) -> int:
    """Rewrite every DynamicQuantizeLinear of `model` in place; returns how many.

    Each becomes scale = max(max |x| of the row, tiny) / 127 (Abs, ReduceMax: shape [..., 1], the scale output),
    x / scale, and a QuantizeLinear of scale 1, zero point 128, that rounds half to even, shifts and saturates in
    one pass (the same in elementwise ops took four more passes over x, and made MiniLM's int8 as slow as fp32).
    A per-axis QuantizeLinear of the flattened rows would save the Div, but OpenVINO's ONNX reader breaks on a
    per-axis scale that is not a constant."""
    graph = model.graph
    shared = {
        "rows/levels": np.array(LEVELS, dtype=np.float32),
        "rows/tiny": np.array(1e-12, dtype=np.float32),
        "rows/zero_point": np.array(ZERO_POINT, dtype=np.uint8),
        "rows/one": np.array(1.0, dtype=np.float32),
    }
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    if opset >= 18:  # ReduceMax takes its axes as an input from opset 18
        shared["rows/axes"] = np.array([-1], dtype=np.int64)
    nodes: list[onnx.NodeProto] = []
    rewritten: set[str] = set()
    count = 0
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear" or node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        count += 1
        x = node.input[0]
        q, scale, zero_point = (list(node.output) + ["", "", ""])[:3]
        rewritten.update(o for o in (q, scale, zero_point) if o)
        p = f"{node.name or x}/rows"
        scale = scale or f"{p}/scale"
        nodes += [
            helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/Abs"),
            reduce_max(f"{p}/abs", f"{p}/max", f"{p}/ReduceMax", opset),
            helper.make_node("Max", [f"{p}/max", "rows/tiny"], [f"{p}/max_safe"], name=f"{p}/Max"),
            helper.make_node("Div", [f"{p}/max_safe", "rows/levels"], [scale], name=f"{p}/Scale"),
        ]
        nodes += [
            helper.make_node("Div", [x, scale], [f"{p}/scaled"], name=f"{p}/Div"),
            helper.make_node(
                "QuantizeLinear",
                [f"{p}/scaled", "rows/one", "rows/zero_point"],
                [q],
                name=f"{p}/QuantizeLinear",
            ),
        ]
        if zero_point:
            nodes.append(
                helper.make_node("Identity", ["rows/zero_point"], [zero_point], name=f"{p}/ZeroPoint")
            )
    if not count:
        return 0
    initializers = {i.name: i for i in graph.initializer}
    graph.initializer.extend(keep_bias_out_of_fusion(nodes, rewritten, initializers))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {name for n in graph.node for name in n.input} | {o.name for o in graph.output}
    kept_inits = [i for i in graph.initializer if i.name in used]  # the biases now read negated
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    kept = [v for v in graph.value_info if v.name not in rewritten]  # scales were scalars, now one per row
    del graph.value_info[:]
    graph.value_info.extend(kept)
    known = {i.name for i in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in shared.items() if k not in known)
    return count


def keep_bias_out_of_fusion(
    nodes: list[onnx.NodeProto], quantized: set[str], initializers: dict[str, onnx.TensorProto]
) -> list[onnx.TensorProto]:
    """Write each constant-bias Add after a MatMulInteger of per-row activations as Sub(x, −bias) (see the module
    docstring), in place; returns the negated biases to add as initializers."""
    producer = {out: node for node in nodes for out in node.output}

    def parent(name: str, op: str) -> onnx.NodeProto | None:
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def scaled_integer_product(name: str) -> bool:
        """`name` is Mul(Cast(MatMulInteger(per-row activations, …)), scales), in either operand order."""
        mul = parent(name, "Mul")
        if mul is None:
            return False
        for operand in mul.input:
            cast = parent(operand, "Cast")
            matmul = parent(cast.input[0], "MatMulInteger") if cast is not None else None
            if matmul is not None and matmul.input[0] in quantized:
                return True
        return False

    constants = dict(initializers)
    for node in nodes:  # a bias may also come from a Constant node
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None:
            constants[node.output[0]] = value
    negated: dict[str, onnx.TensorProto] = {}
    for index, node in enumerate(nodes):
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for x, bias in (node.input, reversed(node.input)):
            if scaled_integer_product(x) and bias in constants:
                name = f"{bias}/negated"
                if name not in negated:
                    negated[name] = numpy_helper.from_array(-numpy_helper.to_array(constants[bias]), name)
                nodes[index] = helper.make_node("Sub", [x, name], list(node.output), name=f"{node.name}/bias")
                break
    return list(negated.values())
