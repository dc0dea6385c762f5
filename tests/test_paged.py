"""BatchEngine on OpenVINO's PagedAttention model (`runtime/paged.py`, `BatchEngine(..., backend="ov", paged=True)`):
built from the bundle's interop graph, each request gets what it gets alone, the logits are the interop graph's,
packing moves block tables only, and paged=True elsewhere is refused."""

from __future__ import annotations

import numpy as np
import pytest
from test_batching import _alone, _mix

from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import BatchEngine, Bundle, Generator, UserError, kv
from trtpipe.runtime.paged import PagedCache, PagedDecoder

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


@pytest.fixture(scope="module")
def kv8_gpt2(gpt2, tmp_path_factory):
    """A copy with `optimize --precision kv8` run (forced: tiny random weights): its twins, and OpenVINO's u8 paged
    cache gated on the same weights."""
    import shutil

    path = tmp_path_factory.mktemp("paged-kv8") / gpt2.name
    shutil.copytree(gpt2, path)
    optimize_bundle(path, "kv8", force=True)
    return path


def _run_mix(path, mix, slots: int, variant=None, kv_cache="fp32"):
    engine = BatchEngine(
        path, variant=variant, slots=slots, chunk=16, backend="ov", paged=True, kv_cache=kv_cache
    )
    requests = []
    for index, item in enumerate(mix):  # arrivals spread over the run
        requests.append(engine.submit(item["prompt"], item["max_new_tokens"], item["sampling"], item["stop"]))
        if index >= 3:
            engine.step()
    engine.run()
    return engine, [r.result() for r in requests]


def test_a_mix_gets_what_each_request_gets_alone(gpt2):
    generator = Generator(gpt2, backend="ov")
    mix = _mix(generator, count=8)
    engine, results = _run_mix(gpt2, mix, slots=4)
    for item, got in zip(mix, results):
        want = _alone(generator, item)  # the interop graph on OpenVINO, one request at a time
        assert got.ids == want.ids and got.finish == want.finish, item
    assert engine.stats["moves"] > 0  # rows were packed: block tables swapped, and each still got its own
    assert engine.stats["prefill_tokens"] == sum(len(item["prompt"]) for item in mix)
    assert isinstance(engine.runner, PagedDecoder) and engine.generator.runner.session.compiled is None


@pytest.mark.parametrize("precision", ["int4", "int8"])  # MatMulNBits, and dynamic int8 (its LM head too)
def test_a_quantized_variant_batches_as_it_runs_alone(gpt2, copy_bundle, precision):
    path = copy_bundle(gpt2)
    optimize_bundle(path, precision, force=True)
    mix = _mix(Generator(path, variant=precision, backend="ov"), count=6)
    _, batched = _run_mix(path, mix, slots=3, variant=precision)
    for item, got in zip(mix, batched):
        _, (alone,) = _run_mix(path, [item], slots=1, variant=precision)
        assert got.ids == alone.ids, item


def test_its_logits_are_the_interop_graphs(gpt2):
    bundle = Bundle.load(gpt2)
    decoder = PagedDecoder(bundle, None, threads=2)
    cache = decoder.new_cache(slots=2, capacity=64)
    ids = [5 + i % 40 for i in range(21)]
    got = np.empty((1, decoder.vocab), np.float32)
    decoder.prefill_row(ids[:13], cache, 1, 0, got)  # a first chunk, then the rest after it
    decoder.prefill_row(ids[13:], cache, 1, 13, got)
    session = Generator(gpt2, backend="ov").runner.session
    feeds = kv.chunk(ids, 0)
    feeds.update(
        kv.empty_past(bundle.model["num_layers"], bundle.model["num_heads"], bundle.model["head_dim"])
    )
    want = session.run(feeds)["logits"][0, -1]
    assert np.abs(got[0] - want).max() < 1e-3 and got[0].argmax() == want.argmax()
    step, _ = decoder.decode(np.array([7, int(want.argmax())]), np.array([0, 21]), cache)
    assert step.shape == (2, decoder.vocab) and np.isfinite(step).all()


