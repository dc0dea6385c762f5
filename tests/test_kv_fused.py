"""The fused step (decoding rows and one prompt chunk in one pass): its graph gives exactly what the two passes give,
`optimize --precision kv-fused` writes checked twins that stay current, and BatchEngine on them gives every request
what it gets alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_batching import _alone, _mix

from trtpipe.optimize.fused_twin import two_passes
from trtpipe.optimize.kv_fused import rewrite_kv_fused
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import BatchEngine, Bundle, Generator, UserError
from trtpipe.runtime.fused import FusedStep
from trtpipe.runtime.ort import OrtSession


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


@pytest.fixture(scope="module")
def fused_gpt2(gpt2, tmp_path_factory):
    """A copy of tiny-gpt2 with int4 and then kv-fused (twins of kv-inplace and int4.kv-inplace)."""
    import shutil

    path = tmp_path_factory.mktemp("fused") / "bundle"
    shutil.copytree(gpt2, path)
    optimize_bundle(path, "int4", force=True)
    optimize_bundle(path, "kv-fused")
    return path


def test_one_fused_pass_equals_a_decode_step_and_a_chunk(gpt2, tmp_path):
    bundle = Bundle.load(gpt2)
    model = bundle.model
    path = tmp_path / "model.kv-fused.onnx"
    plain = onnx.load(bundle.model_path("kv-inplace"))
    onnx.save(rewrite_kv_fused(plain, model["num_layers"], model["num_heads"], model["head_dim"]), path)
    fused = FusedStep(bundle, OrtSession(path))
    runner = Generator(gpt2, kv="inplace").runner
    rng = np.random.default_rng(3)
    caches = [runner.new_cache(5, 64) for _ in range(2)]
    for buffers in zip(*(c.buffers[0] for c in caches)):  # the same cached K/V in both
        value = rng.standard_normal(buffers[0].size).astype(np.float32)
        for buffer in buffers:
            buffer[:] = value
    vocab = runner.vocab
    tokens, lengths = rng.integers(0, vocab, 3), np.array([5, 11, 2])
    chunk, row, past = [int(t) for t in rng.integers(0, vocab, 7)], 4, 6

    want = two_passes(runner, caches[0], tokens, lengths, chunk, past, row)  # the 3 rows' logits, the chunk's
    got = fused.run(caches[1], tokens, lengths, chunk, past, row)

    assert got.shape == want.shape == (4, vocab)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    for a, b in zip(caches[0].buffers[0], caches[1].buffers[0]):  # the same K/V written in the same places
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="chunk row"):  # the chunk's row must lie above the decoding rows
        fused.run(caches[1], tokens, lengths, chunk, past, 2)
    with pytest.raises(ValueError, match="GroupQueryAttention"):
        rewrite_kv_fused(
            onnx.load(bundle.model_path()), model["num_layers"], model["num_heads"], model["head_dim"]
        )


def test_optimize_writes_a_checked_twin_of_every_in_place_variant(fused_gpt2):
    variants = Bundle.load(fused_gpt2).variants
    for base in ("fp32", "int4"):
        name = "kv-fused" if base == "fp32" else f"{base}.kv-fused"
        entry, source = variants[name], variants[entry_source(name)]
        assert entry["kv"] == "fused" and entry["made_from"] == entry_source(name)
        assert entry["source_sha256"] == source["sha256"] and entry["precision"] == source["precision"]
        check = entry["parity"]["ort-cpu"]
        assert check["verdict"] == "pass" and check["max_abs_logits"] <= check["atol"] and check["top1"]
        assert (fused_gpt2 / entry["file"]).is_file()
    with pytest.raises(UserError, match="--overwrite"):
        optimize_bundle(fused_gpt2, "kv-fused")


def entry_source(name: str) -> str:
    return name.replace("kv-fused", "kv-inplace")


@pytest.mark.parametrize("variant", [None, "int4"])
def test_batch_engine_on_the_fused_step_gives_each_request_what_it_gets_alone(fused_gpt2, variant):
    generator = Generator(fused_gpt2, variant=variant)
    mix = _mix(generator)
    engine = BatchEngine(fused_gpt2, variant=variant, slots=4, chunk=16)
    assert engine.fused is not None  # the bundle has a current twin: used without being asked for
    requests = []
    for index, item in enumerate(mix):  # arrivals spread over the run, so prompts prefill beside running rows
        requests.append(engine.submit(item["prompt"], item["max_new_tokens"], item["sampling"], item["stop"]))
        if index >= 3:
            engine.step()
            engine.step()
    engine.run()
    for item, request in zip(mix, requests):
        got, want = request.result(), _alone(generator, item)
        assert got.ids == want.ids and got.text == want.text and got.finish == want.finish, item
    assert engine.stats["fused_steps"] > 0
    assert engine.stats["prefill_tokens"] == sum(len(item["prompt"]) for item in mix)
    plain = BatchEngine(fused_gpt2, variant=variant, slots=4, chunk=16, fused=False)
    assert plain.fused is None
    plain.generate([mix[0]["prompt"]], 4)
    assert plain.stats["fused_steps"] == 0


def test_a_rebuilt_in_place_variant_rebuilds_its_twin(fused_gpt2, copy_bundle):
    path = copy_bundle(fused_gpt2)
    optimize_bundle(path, "int4", force=True, overwrite=True)
    variants = Bundle.load(path).variants
    assert variants["int4.kv-fused"]["source_sha256"] == variants["int4.kv-inplace"]["sha256"]
    assert BatchEngine(path, variant="int4", slots=2).fused is not None


def test_fused_step_errors_name_the_fix(gpt2, fused_gpt2, copy_bundle):
    with pytest.raises(UserError, match="--precision kv-fused"):
        BatchEngine(gpt2, slots=2, fused=True)
    assert BatchEngine(gpt2, slots=2).fused is None  # a bundle without the twin batches as before
    with pytest.raises(UserError, match="ort-cpu"):
        BatchEngine(fused_gpt2, slots=2, fused=True, backend="ov")
    with pytest.raises(UserError, match="True, False or None"):
        BatchEngine(fused_gpt2, slots=2, fused="yes")
    stale = copy_bundle(fused_gpt2)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["variants"]["kv-fused"]["source_sha256"] = {"model.kv-inplace.onnx": "0" * 64}
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="stale.*--overwrite"):
        BatchEngine(stale, slots=2, fused=True)
    assert BatchEngine(stale, slots=2).fused is None  # a stale twin is not used unasked


def test_cli_refuses_kv_fused_for_an_encoder_in_one_line(make_bundle):
    encoder = make_bundle("tiny-bert", "classify")
    result = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "cli.py"),
            "optimize",
            str(encoder),
            "--precision",
            "kv-fused",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "GPT-2" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_fused_step_prefills_one_prompt_and_the_next_ones_wait(fused_gpt2):
    """One running row and three 5-token prompts, chunk 16: a step runs the row with the oldest prompt as one pass,
    and the other prompts wait for the steps after it (a pass of their own would read the weights again)."""
    generator = Generator(fused_gpt2)
    prompts = [list(range(10 + 7 * i, 15 + 7 * i)) for i in range(4)]
    engine = BatchEngine(fused_gpt2, slots=4, chunk=16)
    assert engine.cache.batch == 4  # no scratch row
    first = engine.submit(prompts[0], 6)
    engine.step()  # nothing decodes yet: the first prompt prefills on its own, then decodes
    assert engine.stats["fused_steps"] == 0 and len(first.tokens) == 2
    later = [engine.submit(p, 6) for p in prompts[1:]]
    for step in range(3):
        engine.step()
        assert engine.stats["fused_steps"] == step + 1
        assert [bool(r.tokens) for r in later] == [True] * (step + 1) + [False] * (
            2 - step
        )  # one more started
    engine.run()
    for prompt, request in zip(prompts, [first, *later]):
        assert request.result().ids == generator.generate([prompt], 6)[0].ids


def test_the_fused_session_decodes_as_the_in_place_runner_does(fused_gpt2):
    """FusedStep.decode (the last row as the chunk) gives the in-place runner's logits and K/V, and leaves every
    other row's cache alone."""
    engine = BatchEngine(fused_gpt2, slots=4)
    runner, fused = engine.runner, engine.fused
    rng = np.random.default_rng(7)
    caches = [runner.new_cache(4, 64) for _ in range(2)]
    for buffers in zip(*(c.buffers[0] for c in caches)):
        buffers[0][:] = rng.standard_normal(buffers[0].size).astype(np.float32)
        buffers[1][:] = buffers[0]
    vocab = Bundle.load(fused_gpt2).limits["vocab_size"]
    tokens, lengths = rng.integers(0, vocab, 3), np.array([12, 4, 30])
    step, _ = runner.decode(tokens, lengths, caches[0], None)
    fused_step, _ = fused.decode(tokens, lengths, caches[1])
    np.testing.assert_allclose(fused_step, step[:3], rtol=0, atol=1e-5)
    for a, b in zip(
        caches[0].buffers[0], caches[1].buffers[0]
    ):  # the same K/V, the same places; row 3 untouched
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_a_busy_fused_engine_runs_on_one_session(fused_gpt2):
    """While rows decode, every step goes to the fused session: decode steps of two rows or more, and prompt chunks
    beside the rows. The in-place graph keeps a lone row's decode and prompts prefilled while no row decodes, so a
    request served alone never switches sessions."""
    engine = BatchEngine(fused_gpt2, slots=4, chunk=16)
    in_place_decodes, in_place_prefills = [], []
    decode, prefill = engine.runner.decode, engine.runner.prefill_row

    def counted_decode(tokens, lengths, cache, mask=None):
        in_place_decodes.append(len(tokens))
        return decode(tokens, lengths, cache, mask)

    def counted_prefill(*args):
        in_place_prefills.append(engine.stats["steps"])  # the step it runs in
        return prefill(*args)

    engine.runner.decode, engine.runner.prefill_row = counted_decode, counted_prefill
    prompts = [list(range(5, 5 + n)) for n in (3, 4, 5, 20, 7, 40, 11)]
    engine.generate(prompts, 12)
    assert in_place_decodes and set(in_place_decodes) == {1}  # the last row left decodes alone, in place
    assert in_place_prefills and set(in_place_prefills) == {0}  # the first step's prompts: no row decoded yet
    assert engine.stats["fused_steps"] > 0
    alone = BatchEngine(fused_gpt2, slots=4, chunk=16)
    alone.fused.run = None  # a request alone never reaches the fused session
    assert alone.generate([prompts[3]], 8)[0].ids == Generator(fused_gpt2).generate([prompts[3]], 8)[0].ids


