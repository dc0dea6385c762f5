"""bench/batch_scaling.py's measurements: the kernel stack each variant quantises, the decode-step profile by rows,
and the per-op split of one in-place step."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from trtpipe.benchmark.batch_scaling import (
    LAYER_SHAPES,
    kernel_models,
    layer_stack,
    op_split,
    scaling,
    step_profile,
    time_kernels,
)
from trtpipe.runtime import BatchEngine, Bundle


def test_the_layer_stack_holds_gpt2_layers_and_each_variant_uses_its_own_kernel():
    base = layer_stack(layers=1)
    params = sum(int(np.prod(i.dims)) for i in base.graph.initializer)
    assert (
        params == sum(k * n for k, n in LAYER_SHAPES) == 7_077_888
    )  # one GPT-2 124M layer's weight matrices
    with_head = layer_stack(layers=1, head=64)
    assert sum(int(np.prod(i.dims)) for i in with_head.graph.initializer) == params + 768 * 64
    models = kernel_models(layers=1)
    ops = {name: Counter(n.op_type for n in m.graph.node) for name, m in models.items()}
    assert ops["fp32"]["MatMul"] == 4
    assert (
        ops["int8"]["DynamicQuantizeMatMul"] + ops["int8"]["MatMulInteger"] >= 4 and not ops["int8"]["MatMul"]
    )
    weights = {
        name: {i.data_type for i in m.graph.initializer if i.name.endswith("_quantized")}
        for name, m in models.items()
        if name.startswith("int8 ") or name == "int8"
    }
    assert weights == {"int8": {onnx.TensorProto.UINT8}, "int8 s8": {onnx.TensorProto.INT8}}
    for name, bits in (("int8-wo", 8), ("int4", 4)):
        nbits = [n for n in models[name].graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == 4
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nbits[0].attribute}
        assert attrs["bits"] == bits and attrs["accuracy_level"] == 4 and attrs["block_size"] == 32
    times = time_kernels(
        {"fp32": models["fp32"], "int4": models["int4"]}, (1, 16), threads=1, rounds=1, iters=2
    )
    assert set(times) == {"fp32", "int4"} and all(
        set(t) == {1, 16} and min(t.values()) > 0 for t in times.values()
    )
    assert scaling(8.0, 2.0) == 4.0


def test_the_step_profile_and_op_split_measure_an_in_place_step(make_bundle):
    path = make_bundle("tiny-gpt2", "generate")
    engine = BatchEngine(path, slots=4, threads=1)
    try:
        profile = step_profile(engine, (1, 2, 4), context=12, chunk=8, repeat=2)
    finally:
        engine.close()
    assert set(profile["decode_ms"]) == {1, 2, 4} and min(profile["decode_ms"].values()) > 0
    assert profile["prefill_ms"] > 0 and profile["chunk"] == 8
    split = op_split(Bundle.load(path).model_path("kv-inplace"), rows=4, threads=1, context=12, runs=2)
    assert "GroupQueryAttention" in split["ops"]
    assert split["kinds"]["attention"] > 0 and split["kinds"]["weight MatMuls"] > 0
    assert abs(sum(split["kinds"].values()) - sum(split["ops"].values())) < 1e-6


def test_the_demo_int4_gate_is_the_one_optimize_writes_with_its_ladder(make_bundle, copy_bundle):
    """A forced int4 (first rung only) is rebuilt the way `optimize --precision int4` writes it, and the gate
    names the rung it landed on; a current unforced one is read, not rebuilt."""
    import sys
    from pathlib import Path

    from trtpipe.optimize.variants import optimize_bundle

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import batch_scaling as script

    path = copy_bundle(make_bundle("tiny-gpt2", "generate"))
    optimize_bundle(path, "int4", force=True)
    assert Bundle.load(path).variants["int4"]["gate"].get("forced")
    gate = script.int4_as_optimize_writes(path)
    bundle = Bundle.load(path)
    entry = bundle.manifest.get("refused", {}).get("int4") or bundle.variants["int4"]
    assert not entry["gate"].get("forced")
    assert len(entry["report"]["plans_tried"]) >= 1
    last = entry["report"]["plans_tried"][-1]
    assert (
        gate["settings"]
        == f"block {last['block_size']}, LM head {'quantised' if last['lm_head'] else 'fp32'}"
    )
    assert gate["metrics"]["next_token_top1"] == entry["gate"]["metrics"]["next_token_top1"]
    before = (path / "manifest.json").read_text()
    assert script.int4_as_optimize_writes(path)["settings"] == gate["settings"]
    assert (path / "manifest.json").read_text() == before  # current (or refused): not rebuilt