def _alone_and_beside(decoder, seed: int = 0):
    """Row 0's next-token logits decoded alone, beside rows of other lengths, and beside a prompt piece."""
    rng = np.random.default_rng(seed)
    lengths = (100, 9, 70, 33)
    cache = decoder.new_cache(slots=len(lengths) + 1, capacity=128)
    for row, n in enumerate(lengths):
        decoder.prefill_rows(
            [([int(t) for t in rng.integers(0, decoder.vocab, n)], row, 0)],
            cache,
            np.empty((1, decoder.vocab), np.float32),
        )
    alone = decoder.decode(np.array([3]), np.array([100]), cache)[0][0]
    beside, _ = decoder.decode(np.array([3, 4, 5, 6]), np.array(lengths), cache)
    mixed = np.empty((2, decoder.vocab), np.float32)
    decoder.prefill_rows([([3], 0, 100), ([7] * 20, len(lengths), 0)], cache, mixed)
    return alone, beside[0], mixed[0]


def test_a_row_decoded_alone_is_bit_for_bit_the_row_decoded_beside_others(gpt2):
    """With fewer sequences than threads OpenVINO's PagedAttention splits a sequence's positions across threads;
    the empty sequences `_run` adds keep one path, so alone, beside rows of other lengths, and beside a prompt
    piece are the same numbers."""
    decoder = PagedDecoder(Bundle.load(gpt2), None, threads=2)
    alone, beside, mixed = _alone_and_beside(decoder)
    assert np.array_equal(alone, beside) and np.array_equal(alone, mixed)


def test_kv8_gates_openvinos_u8_cache_and_the_engine_runs_on_it(kv8_gpt2):
    """`optimize --precision kv8` records the u8 cache's gate on the kv8 twin; BatchEngine(kv_cache="int8") then runs
    OpenVINO's u8 cache (D + 8 bytes a token's row against 4·D) and each request gets what it gets alone."""
    record = Bundle.load(kv8_gpt2).variants["kv8-inplace"]["paged_u8"]
    assert set(record["metrics"]) == {"next_token_top1", "next_token_top1_long"}
    assert all(0.5 < v <= 1.0 for v in record["metrics"].values()) and record["samples"] > 0
    assert record["verdict"] == ("pass" if not record["failures"] else "fail")
    mix = _mix(Generator(kv8_gpt2, backend="ov"), count=6)
    engine, batched = _run_mix(kv8_gpt2, mix, slots=3, kv_cache="int8")
    f32 = BatchEngine(kv8_gpt2, slots=3, backend="ov", paged=True)
    assert engine.runner.compiled.input("key_cache.0").get_element_type().get_type_name() == "u8"
    d = Bundle.load(kv8_gpt2).model["head_dim"]  # each token's row: D bytes and an f32 scale and zero point
    assert engine.cache.nbytes * 4 * d == f32.cache.nbytes * (d + 8)  # 0.28 of f32's on GPT-2 124M
    for item, got in zip(mix, batched):
        _, (alone,) = _run_mix(kv8_gpt2, [item], slots=1, kv_cache="int8")
        assert got.ids == alone.ids, item


def test_the_gate_compares_the_same_positions(gpt2):
    """Teacher-forced along each row: one argmax per next token, and a decoder against itself agrees fully."""
    from trtpipe.optimize.paged_u8 import _agreement, _tops

    decoder = PagedDecoder(Bundle.load(gpt2), None, threads=2)
    rows = [[5 + i % 30 for i in range(n)] for n in (12, 3, 40)]
    assert [len(t) for t in _tops(decoder, rows)] == [11, 2, 39]
    assert [len(t) for t in _tops(decoder, rows[:1] + rows[2:], prefix=8)] == [4, 32]
    assert _agreement([decoder, decoder], rows) == 1.0


