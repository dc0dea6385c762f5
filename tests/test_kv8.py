"""The int8 KV cache (`optimize --precision kv8`): the rewrite keeps the cache in int8 with calibrated per-channel
scales, what it writes dequantises to the float cache within half a step, the twins are gated and refused when the
gate fails, and Generator / BatchEngine (fused step included) give every request what it gets alone on them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from test_batching import _alone, _mix
from test_cli import cli

from trtpipe.optimize import kv_int8
from trtpipe.optimize.kv8_twin import calibrate, windows
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import BatchEngine, Bundle, CheckFailed, Generator, UserError
from trtpipe.runtime.decoder import DecoderRunner
from trtpipe.runtime.ort import OrtSession

TEXTS = ["The list of the line is the default.", "A class is a way to bundle data and behaviour together."]


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


@pytest.fixture(scope="module")
def kv8_gpt2(gpt2, tmp_path_factory):
    """tiny-gpt2 with int4, kv-fused and kv8 (random weights: the gate is forced, and recorded as such)."""
    path = tmp_path_factory.mktemp("kv8") / "bundle"
    shutil.copytree(gpt2, path)
    optimize_bundle(path, "int4", force=True)
    optimize_bundle(path, "kv-fused")
    optimize_bundle(path, "kv8", force=True)
    return path


def test_the_rewrite_keeps_the_cache_in_int8_and_what_it_writes_dequantises_to_the_float_cache(
    gpt2, tmp_path
):
    bundle = Bundle.load(gpt2)
    source = bundle.model_path("kv-inplace")
    scales = calibrate(bundle, source, TEXTS)
    heads, dim = bundle.model["num_heads"], bundle.model["head_dim"]
    assert len(scales) == bundle.model["num_layers"]
    assert all(s.shape == (1, heads, 1, dim) and (s > 0).all() for pair in scales for s in pair)
    model = kv_int8.rewrite_kv_int8(onnx.load(source), scales)
    attention = [n for n in model.graph.node if n.op_type == "GroupQueryAttention"]
    assert all(n.input[kv_int8.K_SCALE] and n.input[kv_int8.V_SCALE] for n in attention)
    cache_types = {
        v.type.tensor_type.elem_type for v in model.graph.input if v.name.startswith("past_key_values.")
    }
    assert cache_types == {onnx.TensorProto.INT8}
    with pytest.raises(ValueError, match="quantised already"):
        kv_int8.rewrite_kv_int8(model, scales)
    with pytest.raises(ValueError, match="GroupQueryAttention"):
        kv_int8.rewrite_kv_int8(onnx.load(source), scales[:1])
    path = tmp_path / "kv8.onnx"
    onnx.save(model, path)

    plain = DecoderRunner(bundle, OrtSession(source), inplace=True)
    quantised = DecoderRunner(bundle, OrtSession(path), inplace=True)
    assert plain.cache_dtype == np.float32 and quantised.cache_dtype == np.int8  # read from the session
    ids = windows(bundle, TEXTS, bundle.limits["max_positions"], 1)[0]  # the window calibration saw
    positions = bundle.limits["max_positions"]  # calibration reaches every position a long prompt does
    assert [len(w) for w in windows(bundle, TEXTS * 200, positions, 3)] == [positions] * 3
    caches = [plain.new_cache(1, len(ids)), quantised.new_cache(1, len(ids))]
    logits = [r.prefill([ids], c, 0)[0] for r, c in zip((plain, quantised), caches)]
    assert caches[1].buffers[0][0].dtype == np.int8 and caches[1].buffers[0][0].any()
    for index in range(2 * bundle.model["num_layers"]):
        scale = scales[index // 2][index % 2][0]  # [H, 1, D]
        want = caches[0].view(0, index, 0, 1, 0)[0]
        error = np.abs(caches[1].view(0, index, 0, 1, 0)[0].astype(np.float32) * scale - want) / scale
        # layer 0's K/V come from the same embeddings: rounded to the nearest step, nothing saturated; later layers'
        # inputs carry the earlier layers' cache rounding, so they may be a few steps off
        assert error.max() <= (0.5 + 1e-3 if index < 2 else 4.0), index
    assert np.abs(logits[0] - logits[1]).max() < 0.1 * np.abs(logits[0]).max()


def test_optimize_writes_a_gated_int8_twin_of_every_in_place_variant_and_its_fused_twin(kv8_gpt2):
    variants = Bundle.load(kv8_gpt2).variants
    for base in ("fp32", "int4"):
        prefix = "" if base == "fp32" else f"{base}."
        entry, source = variants[f"{prefix}kv8-inplace"], variants[f"{prefix}kv-inplace"]
        assert entry["made_from"] == f"{prefix}kv-inplace" and entry["source_sha256"] == source["sha256"]
        assert entry["kv_cache"] == "int8" and entry["kv"] == "inplace"
        assert {s["dtype"] for s in entry["inputs"] if s["name"].startswith("past_key_values.")} == {"int8"}
        gate = entry["gate"]
        assert gate["thresholds"] == {"next_token_top1": [">=", 0.97], "next_token_top1_long": [">=", 0.97]}
        assert gate["against"] == "fp32" and 0 <= gate["metrics"]["next_token_top1_long"] <= 1
        assert 0 <= gate["metrics"]["next_token_top1"] <= 1 and 0 <= gate["next_token_top1_vs_source"] <= 1
        assert gate["forced"] == (gate["verdict"] == "fail")  # random weights: whatever it got, recorded
        fused = variants[f"{prefix}kv8-fused"]
        assert fused["made_from"] == f"{prefix}kv8-inplace" and fused["kv_cache"] == "int8"
        check = fused["parity"]["ort-cpu"]
        assert check["verdict"] == "pass" and check["max_abs_kv"] == 0.0
    with pytest.raises(UserError, match="--overwrite"):
        optimize_bundle(kv8_gpt2, "kv8")


def test_a_rebuilt_in_place_variant_rebuilds_its_int8_twin(kv8_gpt2, copy_bundle):
    path = copy_bundle(kv8_gpt2)
    before = Bundle.load(path).variants["int4.kv-inplace"]["sha256"]
    optimize_bundle(path, "int4", force=True, overwrite=True, block_size=16)  # other weights, another file
    variants = Bundle.load(path).variants
    assert variants["int4.kv-inplace"]["sha256"] != before
    assert variants["int4.kv8-inplace"]["source_sha256"] == variants["int4.kv-inplace"]["sha256"]
    assert variants["int4.kv8-fused"]["source_sha256"] == variants["int4.kv8-inplace"]["sha256"]
    assert BatchEngine(path, variant="int4", slots=2, kv_cache="int8").fused is not None  # current, used


def test_a_twin_that_fails_the_gate_is_not_written(gpt2, copy_bundle, monkeypatch):
    path = copy_bundle(gpt2)
    before = sorted(p.name for p in path.iterdir())
    monkeypatch.setattr(kv_int8, "HEADROOM", 1e-3)  # every cached value saturates: the logits are wrecked
    with pytest.raises(CheckFailed, match="LM gate.*--force"):
        optimize_bundle(path, "kv8")
    assert sorted(p.name for p in path.iterdir()) == before
    assert "kv8-inplace" not in Bundle.load(path).variants


def test_one_twin_that_fails_its_gate_leaves_the_others_written(gpt2, copy_bundle, monkeypatch):
    from trtpipe.optimize import kv8_twin

    path = copy_bundle(gpt2)
    optimize_bundle(path, "int4", force=True)
    real = kv8_twin.calibrate

    def wrecked_for_int4(bundle, inplace_path, texts):  # int4's scales a thousandth of its range: it fails
        scales = real(bundle, inplace_path, texts)
        return [(k * 1e-3, v * 1e-3) for k, v in scales] if "int4" in str(inplace_path) else scales

    monkeypatch.setattr(kv8_twin, "calibrate", wrecked_for_int4)
    with pytest.raises(CheckFailed, match="int4.kv8-inplace: the int8 KV cache fails the LM gate"):
        optimize_bundle(path, "kv8", force=False)
    variants = Bundle.load(path).variants
    assert "int4.kv8-inplace" not in variants and not (path / "model.int4.kv8-inplace.onnx").exists()
    assert variants["kv8-inplace"]["gate"]["verdict"] == "pass"  # fp32's twin passed its own gate: written
    assert not [p for p in path.iterdir() if ".tmp" in p.name]


@pytest.mark.parametrize("variant", [None, "int4"])
def test_batch_engine_on_the_int8_cache_gives_each_request_what_it_gets_alone(kv8_gpt2, variant):
    generator = Generator(kv8_gpt2, variant=variant, kv_cache="int8")
    assert generator.variant == ("kv8-inplace" if variant is None else f"{variant}.kv8-inplace")
    mix = _mix(generator)
    engine = BatchEngine(kv8_gpt2, variant=variant, slots=4, chunk=16, kv_cache="int8")
    assert engine.cache.dtype == np.int8 and engine.fused is not None  # the kv8 fused twin
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


def test_int8_cache_errors_name_the_fix(gpt2, kv8_gpt2, copy_bundle):
    with pytest.raises(UserError, match="--precision kv8"):
        Generator(gpt2, kv_cache="int8")
    with pytest.raises(UserError, match="fp32 or int8"):
        Generator(kv8_gpt2, kv_cache="fp8")
    for settings in ({"kv": "pingpong"}, {"backend": "ov"}):
        with pytest.raises(UserError, match="in place on ONNX Runtime's CPU"):
            Generator(kv8_gpt2, kv_cache="int8", **settings)
    stale = copy_bundle(kv8_gpt2)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["variants"]["kv8-inplace"]["source_sha256"] = {"model.kv-inplace.onnx": "0" * 64}
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="stale.*--precision kv8 --overwrite"):
        BatchEngine(stale, slots=2, kv_cache="int8")
    shown = cli("inspect", stale).stdout
    assert shown.count("(stale)") == 1 and "kv8-inplace" in shown  # the one stale twin is marked, no other
    assert all(Bundle.load(stale).stale(n) is None for n in ("fp32", "kv-inplace"))  # not twins: never stale
    result = cli("generate", gpt2, "hi", "--kv-cache", "int8")
    assert result.returncode == 2 and "--precision kv8" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_triton_repository_takes_the_int8_cache_only_where_the_bundle_has_it(gpt2, kv8_gpt2, tmp_path):
    from trtpipe.serving.repository import RepoOptions, write_repository

    options = RepoOptions(backend="python", kv_cache="int8")
    with pytest.raises(UserError, match="--precision kv8"):
        write_repository([str(gpt2)], tmp_path / "none", options)
    assert not (tmp_path / "none").exists()
    write_repository([str(kv8_gpt2)], tmp_path / "repo", options)
    config = next((tmp_path / "repo").glob("*/config.pbtxt")).read_text()
    assert '"kv_cache"' in config and '"int8"' in config


def test_benchmark_adds_rows_on_the_int8_cache_beside_ort_cpus(gpt2, kv8_gpt2, make_bundle, tmp_path):
    from trtpipe.benchmark.run import benchmark

    report = benchmark(
        kv8_gpt2, ["ort-cpu"], ["fp32", "int4"], None, None, [8], 4, 1, 0, None, None, [], tmp_path / "r",
        rounds=1, memory=False, kv_cache="int8",
    )  # fmt: skip
    rows = {r["label"]: r for r in report["decoder"]}
    assert set(rows) == {
        "trtpipe fp32 (in-place KV)",
        "trtpipe int4 (in-place KV)",
        "trtpipe fp32 (in-place int8 KV)",
        "trtpipe int4 (in-place int8 KV)",
    }, rows
    for name in ("fp32", "int4"):
        row = rows[f"trtpipe {name} (in-place int8 KV)"]
        assert row["kv_cache"] == "int8" and row["error"] is None and len(row["ids"]) == 4
    assert report["config"]["kv_cache"] == "int8"
    for args, message in (
        ([make_bundle("tiny-bert", "embed"), "--kv-cache", "int8"], "applies to GPT-2 bundles"),
        ([gpt2, "--kv-cache", "int8"], "--precision kv8"),
        ([kv8_gpt2, "--backend", "ov", "--kv-cache", "int8"], "include --backend ort-cpu"),
        ([kv8_gpt2, "--kv-cache", "int4"], "must be int8"),
    ):
        result = cli("benchmark", "--engine", *args, "--no-memory", "--out", tmp_path / "x")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_openvino_prefill_writes_the_int8_cache_with_the_twins_scales(kv8_gpt2):
    """`prefill_backend="ov"` with the int8 cache: the prompt's K/V quantized with the twin's own scales (read without
    onnx, the same as onnx reads them), the first layer's as ONNX Runtime's int8 prefill writes them (one step at
    most: the two engines add in other orders), a chunk after a past read back dequantized, and batching gives each
    request that prefills in one piece exactly what it gets alone."""
    pytest.importorskip("openvino")
    from onnx import numpy_helper

    from trtpipe.runtime import kv

    ort = Generator(kv8_gpt2, kv_cache="int8")
    split = Generator(kv8_gpt2, kv_cache="int8", prefill_backend="ov")
    prefiller = split.runner.prefiller
    model = onnx.load(Bundle.load(kv8_gpt2).model_path("kv8-inplace"))
    stored = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for index, _, _ in kv.kv_names(Bundle.load(kv8_gpt2).model["num_layers"]):
        want = stored[kv.kv8_scale_name(index // 2, "kv"[index % 2])]
        np.testing.assert_array_equal(prefiller.scales[index], want)
    ids = ort.encoder.encode_prompt(" ".join(TEXTS * 2))[:30]
    caches, logits = [], []
    for generator, cuts in ((ort, [30]), (split, [30]), (split, [12, 18])):
        cache = generator.runner.new_cache(2, 32)
        out, past = np.zeros((1, generator.runner.vocab), np.float32), 0
        for n in cuts:
            generator.runner.prefill_row(ids[past : past + n], cache, 1, past, out)
            past += n
        caches.append(cache)
        logits.append(out.copy())
    assert caches[1].dtype == np.int8
    for index in (0, 1):  # layer 0: the same embeddings on both engines
        want, got = (c.view(0, index, 0)[1, :, :30].astype(np.int32) for c in caches[:2])
        assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.99
        assert not caches[1].view(0, index, 0)[0].any()  # row 0 untouched
    for one in (logits[1], logits[2]):  # near ONNX Runtime's own int8 prefill, cut or not
        assert (
            one.argmax() == logits[0].argmax()
            and np.abs(one - logits[0]).max() < 0.1 * np.abs(logits[0]).max()
        )
    mix = [item for item in _mix(split) if len(item["prompt"]) <= 16]
    assert len(mix) >= 2
    engine = BatchEngine(kv8_gpt2, slots=4, chunk=16, kv_cache="int8", prefill_backend="ov")
    assert engine.cache.dtype == np.int8 and engine.fused is None  # two passes beside OpenVINO
    requests = [engine.submit(i["prompt"], i["max_new_tokens"], i["sampling"], i["stop"]) for i in mix]
    engine.run()
    for item, request in zip(mix, requests):
        assert request.result().ids == _alone(split, item).ids, item
