"""Pair rows: every MatMulNBits of an in-place GPT-2 graph at block 64 and above sees an even number of rows, so a
row's numbers no longer depend on how many rows share its pass.

Measured (ONNX Runtime 1.32's MLAS, AVX-512 VNNI, int8 compute): at block 64 and 128 MatMulNBits takes rows two at a
time and an odd last row alone, and the two kernels round differently (5e-7 per MatMul, enough to flip a greedy
token a few layers on); which row a row is paired with, and where in the pass, does not matter (52 contexts, bit for
bit). Blocks 16 and 32 are row-independent. So a request decoded alone (one row) and the same request among 7 others
got different tokens, and a fused step disagreed with two passes.

The rewrite pads the residual stream once, after the embeddings, to an even row count: one zero row, on the batch
axis when the pass is one token per row (decoding), on the sequence axis when it is one sequence (a prompt chunk, a
fused step). Attention sees the real rows only (a Slice before each GroupQueryAttention, a Pad after it), the last
position is picked from the real rows, and the LM head's rows are padded the same way. Every real row then goes
through the two-row kernel in every pass: one row decoding alone costs a second row (7 % on two layers and the LM
head, one op at a time), and every step the Pad and Slice nodes (GPT-2 124M int4: 0.5 ms at 16 rows); a whole step
costs 0-9 % more, 0-3 % at 16 rows (`bench/pair_rows.py`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.bundle import PAIR_PREFIX, PAIRED_BLOCK

P = PAIR_PREFIX
GQA = "GroupQueryAttention"


def _attr(node: onnx.NodeProto, name: str, default: int = 0) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def needs_pairs(model: onnx.ModelProto) -> bool:
    """Whether `model` has a MatMulNBits whose kernel pairs rows (block 64 and above, measured) and no pairs yet."""
    nodes = model.graph.node
    if any(n.name.startswith(P) for n in nodes):
        return False
    return any(n.op_type == "MatMulNBits" and _attr(n, "block_size") >= PAIRED_BLOCK for n in nodes)


def _consumers(graph: onnx.GraphProto, name: str) -> list[tuple[onnx.NodeProto, int]]:
    return [(n, i) for n in graph.node for i, x in enumerate(n.input) if x == name]


def _embeddings(graph: onnx.GraphProto) -> str:
    """The residual stream's first tensor: what the first LayerNormalization normalises (token + position
    embeddings)."""
    first = next((n for n in graph.node if n.op_type == "LayerNormalization"), None)
    if first is None:
        raise ValueError("no LayerNormalization: not a GPT-2 graph")
    return first.input[0]


def _last_position(graph: onnx.GraphProto) -> onnx.NodeProto:
    """The Gather on the sequence axis that picks the LM head's positions (the last one in place, the fused step's
    `logit_positions`): the first Gather after the last attention."""
    last = max(i for i, n in enumerate(graph.node) if n.op_type == GQA)
    for node in graph.node[last + 1 :]:
        if node.op_type == "Gather" and _attr(node, "axis") == 1:
            return node
    raise ValueError("no Gather of the last position after the last attention: not an in-place GPT-2 graph")


def _shared(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The pads of the residual stream ([6]: one zero row on the batch axis when S ≤ B, else on the sequence
    axis, none when B·S is even) and the real [B, S], from input_ids' shape, computed once per pass."""
    graph.initializer.extend(
        numpy_helper.from_array(np.array(v, dtype=np.int64), f"{P}/{k}")
        for k, v in (("zero", [0]), ("one", [1]), ("two", [2]), ("zeros2", [0, 0]), ("zeros3", [0, 0, 0]))
    )
    graph.initializer.append(numpy_helper.from_array(np.array([0, 1], dtype=np.int64), f"{P}/axes01"))
    make = helper.make_node
    return [
        make("Shape", ["input_ids"], [f"{P}/BS"], name=f"{P}/BS"),
        make("Slice", [f"{P}/BS", f"{P}/zero", f"{P}/one"], [f"{P}/B"], name=f"{P}/B"),
        make("Slice", [f"{P}/BS", f"{P}/one", f"{P}/two"], [f"{P}/S"], name=f"{P}/S"),
        make("Mul", [f"{P}/B", f"{P}/S"], [f"{P}/M"], name=f"{P}/M"),
        make("Mod", [f"{P}/M", f"{P}/two"], [f"{P}/odd"], name=f"{P}/odd"),
        make("LessOrEqual", [f"{P}/S", f"{P}/B"], [f"{P}/decoding"], name=f"{P}/decoding"),
        make("Cast", [f"{P}/decoding"], [f"{P}/decoding64"], name=f"{P}/decoding64", to=TensorProto.INT64),
        make("Mul", [f"{P}/odd", f"{P}/decoding64"], [f"{P}/padB"], name=f"{P}/padB"),
        make("Sub", [f"{P}/odd", f"{P}/padB"], [f"{P}/padS"], name=f"{P}/padS"),
        make(
            "Concat",
            [f"{P}/zeros3", f"{P}/padB", f"{P}/padS", f"{P}/zero"],
            [f"{P}/pads"],
            name=f"{P}/pads",
            axis=0,
        ),
    ]


