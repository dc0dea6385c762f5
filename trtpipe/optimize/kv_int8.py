"""An in-place KV GPT-2 graph → the same graph with an int8 KV cache (`<precision>.kv8-inplace`).

At 16 decoding rows, attention over the fp32 cache is a third of a quantised GPT-2 step on the CPU: it reads every
cached K and V once per step, and the bytes are what it costs. ONNX Runtime's GroupQueryAttention can keep the cache
in int8 with a fixed scale per channel (`k_quant_type` / `v_quant_type` PER_CHANNEL, `kv_cache_bit_width` 8, the
`k_scale` / `v_scale` inputs): it quantises each new K/V row as it writes it and dequantises as it reads, so the
cache is a quarter of the bytes (openvino-genai's CPU default is a u8 cache, too). The scales are calibrated: the
largest |K| and |V| per layer, head and channel over calibration text, run through the float graph, ÷ 127, with
headroom (`HEADROOM`) for values beyond what calibration met (they saturate). They are initializers of the graph,
so the runtime only binds int8 buffers. Lossy: `optimize --precision kv8` gates each twin on next-token agreement
with its float source (`kv8_twin.py`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime.kv import kv8_scale_name

GQA = "GroupQueryAttention"
HEADROOM = 1.25  # scale = HEADROOM × calibrated max |x| / 127
K_SCALE, V_SCALE = 12, 13  # GroupQueryAttention's k_scale / v_scale input slots


def scales_from_absmax(absmax: np.ndarray) -> np.ndarray:
    """Per-channel scales [1, H, 1, D] from the calibrated max |x| [H, D]: never zero (an unused channel)."""
    scale = np.maximum(absmax.astype(np.float32), 1e-6) * HEADROOM / 127.0
    return scale[None, :, None, :].astype(np.float32)


def rewrite_kv_int8(model: onnx.ModelProto, scales: list[tuple[np.ndarray, np.ndarray]]) -> onnx.ModelProto:
    """A copy of the in-place `model` whose GroupQueryAttention nodes keep their cache in int8 with per-channel
    `scales` (one (k [1,H,1,D], v [1,H,1,D]) pair per layer, in node order)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    attention = [n for n in graph.node if n.op_type == GQA]
    if len(attention) != len(scales):
        raise ValueError(f"expected {len(scales)} GroupQueryAttention nodes, found {len(attention)}")
    if any(a.name == "kv_cache_bit_width" for n in attention for a in n.attribute):
        raise ValueError("the graph's KV cache is quantised already")
    for layer, (node, (k, v)) in enumerate(zip(attention, scales)):
        names = (kv8_scale_name(layer, "k"), kv8_scale_name(layer, "v"))
        graph.initializer.extend(numpy_helper.from_array(s, n) for s, n in zip((k, v), names))
        inputs = list(node.input) + [""] * (V_SCALE + 1 - len(node.input))
        inputs[K_SCALE], inputs[V_SCALE] = names
        del node.input[:]
        node.input.extend(inputs)
        node.attribute.extend(
            [
                helper.make_attribute("k_quant_type", "PER_CHANNEL"),
                helper.make_attribute("v_quant_type", "PER_CHANNEL"),
                helper.make_attribute("kv_cache_bit_width", 8),
            ]
        )
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_key_values.", "present.")):
            value.type.tensor_type.elem_type = TensorProto.INT8
    return model
