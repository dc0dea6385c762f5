"""Dynamic int8 activations quantised per row, so a row's answer does not depend on the rows batched with it.

ONNX Runtime's dynamic quantisation (`DynamicQuantizeLinear`) takes one scale and zero point for the whole
activation tensor: in a batched GPT-2 step every row's int8 rounding then depends on the other rows' ranges, and
BatchEngine would give a request other tokens than it gets alone. Each `DynamicQuantizeLinear` is replaced here by
a per-row symmetric one — scale = max |x| of the row / 127, zero point 128 (u8), q = round(x / scale) + 128 — whose
outputs keep their names and meaning, so the MatMulInteger, Cast and scale Muls after it run as before (the row
scales broadcast against the weights' per-channel scales). Integer GEMMs are exact, so a row's result is the same
alone or in any batch.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ZERO_POINT = 128
LEVELS = 127.0


def reduce_max(x: str, y: str, name: str, opset: int) -> onnx.NodeProto:
    if opset >= 18:
        return helper.make_node("ReduceMax", [x, "rows/axes"], [y], name=name, keepdims=1)
    return helper.make_node("ReduceMax", [x], [y], name=name, axes=[-1], keepdims=1)


def per_row_activations(model: onnx.ModelProto) -> int:
    """Rewrite every DynamicQuantizeLinear of `model` in place; returns how many."""
    graph = model.graph
    shared = {
        "rows/levels": np.array(LEVELS, dtype=np.float32),
        "rows/tiny": np.array(1e-12, dtype=np.float32),
        "rows/zero_point_f": np.array(float(ZERO_POINT), dtype=np.float32),
        "rows/low": np.array(0.0, dtype=np.float32),
        "rows/high": np.array(255.0, dtype=np.float32),
        "rows/zero_point": np.array(ZERO_POINT, dtype=np.uint8),
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
        nodes += [
            helper.make_node("Abs", [x], [f"{p}/abs"], name=f"{p}/Abs"),
            reduce_max(f"{p}/abs", f"{p}/max", f"{p}/ReduceMax", opset),
            helper.make_node("Max", [f"{p}/max", "rows/tiny"], [f"{p}/max_safe"], name=f"{p}/Max"),
            helper.make_node(
                "Div", [f"{p}/max_safe", "rows/levels"], [scale or f"{p}/scale"], name=f"{p}/Scale"
            ),
            helper.make_node("Div", [x, scale or f"{p}/scale"], [f"{p}/scaled"], name=f"{p}/Div"),
            helper.make_node("Round", [f"{p}/scaled"], [f"{p}/rounded"], name=f"{p}/Round"),
            helper.make_node(
                "Add", [f"{p}/rounded", "rows/zero_point_f"], [f"{p}/shifted"], name=f"{p}/Shift"
            ),
            helper.make_node(
                "Clip", [f"{p}/shifted", "rows/low", "rows/high"], [f"{p}/clipped"], name=f"{p}/Clip"
            ),
            helper.make_node("Cast", [f"{p}/clipped"], [q], name=f"{p}/Cast", to=TensorProto.UINT8),
        ]
        if zero_point:
            nodes.append(
                helper.make_node("Identity", ["rows/zero_point"], [zero_point], name=f"{p}/ZeroPoint")
            )
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [v for v in graph.value_info if v.name not in rewritten]  # scales were scalars, now one per row
    del graph.value_info[:]
    graph.value_info.extend(kept)
    known = {i.name for i in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in shared.items() if k not in known)
    return count
