"""GPT-2 standard decoder graph → the ORT-only in-place KV variant (`model.kv-inplace.onnx`).

The interop graph concatenates past and new keys into a fresh `present` every step (a copy of the whole cache per
layer per token). Here each layer's attention core is replaced by ONNX Runtime's GroupQueryAttention contrib op
(num_kv_heads = num_heads, packed QKV input) whose past and present are bound to the same caller-owned buffer:
the new K/V row is written in place. Everything else — embeddings, LayerNorms, MatMuls (fp32 or MatMulNBits),
the tied LM head — is kept node for node, so a weight variant (int4, int8-wo) can be rewritten the same way.

I/O of the rewritten graph: input_ids [B,S], position_ids [B,S], seqlens_k [B] int32 (valid length − 1 per
row, after this step), total_sequence_length [] int32, past_key_values.{i}.key|value [B,H,T,D] where T is the
buffer capacity (the same buffer is bound as present.{i}.key|value). The attention mask input is gone: GQA
attends positions [0, seqlens_k] causally, so prompts are right-aligned per row (the runtime prefills rows
one by one into their slice of the buffer).
"""

from __future__ import annotations

import math

import onnx
from onnx import TensorProto, helper

WEIGHT_OPS = ("MatMul", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _weight_matmuls(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    inits = {i.name for i in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type in WEIGHT_OPS and len(node.input) > 1 and node.input[1] in inits:
            found.append(node)
        elif node.op_type == "MatMul" and len(node.input) > 1 and node.input[1] not in inits:
            continue
    return found


def rewrite_kv_inplace(
    model: onnx.ModelProto, num_layers: int, num_heads: int, head_dim: int
) -> onnx.ModelProto:
    """Return a copy of `model` with GroupQueryAttention (shared past/present buffers) in every layer."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    matmuls = _weight_matmuls(graph)
    if len(matmuls) < 4 * num_layers:
        raise ValueError(f"expected {4 * num_layers} weight MatMuls (4 per layer), found {len(matmuls)}")
    users = _consumers(graph)
    new_nodes: dict[int, onnx.NodeProto] = {}  # insert GQA before the c_proj MatMul of each layer
    for layer in range(num_layers):
        c_attn, c_proj = matmuls[4 * layer], matmuls[4 * layer + 1]
        qkv = c_attn.output[0]
        adds = [n for n in users.get(qkv, []) if n.op_type == "Add"]
        if adds:  # MatMul + bias Add; MatMulNBits may carry the bias itself
            qkv = adds[0].output[0]
        attn = f"/kv_inplace/layer{layer}/attention"
        gqa = helper.make_node(
            "GroupQueryAttention",
            [
                qkv,
                "",
                "",
                f"past_key_values.{layer}.key",
                f"past_key_values.{layer}.value",
                "seqlens_k",
                "total_sequence_length",
            ],
            [attn, f"present.{layer}.key", f"present.{layer}.value"],
            name=f"/kv_inplace/layer{layer}/GroupQueryAttention",
            domain="com.microsoft",
            num_heads=num_heads,
            kv_num_heads=num_heads,
            scale=1.0 / math.sqrt(head_dim),
        )
        c_proj.input[0] = attn
        new_nodes[id(c_proj)] = gqa
    # the old Concat nodes that produced present.* become dead: rename their outputs
    presents = {f"present.{i}.{k}" for i in range(num_layers) for k in ("key", "value")}
    for node in graph.node:
        for index, name in enumerate(node.output):
            if name in presents:
                node.output[index] = f"/kv_inplace/dead/{name}"
    ordered = []
    for node in graph.node:
        if id(node) in new_nodes:
            ordered.append(new_nodes[id(node)])
        ordered.append(node)
    del graph.node[:]
    graph.node.extend(ordered)
    # inputs: attention_mask → seqlens_k + total_sequence_length; past/present dims become the buffer capacity
    kept = [i for i in graph.input if i.name != "attention_mask"]
    del graph.input[:]
    graph.input.extend(kept)
    graph.input.append(helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch"]))
    graph.input.append(helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []))
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.shape.dim[2].dim_param = "max_sequence"
    _remove_dead(graph)
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def _remove_dead(graph: onnx.GraphProto) -> None:
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    inputs = [i for i in graph.input if i.name in needed]
    del graph.input[:]
    graph.input.extend(inputs)


def kv_inplace_specs(
    num_layers: int, num_heads: int, head_dim: int, vocab: int | None = None
) -> tuple[list, list]:
    """Manifest I/O specs of the rewritten graph."""
    inputs = [
        {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
        {"name": "position_ids", "dtype": "int64", "shape": ["batch", "sequence"]},
    ]
    outputs = [{"name": "logits", "dtype": "float32", "shape": ["batch", 1, vocab or "vocab"]}]
    for layer in range(num_layers):
        for kind in ("key", "value"):
            inputs.append(
                {
                    "name": f"past_key_values.{layer}.{kind}",
                    "dtype": "float32",
                    "shape": ["batch", num_heads, "max_sequence", head_dim],
                }
            )
            outputs.append(
                {
                    "name": f"present.{layer}.{kind}",
                    "dtype": "float32",
                    "shape": ["batch", num_heads, "max_sequence", head_dim],
                }
            )
    inputs += [
        {"name": "seqlens_k", "dtype": "int32", "shape": ["batch"]},
        {"name": "total_sequence_length", "dtype": "int32", "shape": []},
    ]
    return inputs, outputs