def test_an_ungated_or_failed_u8_cache_is_refused(gpt2, kv8_gpt2, copy_bundle):
    with pytest.raises(UserError, match=r"no gate for it on fp32; run `trtpipe optimize .* --precision kv8`"):
        BatchEngine(gpt2, backend="ov", paged=True, kv_cache="int8")
    import json

    path = copy_bundle(kv8_gpt2)
    manifest = json.loads((path / "manifest.json").read_text())
    record = manifest["variants"]["kv8-inplace"]["paged_u8"]
    record.update(verdict="fail", forced=False, failures=["next_token_top1 = 0.5 (needs >= 0.97)"])
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"u8 cache failed the LM gate on fp32 \(next_token_top1 = 0.5"):
        BatchEngine(path, backend="ov", paged=True, kv_cache="int8")


def test_packing_swaps_block_tables_and_copies_nothing():
    cache = PagedCache(slots=3, per_slot=4, block=32, nbytes=0)
    first, last = cache.tables[0].copy(), cache.tables[2].copy()
    cache.swap_rows(0, 2, 40, 0)
    assert (cache.tables[0] == last).all() and (cache.tables[2] == first).all()
    assert len(cache.blocks(0, 1)) == 1 and len(cache.blocks(0, 33)) == 2 and len(cache.blocks(0, 128)) == 4


def test_paged_runs_on_openvino_only(gpt2):
    with pytest.raises(UserError, match="backend='ov'"):
        BatchEngine(gpt2, paged=True)


def test_a_graph_it_cannot_rebuild_is_one_line(gpt2, monkeypatch):
    import trtpipe.runtime.paged as paged

    def broken(path, ov):
        raise RuntimeError("No ScaledDotProductAttention operation observed in the graph\nmore detail")

    monkeypatch.setattr(paged, "paged_model", broken)
    with pytest.raises(
        UserError, match=r"could not build OpenVINO's paged model of fp32 \(No Scaled.*paged=False$"
    ):
        BatchEngine(gpt2, backend="ov", paged=True)


def test_the_benchmark_row_times_one_request_on_the_paged_engine(gpt2):
    """`benchmark.decode.PagedRow` (openvino_peers' paged rows): a first token, then one step per token, the ids the
    engine gives that prompt."""
    from trtpipe.benchmark.decode import PagedRow

    row = PagedRow(Bundle.load(gpt2), None, threads=2)
    prompt = [5 + i % 40 for i in range(20)]
    timed = row.run(prompt, 6)
    assert timed.ttft > 0 and len(timed.steps) == 5 and all(s > 0 for s in timed.steps)
    (want,) = BatchEngine(gpt2, slots=1, backend="ov", paged=True).generate([prompt], 6, ignore_eos=True)
    assert timed.ids == want.ids and "paged engine" in row.label


def test_kv8_stands_where_the_paged_model_cannot_be_built(gpt2, copy_bundle, monkeypatch):
    """A weight variant OpenVINO cannot build a paged model of: its kv8 twin is written, with no u8 gate recorded
    (so the runtime refuses the u8 cache on it in one line)."""
    import trtpipe.optimize.kv8_twin as kv8_twin

    def unbuildable(*args, **kwargs):
        raise UserError(
            "paged=True could not build OpenVINO's paged model of fp32 (no attention); use paged=False"
        )

    monkeypatch.setattr(kv8_twin, "paged_u8_gate", unbuildable)
    path = copy_bundle(gpt2)
    optimize_bundle(path, "kv8", force=True)
    entry = Bundle.load(path).variants["kv8-inplace"]
    assert (path / entry["file"]).exists() and "paged_u8" not in entry
    with pytest.raises(UserError, match="no gate for it on fp32"):
        BatchEngine(path, backend="ov", paged=True, kv_cache="int8")