def _pad(x: str, out: str, pads: str) -> onnx.NodeProto:
    return helper.make_node("Pad", [x, pads], [out], name=out, mode="constant")


def _real(x: str, out: str) -> onnx.NodeProto:
    """x [B', S', ·] → its real rows [B, S, ·]."""
    return helper.make_node("Slice", [x, f"{P}/zeros2", f"{P}/BS", f"{P}/axes01"], [out], name=out)


def _lm_head(node: onnx.NodeProto, index: int) -> list[onnx.NodeProto]:
    """Pad a 2-D MatMulNBits' rows to an even count and slice its output back (the LM head, after the gather)."""
    x, y = node.input[0], node.output[0]
    p = f"{P}/head{index}"
    node.input[0], node.output[0] = f"{p}/x", f"{p}/y"
    make = helper.make_node
    return [
        make("Shape", [x], [f"{p}/shape"], name=f"{p}/shape"),
        make("Slice", [f"{p}/shape", f"{P}/zero", f"{P}/one"], [f"{p}/rows"], name=f"{p}/rows"),
        make("Mod", [f"{p}/rows", f"{P}/two"], [f"{p}/odd"], name=f"{p}/odd"),
        make("Concat", [f"{P}/zeros2", f"{p}/odd", f"{P}/zero"], [f"{p}/pads"], name=f"{p}/pads", axis=0),
        _pad(x, f"{p}/x", f"{p}/pads"),
        node,
        make("Slice", [f"{p}/y", f"{P}/zero", f"{p}/rows", f"{P}/zero"], [y], name=f"{p}/slice"),
    ]


def pair_rows(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the in-place KV GPT-2 `model` (`kv_inplace.rewrite_kv_inplace`, weights quantised) in which every
    MatMulNBits sees an even number of rows; the same outputs for every real row."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if not any(n.op_type == GQA for n in graph.node):
        raise ValueError("no GroupQueryAttention: pair_rows takes an in-place KV graph")
    embeddings = _embeddings(graph)
    gather = _last_position(graph)
    embed_users = _consumers(graph, embeddings)
    # the MatMulNBits downstream of the gather (2-D, outside the padded stream), by output name: a protobuf
    # message's Python object is made afresh on each access, so id() does not name a node
    head = set()
    frontier = [gather.output[0]]
    while frontier:
        for node, _ in _consumers(graph, frontier.pop()):
            if node.op_type == "MatMulNBits":
                head.add(node.output[0])
            else:
                frontier.extend(node.output)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == GQA:
            node.input[0], real = f"{node.name}/real", node.input[0]
            attention = node.output[0]
            nodes += [
                _real(real, f"{node.name}/real"),
                node,
                _pad(attention, f"{node.name}/padded", f"{P}/pads"),
            ]
            for user, i in _consumers(graph, attention):
                user.input[i] = f"{node.name}/padded"
            continue
        if node.output[0] == gather.output[0]:
            nodes.append(_real(node.input[0], f"{P}/last/real"))
            node.input[0] = f"{P}/last/real"
        if node.output[0] in head:
            nodes += _lm_head(node, len(nodes))
            continue
        nodes.append(node)
        if embeddings in node.output:
            nodes += _shared(graph) + [_pad(embeddings, f"{P}/embeddings", f"{P}/pads")]
            for user, i in embed_users:
                user.input[i] = f"{P}/embeddings"
    if not any(n.output[0] == f"{P}/embeddings" for n in nodes):
        raise ValueError("the embeddings' Add was not found before the first LayerNormalization")
    del graph.node[:]
    graph.node.extend(nodes)
    return model
