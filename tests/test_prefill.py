"""`prefill_backend="ov"`: prompts on OpenVINO, decoding on ONNX Runtime's in-place cache. The K/V it writes is the
cache ONNX Runtime writes itself, greedy generation is token-exact at fp32, in-flight batching gives each request
what it gets alone, ONNX Runtime's threads stop spinning beside it in BatchEngine, OpenVINO quantizes a weight-only
variant's activations per weight block (as ONNX Runtime does), and misuse is one line."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import spin_entries
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import BatchEngine, Bundle, Generator, Sampling, UserError

pytest.importorskip("openvino")

PROMPTS = ["The list of", "def main", "Hello there, how are you today my"]


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


def test_openvino_writes_the_cache_onnx_runtime_writes(gpt2):
    """Chunk by chunk into row 1 of a two-row cache: the same K/V and last-token logits as ONNX Runtime's own
    prefill, only the row's own columns written."""
    ort = Generator(gpt2)
    split = Generator(gpt2, prefill_backend="ov")
    assert split.runner.prefiller is not None and ort.runner.prefiller is None
    ids = ort.encoder.encode_prompt(PROMPTS[2])
    assert len(ids) > 6
    caches, logits = [], []
    for generator in (ort, split):
        cache = generator.runner.new_cache(2, 24)
        out = np.zeros((2, 1, generator.runner.vocab), np.float32)
        generator.runner.prefill_row(ids[:5], cache, 1, 0, out[0])
        generator.runner.prefill_row(ids[5:], cache, 1, 5, out[1])
        caches.append(cache)
        logits.append(out)
    np.testing.assert_allclose(logits[1], logits[0], atol=1e-4)
    n = len(ids)
    for index, _, _ in caches[0].names():
        want, got = (c.view(0, index, 0) for c in caches)
        np.testing.assert_allclose(got[1, :, :n], want[1, :, :n], atol=1e-4)
        assert (
            not got[0].any() and not got[1, :, n:].any()
        )  # row 0 and the columns after the prompt untouched


def test_greedy_generation_is_token_exact_against_onnx_runtime_alone(gpt2):
    ort = Generator(gpt2)
    split = Generator(gpt2, prefill_backend="ov")
    assert split.prefill_backend == "ov"
    for prompt in PROMPTS:
        want = ort.generate([prompt], 24)[0]
        got = split.generate([prompt], 24)[0]
        assert got.ids == want.ids, prompt
    # a left-padded batch of prompts (in place: each row prefilled alone)
    assert [c.ids for c in split.generate(PROMPTS, 12)] == [c.ids for c in ort.generate(PROMPTS, 12)]
    # a single Generator keeps ONNX Runtime's default spinning (its steps follow one another)
    assert "session.force_spinning_stop" not in spin_entries(split.runner.session)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_batching_with_openvino_prefill_gives_each_request_what_it_gets_alone(gpt2, copy_bundle, precision):
    path = gpt2
    variant = None
    if precision != "fp32":
        path = copy_bundle(gpt2)
        optimize_bundle(path, precision, force=True)
        variant = precision
    alone = Generator(path, variant=variant, prefill_backend="ov")
    samplings = [
        Sampling(),
        Sampling(temperature=0.8, top_k=40, seed=3),
        Sampling(top_p=0.9, temperature=0.9, seed=4),
    ]
    prompts = [alone.encoder.encode_prompt(" ".join([p] * 4)) for p in PROMPTS]
    expected = [alone.generate([ids], 16, s)[0].ids for ids, s in zip(prompts, samplings)]
    engine = BatchEngine(path, variant=variant, slots=2, chunk=5, prefill_backend="ov")
    # beside OpenVINO, the decode session's threads stop spinning after each step
    assert spin_entries(engine.generator.runner.session)["session.force_spinning_stop"] == "1"
    requests = [engine.submit(ids, 16, s) for ids, s in zip(prompts, samplings)]
    engine.run()
    assert [r.result().ids for r in requests] == expected
    assert max(len(ids) for ids in prompts) > 5  # prompts were prefilled in several chunks
    if precision == "fp32":  # and at fp32 that is what ONNX Runtime alone gives
        ort = Generator(path)
        assert expected[0] == ort.generate([prompts[0]], 16)[0].ids


