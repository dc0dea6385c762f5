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