def test_a_twin_that_fails_its_check_is_left_out_and_its_precision_runs_in_two_passes(
    fused_gpt2, copy_bundle, monkeypatch
):
    """A kernel that rounds a row differently beside other rows (MatMulNBits at block 128 did, before pair_rows.py)
    fails the twin's check: rebuilding that precision still succeeds, the old twin is left stale (file and entry
    untouched) and is not used, and the other precisions keep their fused step."""
    from trtpipe.optimize import fused_twin
    from trtpipe.runtime.store import sha256_file

    path = copy_bundle(fused_gpt2)
    real = fused_twin.fused_agreement

    def disagree(bundle, inplace_path, fused_path, seed=0):
        got = real(bundle, inplace_path, fused_path, seed)
        return {**got, "verdict": "fail"} if "int4" in Path(inplace_path).name else got

    monkeypatch.setattr(fused_twin, "fused_agreement", disagree)
    old = Bundle.load(path).variants["int4.kv-fused"]
    optimize_bundle(path, "int4", force=True, overwrite=True, block_size=16)  # other weights: the twin fails
    bundle = Bundle.load(path)
    assert bundle.variants["int4.kv-fused"] == old and "rebuilt after it" in bundle.stale("int4.kv-fused")
    assert sha256_file(path / old["file"]) == old["sha256"][old["file"]]
    assert not [p for p in path.iterdir() if ".tmp" in p.name]  # nothing half-written left behind
    assert BatchEngine(path, variant="int4", slots=2).fused is None
    assert BatchEngine(path, slots=2).fused is not None