def test_misuse_is_one_line(gpt2):
    with pytest.raises(UserError, match="prefill backend 'trt' is not one: use ov"):
        Generator(gpt2, prefill_backend="trt")
    with pytest.raises(UserError, match="in-place KV cache.*ping-pong KV"):
        Generator(gpt2, kv="pingpong", prefill_backend="ov")
    with pytest.raises(UserError, match="needs --backend ort-cpu"):
        Generator(gpt2, backend="ort-cuda", prefill_backend="ov")
    with pytest.raises(UserError, match="spin=.*CPU provider"):
        Generator(gpt2, backend="ov", spin="stop")
    ov = BatchEngine(gpt2, backend="ov", prefill_backend="ov")  # the decoding backend prefills itself
    assert ov.generator.prefill_backend is None
    ov.close()


def test_misuse_is_one_line_on_the_command_line(gpt2):
    result = CliRunner().invoke(app, ["generate", str(gpt2), "hi", "-n", "2", "--prefill-backend", "nope"])
    assert result.exit_code == 2
    assert "prefill backend 'nope' is not one" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        app, ["generate", str(gpt2), "hi", "-n", "3", "--prefill-backend", "ov", "--json"]
    )
    assert result.exit_code == 0, result.output


def test_benchmark_adds_rows_with_the_openvino_prefill_beside_ort_cpus(gpt2, make_bundle, tmp_path):
    from trtpipe.benchmark.run import benchmark

    report = benchmark(
        gpt2, ["ort-cpu"], ["fp32"], None, None, [8], 4, 1, 0, None, None, [], tmp_path, rounds=1,
        prefill_backend="ov",
    )  # fmt: skip
    rows = {r["label"]: r for r in report["decoder"]}
    assert set(rows) == {"trtpipe fp32 (in-place KV)", "trtpipe fp32 (in-place KV, ov prefill)"}, rows
    split = rows["trtpipe fp32 (in-place KV, ov prefill)"]
    assert split["prefill_backend"] == "ov" and split["ids"] == rows["trtpipe fp32 (in-place KV)"]["ids"]
    assert (
        split["peak_rss"] and split["peak_rss"] > rows["trtpipe fp32 (in-place KV)"]["peak_rss"]
    )  # OpenVINO too
    for args, message in (
        ([str(make_bundle("tiny-bert", "embed"))], "applies to GPT-2 bundles"),
        ([str(gpt2), "--backend", "ov"], "include --backend ort-cpu"),
    ):
        result = CliRunner().invoke(
            app, ["benchmark", "--engine", *args, "--prefill-backend", "ov", "--out", str(tmp_path / "x")]
        )
        assert result.exit_code == 2 and message in result.output, result.output


