"""Weight-only int4 / int8 (ORT MatMulNBits) for GPT-2 decoding, where reading the weights is the cost per token.

ORT's quantizer handles MatMul only. Our GPT-2 export already writes Conv1D layers as MatMul + Add; the tied LM
head is Gemm(transB=1) on the embedding matrix (stored once). With `lm_head=True` it is rewritten as a MatMul on
its own transposed copy first, so it is quantised too — the fp32 embedding stays for the token lookup.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..export import graph

# the block each precision starts from when --block-size is not given (`default_block`). ONNX Runtime's int8-compute
# kernel converts and scales one int32 sum per block, so wider blocks cost less: on GPT-2 124M a decode step took
# 0.84-0.89x (int4, 128 vs 32) and 0.77-0.85x (int8-wo, 256 vs 32) the time at 1-16 rows, the pair of rows blocks of
# 64 and more need included, and a prefill 0.75-0.80x (bench/block_sizes.py). The gate's ladder halves it where needed.
DEFAULT_BLOCK = {"int4": 128, "int8-wo": 256}
SMALLEST_BLOCK = 16


def default_block(model: onnx.ModelProto, precision: str) -> int:
    """The block `precision` starts from on `model`: DEFAULT_BLOCK, at most the smallest input width (K) of a weight
    MatMul (a block wider than K pads every column with zeros: a tiny model would grow, not shrink), as a power of
    two, at least SMALLEST_BLOCK."""
    inits = {i.name: i.dims for i in model.graph.initializer}
    widths = [
        inits[n.input[1]][1 if _transposed(n) else 0]
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and len(inits.get(n.input[1], ())) == 2
    ]
    block = DEFAULT_BLOCK[precision]
    while widths and block > min(widths) and block > SMALLEST_BLOCK:
        block //= 2
    return block


def _transposed(node: onnx.NodeProto) -> bool:
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)


def untie_lm_head(model: onnx.ModelProto) -> str | None:
    """Gemm(X, W, transB=1) with a large constant W → MatMul(X, Wᵀ). Returns the node name, or None."""
    inits = {i.name: i for i in model.graph.initializer}
    for index, node in enumerate(model.graph.node):
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) or len(node.input) > 2:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        transposed = numpy_helper.from_array(np.ascontiguousarray(weight.T), f"{node.input[1]}.lm_head_T")
        model.graph.initializer.append(transposed)
        name = node.name or f"lm_head/{node.input[1]}"
        matmul = helper.make_node("MatMul", [node.input[0], transposed.name], list(node.output), name=name)
        model.graph.node.remove(node)
        model.graph.node.insert(index, matmul)
        return name
    return None


def quantize_weight_only(
    model: onnx.ModelProto,
    bits: int,
    block_size: int = 32,
    lm_head: bool = True,
    accuracy_level: int = 4,
    symmetric: bool = True,
) -> tuple[onnx.ModelProto, dict]:
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    model = onnx.ModelProto.FromString(model.SerializeToString())
    head = untie_lm_head(model) if lm_head else None
    config = DefaultWeightOnlyQuantConfig(
        block_size=block_size, is_symmetric=symmetric, accuracy_level=accuracy_level, bits=bits
    )
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block_size,
        is_symmetric=symmetric,
        accuracy_level=accuracy_level,
        algo_config=config,
    )
    from .int8 import quiet_quantizer

    with quiet_quantizer():
        quantizer.process()
    quantized = quantizer.model.model
    graph.tie_transposed_weights(quantized)
    graph.dedupe_initializers(quantized)
    _remove_unused_initializers(quantized)
    nbits = sum(1 for n in quantized.graph.node if n.op_type == "MatMulNBits")
    left = sum(
        1
        for n in quantized.graph.node
        if n.op_type in ("MatMul", "Gemm") and n.input[1] in {i.name for i in quantized.graph.initializer}
    )
    return quantized, {
        "bits": bits,
        "block_size": block_size,
        "accuracy_level": accuracy_level,
        "symmetric": symmetric,
        "lm_head": bool(head),
        "matmulnbits_nodes": nbits,
        "fp32_weight_matmuls_left": left,
    }


def _remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {i for node in model.graph.node for i in node.input}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
