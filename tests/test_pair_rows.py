"""Pair rows (`optimize/pair_rows.py`): at block 64 and above every MatMulNBits of the in-place graph sees an even
row count, the numbers stay those of the unpaired graph, a row gets the same numbers alone and among others, and
BatchEngine (fused step included) gives every request what it gets alone."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import tiny_gpt2_variant
from test_batching import _alone, _mix

from trtpipe.optimize.pair_rows import P, needs_pairs, pair_rows
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.optimize.weight_only import quantize_weight_only
from trtpipe.runtime import BatchEngine, Bundle, Generator
from trtpipe.runtime.paths import sha256_file


@pytest.fixture(scope="module")
def wide_gpt2(tmp_path_factory):
    """A seeded GPT-2 128 wide (MatMulNBits blocks of 64 and 128 need rows that long), int4 at block 128 and its
    fused twins."""
    path = tiny_gpt2_variant(tmp_path_factory.mktemp("wide-gpt2"), n_embd=128)
    optimize_bundle(path, "int4", force=True, block_size=128)
    optimize_bundle(path, "kv-fused")
    return path


def _quantized(bundle: Bundle, block: int) -> onnx.ModelProto:
    source = onnx.load(str(bundle.model_path("kv-inplace")))
    return quantize_weight_only(source, 4, block, lm_head=True, accuracy_level=4)[0]


def _feeds(bundle: Bundle, batch: int, length: int, past: int, seed: int = 0) -> dict:
    """In-place feeds: `batch` rows of `length` new tokens after `past` cached ones (random cache values)."""
    dims, rng = bundle.model, np.random.default_rng(seed)
    shape = (batch, dims["num_heads"], 64, dims["head_dim"])
    feeds = {
        "input_ids": rng.integers(0, 2048, (batch, length)).astype(np.int64),
        "position_ids": np.tile(np.arange(past, past + length, dtype=np.int64), (batch, 1)),
        "seqlens_k": np.full(batch, past + length - 1, dtype=np.int32),
        "total_sequence_length": np.array(past + length, dtype=np.int32),
    }
    for layer in range(dims["num_layers"]):
        for kind in ("key", "value"):
            feeds[f"past_key_values.{layer}.{kind}"] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def test_pairs_go_where_the_kernel_takes_rows_in_pairs(wide_gpt2):
    bundle = Bundle.load(wide_gpt2)
    assert not needs_pairs(_quantized(bundle, 32))  # blocks 16 and 32 are row-independent
    paired = pair_rows(_quantized(bundle, 128))
    assert not needs_pairs(paired)  # once
    written = onnx.load(str(bundle.model_path("int4.kv-inplace")), load_external_data=False)
    assert any(n.name.startswith("/pair_rows") for n in written.graph.node)
    with pytest.raises(ValueError, match="GroupQueryAttention"):
        pair_rows(onnx.load(str(bundle.model_path("int4"))))  # the standard graph is not in place


@pytest.mark.parametrize(("batch", "length"), [(1, 1), (3, 1), (4, 1), (1, 7), (1, 8)])
def test_the_paired_graph_computes_what_the_graph_did(wide_gpt2, batch, length):
    """fp32 (no kernel that pairs rows): the rewrite alone changes no number."""
    bundle = Bundle.load(wide_gpt2)
    model = onnx.load(str(bundle.model_path("kv-inplace")))
    plain, paired = _session(model), _session(pair_rows(model))
    feeds = _feeds(bundle, batch, length, past=9)
    names = [o.name for o in plain.get_outputs()]
    assert paired.run(None, feeds)[0].shape == (batch, 1, 2048)
    for name, want, got in zip(names, plain.run(None, feeds), paired.run(None, feeds)):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_an_odd_pass_gets_the_numbers_of_an_even_one(wide_gpt2):
    """int4 at block 128: 3 decoding rows paired give what the unpaired graph gives them beside a 4th row (the
    LM head included), 7 prompt tokens what it gives them before an 8th (the K/V they write in every layer)."""
    bundle = Bundle.load(wide_gpt2)
    model = _quantized(bundle, 128)
    plain, paired = _session(model), _session(pair_rows(model))
    four = _feeds(bundle, 4, 1, past=9)
    three = {k: v[:3] if v.ndim else v for k, v in four.items()}
    np.testing.assert_array_equal(paired.run(["logits"], three)[0], plain.run(["logits"], four)[0][:3])
    eight = _feeds(bundle, 1, 8, past=9)
    seven = {**eight, "input_ids": eight["input_ids"][:, :7], "position_ids": eight["position_ids"][:, :7]}
    seven |= {"seqlens_k": eight["seqlens_k"] - 1, "total_sequence_length": np.array(16, dtype=np.int32)}
    names = [o.name for o in plain.get_outputs()]
    for name, want, got in zip(names[1:], plain.run(None, eight)[1:], paired.run(None, seven)[1:]):
        np.testing.assert_array_equal(got[:, :, 9:16], want[:, :, 9:16], err_msg=name)


def test_a_row_gets_the_same_numbers_alone_and_among_others(wide_gpt2):
    bundle = Bundle.load(wide_gpt2)
    paired = _session(pair_rows(_quantized(bundle, 128)))
    many = _feeds(bundle, 5, 1, past=9, seed=1)
    logits = paired.run(["logits"], many)[0]
    for row in range(5):
        alone = {
            k: v[row : row + 1] if v.ndim and k != "total_sequence_length" else v for k, v in many.items()
        }
        np.testing.assert_array_equal(paired.run(["logits"], alone)[0][0], logits[row])


def test_batching_at_block_128_gets_what_each_request_gets_alone(wide_gpt2):
    generator = Generator(wide_gpt2, variant="int4")
    mix = _mix(generator)
    expected = [_alone(generator, item) for item in mix]
    engine = BatchEngine(wide_gpt2, variant="int4", slots=4, chunk=16)
    assert engine.fused is not None  # the fused twin passed its check at block 128
    requests = [engine.submit(i["prompt"], i["max_new_tokens"], i["sampling"], i["stop"]) for i in mix]
    engine.run()
    for item, want, request in zip(mix, expected, requests):
        assert request.result().ids == want.ids, item
    assert engine.stats["fused_steps"] > 0


def test_int8_wo_at_its_default_block_batches_exactly(wide_gpt2):
    """int8-wo's default block (256, at most the narrowest weight: 128 here) is one the kernel pairs rows at: its
    in-place twin is paired, and BatchEngine still gives each request what it gets alone."""
    entry = optimize_bundle(wide_gpt2, "int8-wo", force=True)
    assert entry["report"]["block_size"] == 128
    bundle = Bundle.load(wide_gpt2)
    twin = onnx.load(str(bundle.model_path("int8-wo.kv-inplace")))
    assert any(n.name.startswith(P) for n in twin.graph.node) and not needs_pairs(twin)
    generator = Generator(wide_gpt2, variant="int8-wo")
    mix = _mix(generator)
    expected = [_alone(generator, item) for item in mix]
    engine = BatchEngine(wide_gpt2, variant="int8-wo", slots=4, chunk=16)
    requests = [engine.submit(i["prompt"], i["max_new_tokens"], i["sampling"], i["stop"]) for i in mix]
    engine.run()
    for item, want, request in zip(mix, expected, requests):
        assert request.result().ids == want.ids, item


def test_an_in_place_twin_built_before_pairs_is_named_with_its_fix(wide_gpt2, tmp_path, recwarn):
    import json
    import shutil

    from trtpipe.runtime import UnpairedRows

    assert Bundle.load(wide_gpt2).unpaired("int4") is None  # paired when optimize made it
    assert Bundle.load(wide_gpt2).unpaired("fp32") is None  # no MatMulNBits, nothing to pair
    BatchEngine(wide_gpt2, variant="int4", slots=2)
    assert not [w for w in recwarn if issubclass(w.category, UnpairedRows)]

    def without_the_key(name: str, graph: onnx.ModelProto | None = None):
        """A copy whose manifest does not say its twin is paired (what bundles recorded before the key), with
        `graph` as its twin where given."""
        copy = shutil.copytree(wide_gpt2, tmp_path / name, copy_function=os.link)
        manifest = json.loads((copy / "manifest.json").read_text())
        twin = manifest["variants"]["int4.kv-inplace"]
        del twin["paired_rows"]
        if graph is not None:
            target = copy / twin["file"]
            target.unlink()  # a hard link: write a file of its own
            onnx.save(graph, str(target))
            twin["sha256"] = {twin["file"]: sha256_file(target)}
        (copy / "manifest.json").unlink()
        (copy / "manifest.json").write_text(json.dumps(manifest))
        return copy

    # made after pairs landed but before the manifest said so: its graph is paired, so nothing to warn about
    recorded_late = without_the_key("late")
    assert Bundle.load(recorded_late).unpaired("int4") is None
    BatchEngine(recorded_late, variant="int4", slots=2)
    assert not [w for w in recwarn if issubclass(w.category, UnpairedRows)]
    # made before pairs: an unpaired graph at block 128
    old = without_the_key("old", _quantized(Bundle.load(wide_gpt2), 128))
    reason = Bundle.load(old).unpaired("int4")
    assert "block 128" in reason and "--precision int4 --block-size 128 --overwrite" in reason
    with pytest.warns(UnpairedRows, match="before rows were paired"):
        BatchEngine(old, variant="int4", slots=2)