def test_openvino_quantizes_activations_per_weight_block(gpt2, copy_bundle):
    """A weight-only variant compiles with OpenVINO's activation group set to its MatMulNBits block (ov.weight_group),
    so its int8 path adds in the groups ONNX Runtime's int8 compute adds in: nearer ONNX Runtime's logits than at
    OpenVINO's default group of 32. fp32 keeps the default."""
    from trtpipe.runtime import kv
    from trtpipe.runtime.ov import OvSession, weight_group
    from trtpipe.runtime.session import open_session

    assert weight_group({"report": {"bits": 8, "block_size": 256}}) == 256
    assert weight_group({"precision": "int8", "report": {"weights": "u8"}}) is None  # MatMulInteger: no block

    path = copy_bundle(gpt2)
    optimize_bundle(path, "int4", force=True, block_size=16)
    bundle = Bundle.load(path)
    fp32, int4 = OvSession.from_bundle(bundle), OvSession.from_bundle(bundle, variant="int4")
    assert "DYNAMIC_QUANTIZATION_GROUP_SIZE" not in fp32.config
    assert int(int4.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 16
    default = OvSession(bundle.model_path("int4"), specs=bundle.manifest["inputs"], variant="int4")
    assert int(default.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 32
    model = bundle.model
    feeds = kv.chunk(list(range(3, 40)), 0)
    for _, name, _ in kv.kv_names(model["num_layers"]):
        feeds[name] = np.zeros((1, model["num_heads"], 0, model["head_dim"]), np.float32)
    want = open_session(bundle, variant="int4").run(feeds)["logits"]
    off = {s: float(np.abs(s.run(feeds)["logits"] - want).max()) for s in (int4, default)}
    assert off[int4] < off[default] / 2, off


def test_a_steps_pieces_group_into_passes_of_one_past_with_bounded_padding():
    from trtpipe.runtime.prefill import passes

    pieces = [
        ([1] * 8, 0, 0),
        ([1] * 7, 1, 0),
        ([1] * 30, 2, 0),
        ([1] * 6, 3, 5),
        ([1] * 6, 4, 5),
        ([1] * 2, 5, 0),
    ]
    groups = passes(pieces)
    assert sorted(i for g in groups for i in g) == list(range(len(pieces)))  # each piece in one pass
    for group in groups:
        assert len({pieces[i][2] for i in group}) == 1  # one past a pass
        longest = max(len(pieces[i][0]) for i in group)
        assert len(pieces[group[0]][0]) == longest  # the longest first
        real = sum(len(pieces[i][0]) for i in group)
        assert len(group) * longest - real <= 0.25 * len(group) * longest
    assert [2] in groups and [0, 1] in groups and [3, 4] in groups and [5] in groups  # 30 pads no 8 or 2
    assert passes(pieces, waste=1.0) == [[2, 0, 1, 5], [3, 4]]  # unbounded padding: one pass per past


def test_a_batched_openvino_pass_writes_what_one_row_at_a_time_writes(gpt2):
    """Three pieces of one step (lengths 8, 7, 6 after no past: two left-padded) and two after a past of 8 each: one
    OpenVINO pass per past, the same logits and K/V as one row at a time, no other column written."""
    split = Generator(gpt2, prefill_backend="ov")
    prefiller = split.runner.prefiller
    ids = [split.encoder.encode_prompt(" ".join([p] * 6)) for p in PROMPTS]
    assert min(map(len, ids)) >= 14
    first = [(ids[0][:8], 0, 0), (ids[1][:7], 2, 0), (ids[2][:6], 3, 0)]
    second = [(ids[0][8:14], 0, 8), (ids[1][8:13], 2, 8)]
    caches, outs, calls = [], [], []
    run_with = prefiller.session.run_with
    prefiller.session.run_with = lambda feeds, use: (
        calls.append(feeds["input_ids"].shape) or run_with(feeds, use)
    )
    for batched in (False, True):
        cache = split.runner.new_cache(4, 24)
        cache.view(0, 0, 0, 4, 0)[1] = 0  # row 1 is no piece's
        out = np.zeros((5, split.runner.vocab), np.float32)
        for pieces, at in ((first, 0), (second, 3)):
            if batched:
                prefiller.prefill_rows(pieces, cache, out[at:])
            else:
                for i, (piece, row, past) in enumerate(pieces):
                    split.runner.prefill_row(piece, cache, row, past, out[at + i : at + i + 1])
        caches.append(cache)
        outs.append(out)
    # the five pieces alone, then one pass a past: 8, 7, 6 tokens pad 3 of 24; 6, 5 pad 1 of 12 (≤ a quarter)
    assert calls[5:] == [(3, 8), (2, 6)], calls
    assert np.isfinite(outs[1]).all()
    np.testing.assert_allclose(outs[1], outs[0], atol=1e-4)
    for index, _, _ in caches[0].names():
        want, got = (c.view(0, index, 0) for c in caches)
        np.testing.assert_allclose(got, want, atol=1e-4)
        assert not got[1].any() and not got[0, :, 14:].any() and not got[2, :, 13:].any()


def test_a_burst_of_short_prompts_prefills_in_one_openvino_pass_and_each_gets_what_it_gets_alone(gpt2):
    """Five prompts arrive at an idle engine with chunk 32: the four that one piece finishes (12, 11, 10, 12 tokens)
    prefill in the first step as one OpenVINO pass (padding 3 of 48), the oldest long one (40) takes the step's
    budget of 32 in a pass of its own (a 12 beside it would pad 20 of 64); every request's tokens are
    the ones it gets alone."""
    alone = Generator(gpt2, prefill_backend="ov")
    text = [
        alone.encoder.encode_prompt(" ".join([p] * 16)) for p in PROMPTS + ["The list of def main", "x y"]
    ]
    prompts = [ids[:n] for ids, n in zip(text, (40, 12, 11, 10, 12))]
    assert [len(p) for p in prompts] == [40, 12, 11, 10, 12]
    expected = [alone.generate([ids], 10)[0].ids for ids in prompts]
    engine = BatchEngine(gpt2, slots=5, chunk=32, prefill_backend="ov", fused=False)
    passes = []
    run_with = engine.runner.prefiller.session.run_with
    engine.runner.prefiller.session.run_with = lambda feeds, use: (
        passes.append(feeds["input_ids"].shape) or run_with(feeds, use)
    )
    requests = [engine.submit(ids, 10) for ids in prompts]
    engine.step()
    assert sorted(passes) == [(1, 32), (4, 12)] and engine.stats["prefill_tokens"] == 77
    engine.run()
    assert [r.result().ids for r in requests] == expected
