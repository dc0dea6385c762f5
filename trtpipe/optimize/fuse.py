"""ORT transformer fusion (onnxruntime.transformers' optimizer), with the model type and the fusions to expect
taken from the family's spec (bert for the encoders, gpt2 for GPT-2); where the optimizer has no pattern for a
family (MPNet, DeBERTa, ModernBERT attention) the spec says so and the report and a warning name it.

Fusion packs Q, K and V of each layer into one weight per Attention node, so ALBERT's twelve layers — which share
one set of weights — would each get their own copy (Optimum's O2 grows albert-base from 42 to 116 MiB). The graph
is deduplicated afterwards: identical packed weights are stored once again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from ..console import warn
from ..export import graph
from ..models import ModelSpec

FUSED_OPS = (
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "GemmFastGelu",
)


def fuse(
    source: Path, spec: ModelSpec, num_heads: int, hidden_size: int, layers: int
) -> tuple[onnx.ModelProto, dict]:
    """Return (fused model, report) where report has fused-op counts, missing fusions and bytes deduplicated."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    model_type = spec.fusion_type
    options = FusionOptions(model_type)
    # GPT-2's attention core (past/present concat) is left as is; the in-place KV variant replaces it.
    options.enable_attention = spec.fuse_attention
    optimized = optimizer.optimize_model(
        str(source),
        model_type=model_type,
        num_heads=num_heads,
        hidden_size=hidden_size,
        opt_level=0,
        optimization_options=options,
        only_onnxruntime=False,
    )
    model = optimized.model
    counts = {op: 0 for op in FUSED_OPS}
    for node in model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    missing = []
    for ops, want in spec.fusions_for(layers).items():
        have = sum(counts.get(op, 0) for op in ops.split("|"))
        if have < want:
            missing.append(f"{ops}: {have} of {want}")
            warn(f"fusion: expected {want} {ops.replace('|', ' or ')} node(s), found {have}")
    if spec.fusion_gap:
        warn(
            f"fusion ({spec.display}): ONNX Runtime's optimizer has {spec.fusion_gap}; that part stays unfused"
        )
    saved = graph.dedupe_initializers(model)
    shared = graph.share_packed_weights(model)
    return model, {
        "fused_ops": {k: v for k, v in counts.items() if v},
        "missing": missing,
        "unfusable": spec.fusion_gap or None,
        "dedup_bytes_saved": saved,
        "packed_slices_shared_bytes": shared,
    }
