"""The TensorRT stage: real TensorRT-RTX builds on the CPU (encoder and two-profile GPT-2), profiles, lint, the memory
estimate, trtexec lines, the advisor, doctor and every CLI user error (one line, exit 2). GPU tests at the end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.engines import plan as plan_mod
from trtpipe.engines.builder import build_engine
from trtpipe.engines.memory import GIB, check_memory, estimate_memory, kv_cache_bytes
from trtpipe.engines.plan import BuildOptions, plan_build, up_to_date
from trtpipe.engines.profiles import (
    default_profiles,
    parse_shapes,
    profiles_from_flags,
    read_profile_file,
    shape_flags,
    validate_profiles,
)
from trtpipe.runtime.bundle import Bundle
from trtpipe.runtime.errors import UserError
from trtpipe.runtime.paths import sha256_file
from trtpipe.runtime.trt.platform import Gpu, module_available

runner = CliRunner()
HAS_RTX = module_available("tensorrt_rtx")
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="needs tensorrt-rtx (pip install trtpipe[rtx])")
H100 = Gpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80 * GIB, "560.35")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error:")
    return lines[0]


def private_copy(path: Path, root: Path) -> Path:
    target = root / path.name
    shutil.copytree(path, target)
    return target


@pytest.fixture(scope="module")
def encoder(make_bundle, tmp_path_factory) -> Path:
    """This module's own copy (fp32 only, no engines), whatever other test modules add to the session's bundles."""
    return private_copy(make_bundle("tiny-bert", "classify"), tmp_path_factory.mktemp("encoder"))


@pytest.fixture(scope="module")
def decoder(make_bundle, tmp_path_factory) -> Path:
    return private_copy(make_bundle("tiny-gpt2", "generate"), tmp_path_factory.mktemp("decoder"))


@pytest.fixture(scope="module")
def built_encoder(encoder, tmp_path_factory) -> tuple[Path, object]:
    path = private_copy(encoder, tmp_path_factory.mktemp("rtx-encoder"))
    if not HAS_RTX:
        pytest.skip("needs tensorrt-rtx")
    result = invoke("build", path, "--flavour", "rtx", "--json")
    assert result.exit_code == 0, result.output
    return path, json.loads(result.stdout)


@pytest.fixture(scope="module")
def built_decoder(decoder, tmp_path_factory) -> tuple[Path, object]:
    path = private_copy(decoder, tmp_path_factory.mktemp("rtx-decoder"))
    if not HAS_RTX:
        pytest.skip("needs tensorrt-rtx")
    return path, build_engine(path, BuildOptions(flavour="rtx"))


# ------------------------------------------------------------------------------------- real TensorRT-RTX builds


@pytest.mark.trt
@needs_rtx
def test_rtx_encoder_build_writes_plan_and_manifest_entry(built_encoder):
    path, payload = built_encoder
    assert payload["skipped"] is False
    file = payload["file"]
    assert file == "engines/fp32.rtx-sm80plus.plan"
    entry = Bundle.load(path).engines[file]
    plan = path / file
    assert plan.is_file() and plan.stat().st_size == entry["bytes"] > 100_000
    assert sha256_file(plan) == entry["sha256"]
    assert entry["flavour"] == "rtx" and entry["variant"] == "fp32" and entry["precision"] == "fp32"
    assert entry["compute_capabilities"] == ["8.0", "8.6", "8.9", "12.0"] and entry["portable"] is True
    assert entry["tensorrt_version"].startswith("1.") and entry["cuda_version"]
    assert entry["onnx_sha256"] == Bundle.load(path).variants["fp32"]["sha256"]["model.onnx"]
    assert entry["flags"]["strongly_typed"] is True and entry["flags"]["timing_cache"] is False
    assert entry["build_seconds"] > 0
    assert entry["progress"]["phases"] > 0 and entry["progress"]["steps"] > 0  # the monitor was driven
    [profile] = entry["profiles"]
    assert profile["name"] == "default"
    assert profile["shapes"]["input_ids"] == {"min": [1, 1], "opt": [8, 128], "max": [32, 128]}
    assert not any(p.name.startswith(".") for p in (path / "engines").iterdir())  # no temp files left


@pytest.mark.trt
@needs_rtx
def test_rebuild_is_skipped_when_nothing_changed_and_forced_with_overwrite(built_encoder):
    path, payload = built_encoder
    before = Bundle.load(path).engines[payload["file"]]
    result = invoke("build", path, "--flavour", "rtx")
    assert result.exit_code == 0 and "up to date" in result.stdout
    assert Bundle.load(path).engines[payload["file"]]["built"] == before["built"]
    result = invoke("build", path, "--flavour", "rtx", "--overwrite", "--json")
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["skipped"] is False and again["reason"].startswith("up to date")
    assert Bundle.load(path).engines[payload["file"]]["sha256"] == again["entry"]["sha256"]


@pytest.mark.trt
@needs_rtx
def test_changed_profile_rebuilds_and_is_recorded(encoder, tmp_path):
    path = private_copy(encoder, tmp_path)
    first = build_engine(path, BuildOptions(flavour="rtx", max_shapes="input_ids:4x64"))
    assert not first.skipped
    profile = first.entry["profiles"][0]["shapes"]["attention_mask"]
    assert profile == {"min": [1, 1], "opt": [4, 64], "max": [4, 64]}  # opt follows a smaller max
    assert "--max-shapes" in first.entry["build_args"]
    second = build_engine(path, BuildOptions(flavour="rtx", max_shapes="input_ids:8x64"))
    assert not second.skipped and "profiles changed" in second.reason
    assert Bundle.load(path).engines[second.file]["profiles"][0]["shapes"]["input_ids"]["max"] == [8, 64]


@pytest.mark.trt
@needs_rtx
def test_rtx_gpt2_engine_has_prefill_and_decode_profiles(built_decoder):
    path, result = built_decoder
    entry = Bundle.load(path).engines[result.file]
    prefill, decode = entry["profiles"]
    assert (prefill["name"], decode["name"]) == ("prefill", "decode")
    limit = Bundle.load(path).max_length
    assert prefill["shapes"]["past_key_values.0.key"]["max"] == [8, 4, 0, 8]  # empty past
    assert prefill["shapes"]["input_ids"]["max"] == [8, limit]
    assert decode["shapes"]["input_ids"] == {"min": [1, 1], "opt": [1, 1], "max": [8, 1]}
    assert decode["shapes"]["past_key_values.1.value"]["min"] == [1, 4, 1, 8]
    assert decode["shapes"]["past_key_values.1.value"]["max"] == [8, 4, limit - 1, 8]
    assert decode["shapes"]["attention_mask"]["max"] == [8, limit]
    assert entry["memory_estimate"]["kv"] == kv_cache_bytes(2, 8, 4, limit, 8, 4)
    assert up_to_date(plan_build(path, BuildOptions(flavour="rtx")))[0]


@pytest.mark.trt
@needs_rtx
def test_build_defaults_builds_every_bundle_then_skips(encoder, decoder, tmp_path):
    out = tmp_path / "bundles"
    for source in (encoder, decoder):
        private_copy(source, out)
    result = invoke("build-defaults", "--out", out, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert sorted(r["file"] for r in rows) == ["engines/fp32.rtx-sm80plus.plan"] * 2
    assert not any(r["skipped"] for r in rows)
    again = json.loads(invoke("build-defaults", "--out", out, "--json").stdout)
    assert all(r["skipped"] for r in again)


@pytest.mark.trt
@needs_rtx
def test_explicit_compute_capability_names_the_target(encoder, tmp_path):
    path = private_copy(encoder, tmp_path)
    result = build_engine(path, BuildOptions(flavour="rtx", compute_capabilities="sm89"))
    assert result.file == "engines/fp32.rtx-sm89.plan"
    assert result.entry["compute_capabilities"] == ["8.9"] and result.entry["portable"] is False
    assert "--compute-capabilities" in result.entry["build_args"]


@pytest.mark.trt
@needs_rtx
def test_rtx_builds_the_fp16_and_int8_qdq_variants(encoder, tmp_path):
    """Strongly typed networks: the ONNX variant decides precision (made by `trtpipe optimize`)."""
    path = private_copy(encoder, tmp_path)
    for variant, dtype_bytes in (("fp16", 2), ("int8-qdq", 4)):
        made = invoke("optimize", path, "--precision", variant, "--force", "--quiet")
        if made.exit_code != 0 and "No such command" in made.output:
            pytest.skip("the optimize stage is not available")
        assert made.exit_code == 0, made.output
        result = build_engine(path, BuildOptions(variant=variant, flavour="rtx"))
        assert result.file == f"engines/{variant}.rtx-sm80plus.plan" and not result.skipped
        assert result.entry["precision"] == variant
        assert result.entry["onnx"] == Bundle.load(path).variants[variant]["file"]
        assert result.entry["memory_estimate"]["dtype_bytes"] == dtype_bytes
    assert len(Bundle.load(path).engines) == 2


# ------------------------------------------------------------------------------------------------- profiles


def test_shape_flags_parse_and_round_trip(encoder, decoder):
    assert parse_shapes("input_ids:1x128, attention_mask:1x128", "--opt-shapes") == {
        "input_ids": [1, 128],
        "attention_mask": [1, 128],
    }
    with pytest.raises(UserError, match="NAME:DIMS"):
        parse_shapes("input_ids=1x128", "--opt-shapes")
    for path in (encoder, decoder):
        bundle = Bundle.load(path)
        profiles = profiles_from_flags(
            bundle, None, None, "input_ids:4x32" + (",attention_mask:4x64" if bundle.is_decoder else "")
        )
        flags = shape_flags(profiles, bundle.is_decoder)
        assert profiles_from_flags(bundle, flags["min"], flags["opt"], flags["max"]) == profiles
        assert validate_profiles(bundle, profiles) == profiles


def test_gpt2_shape_flags_bound_prefill_and_decode(decoder):
    bundle = Bundle.load(decoder)
    prefill, decode = profiles_from_flags(bundle, None, None, "input_ids:2x100,attention_mask:2x200")
    assert prefill["shapes"]["input_ids"]["max"] == [2, 100]
    assert prefill["shapes"]["attention_mask"]["max"] == [2, 100]  # total = prompt during prefill
    assert decode["shapes"]["attention_mask"]["max"] == [2, 200]
    assert decode["shapes"]["past_key_values.0.key"]["max"] == [2, 4, 199, 8]
    assert decode["shapes"]["position_ids"]["max"] == [2, 1]
    with pytest.raises(UserError, match="position_ids and past_key_values follow"):
        profiles_from_flags(bundle, None, None, "past_key_values.0.key:1x4x10x8")


def test_profile_validation_refuses_bad_profiles(encoder, decoder):
    bundle = Bundle.load(encoder)
    good = default_profiles(bundle)
    bad = json.loads(json.dumps(good))
    bad[0]["shapes"]["input_ids"]["max"] = [32, 4096]
    with pytest.raises(UserError, match="exceeds the model's 128 positions"):
        validate_profiles(bundle, bad)
    bad = json.loads(json.dumps(good))
    del bad[0]["shapes"]["token_type_ids"]
    with pytest.raises(UserError, match="missing input"):
        validate_profiles(bundle, bad)
    gpt2 = Bundle.load(decoder)
    with pytest.raises(UserError, match="two profiles"):
        validate_profiles(gpt2, default_profiles(gpt2)[:1])


# ----------------------------------------------------------------------------------------------------- lint


def _bundle_with_unsupported_op(source: Path, root: Path) -> Path:
    """A copy whose model.onnx also feeds a hidden state through `Unique` and an ORT contrib op."""
    import onnx
    from onnx import helper

    path = private_copy(source, root)
    model = onnx.load(str(path / "model.onnx"))
    graph = model.graph
    tensor = graph.node[len(graph.node) // 2].output[0]
    graph.node.append(helper.make_node("Unique", [tensor], ["unique_out"], name="odd_unique"))
    graph.node.append(
        helper.make_node("FastGelu", [tensor], ["gelu_out"], name="ms_gelu", domain="com.microsoft")
    )
    graph.output.append(helper.make_tensor_value_info("unique_out", onnx.TensorProto.FLOAT, None))
    graph.output.append(helper.make_tensor_value_info("gelu_out", onnx.TensorProto.FLOAT, None))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path / "model.onnx"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["variants"]["fp32"]["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_lint_table_passes_our_exports_and_names_unsupported_nodes(encoder, decoder, tmp_path):
    for path in (encoder, decoder):
        result = invoke("lint", path, "--table", "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["passed"] and report["nodes"] > 100 and "operator table" in report["method"]
    bad = _bundle_with_unsupported_op(encoder, tmp_path)
    result = invoke("lint", bad, "--table")
    assert result.exit_code == 1
    assert "odd_unique (Unique)" in result.stdout and "not supported by TensorRT 10" in result.stdout
    assert "ms_gelu (com.microsoft.FastGelu)" in result.stdout and "custom-domain" in result.stdout


def test_lint_table_flags_asymmetric_quantization():
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("zero", TensorProto.INT8, [], [3])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "scale", "zero"], ["q"], name="q0"),
        helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"], name="dq0"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], [scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    from trtpipe.engines.lint import lint_with_table

    findings, nodes_seen, ops = lint_with_table(onnx.load_from_string(model.SerializeToString()))
    assert nodes_seen == 2 and ops == {"DequantizeLinear": 1, "QuantizeLinear": 1}
    assert [(f.node, f.severity) for f in findings] == [("q0", "error"), ("dq0", "error")]
    assert "symmetric" in findings[0].reason


@pytest.mark.trt
@needs_rtx
def test_lint_with_tensorrt_rtx_parser(encoder, tmp_path):
    result = invoke("lint", encoder, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] and "TensorRT-RTX" in report["method"] and "ONNX parser" in report["method"]
    bad = _bundle_with_unsupported_op(encoder, tmp_path)
    result = invoke("lint", bad, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    nodes = {f["node"]: f for f in report["findings"]}
    assert "odd_unique" in nodes and nodes["odd_unique"]["op"] == "Unique"
    build = invoke("build", bad, "--flavour", "rtx")
    line = one_error_line(build)
    assert "odd_unique" in line and "trtpipe lint" in line


# ---------------------------------------------------------------------------------------- memory estimate


def test_kv_formula_and_estimate_numbers(decoder, encoder):
    assert kv_cache_bytes(12, 8, 12, 1024, 64, 2) == 2 * 12 * 8 * 12 * 1024 * 64 * 2
    bundle = Bundle.load(decoder)
    profiles = profiles_from_flags(bundle, None, None, "input_ids:4x64,attention_mask:4x200")
    estimate = estimate_memory(bundle, "fp32", profiles)
    assert estimate.kv == 2 * 2 * 4 * 4 * 200 * 8 * 4  # 2·L·B·H·S·D·bytes
    assert estimate.kv_copies == 2
    assert estimate.weights == (decoder / "model.onnx").stat().st_size
    # outputs: logits [B, 1, V] fp32 at the largest batch (present.* is the KV cache, not counted twice)
    assert estimate.outputs == 4 * 1 * bundle.limits["vocab_size"] * 4
    assert estimate.total == estimate.weights + estimate.activations + estimate.outputs + 2 * estimate.kv
    enc = estimate_memory(Bundle.load(encoder), "fp32", default_profiles(Bundle.load(encoder)))
    hidden, inter = 32, 64
    assert enc.activations == 32 * 128 * (4 * hidden + inter) * 4 + 2 * 32 * 4 * 128 * 128 * 4
    assert enc.kv == 0


def test_memory_check_refuses_impossible_settings(decoder):
    bundle = Bundle.load(decoder)
    profiles = default_profiles(bundle)
    estimate = estimate_memory(bundle, "fp32", profiles, workspace=16 * GIB)
    with pytest.raises(UserError, match="larger than the GPU's memory"):
        check_memory(estimate, 8 * GIB, "the GPU")
    small = estimate_memory(bundle, "fp32", profiles)
    with pytest.raises(UserError, match="lower the maximum batch"):
        check_memory(small, small.engine - 1, "a tiny GPU")
    tight = estimate_memory(bundle, "fp32", profiles, workspace=1 << 20)
    with pytest.raises(UserError, match="smaller --workspace"):
        check_memory(tight, tight.engine + (1 << 19), "the GPU")
    check_memory(small, None)  # unknown GPU memory: nothing refused
    check_memory(small, 80 * GIB, "H100")


def test_workspace_larger_than_the_gpu_is_one_line(encoder, monkeypatch):
    monkeypatch.setattr(plan_mod, "nvidia_gpus", lambda: (H100,))
    line = one_error_line(
        invoke("build", encoder, "--flavour", "rtx", "--workspace", "100", "--print-trtexec")
    )
    assert "--workspace 100 GB is larger than NVIDIA H100 80GB HBM3's memory" in line
    line = one_error_line(
        invoke("build", encoder, "--flavour", "rtx", "--gpu-memory", "0.001", "--print-trtexec")
    )
    assert "lower the maximum batch or sequence" in line


# -------------------------------------------------------------------------------------------------- trtexec


def test_print_trtexec_encoder(encoder, monkeypatch):
    monkeypatch.setattr(plan_mod, "nvidia_gpus", lambda: (H100,))
    result = invoke(
        "build",
        encoder,
        "--flavour",
        "trt10",
        "--print-trtexec",
        "--workspace",
        "4",
        "--builder-level",
        "5",
        "--max-shapes",
        "input_ids:16x96",
        "--no-tf32",
    )
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert line.startswith("trtexec --onnx=") and "model.onnx" in line
    assert f"--saveEngine={encoder}/engines/fp32.trt10-nvidia-h100-80gb-hbm3-sm90.plan" in line
    assert "--stronglyTyped" in line and "--memPoolSize=workspace:4096M" in line
    assert "--builderOptimizationLevel=5" in line and "--noTF32" in line
    assert f"--timingCacheFile={encoder}/engines/timing.cache" in line
    assert "--maxShapes=input_ids:16x96,attention_mask:16x96,token_type_ids:16x96" in line
    assert "--optShapes=input_ids:8x96," in line
    assert not (encoder / "engines").exists()  # nothing built


def test_print_trtexec_gpt2_has_two_profiles(decoder):
    result = invoke("build", decoder, "--flavour", "trt10", "--print-trtexec", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    args = payload["trtexec"].split()
    mins = [a for a in args if a.startswith("--minShapes=")]
    maxs = [a for a in args if a.startswith("--maxShapes=")]
    assert len(mins) == len(maxs) == 2  # profile 0 prefill, profile 1 decode
    assert "past_key_values.0.key:8x4x0x8" in maxs[0] and "input_ids:8x256" in maxs[0]
    assert "past_key_values.0.key:1x4x1x8" in mins[1] and "past_key_values.0.key:8x4x255x8" in maxs[1]
    assert args.index(mins[0]) < args.index(maxs[0]) < args.index(mins[1])


# ------------------------------------------------------------------------------------------------- advisor


def test_advise_profile_from_corpus_and_build_from_file(encoder, tmp_path):
    profile_file = tmp_path / "profile.json"
    result = invoke("advise", encoder, "--out", profile_file, "--max-batch", "16", "--json")
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    p = advice["percentiles"]
    shapes = advice["profiles"][0]["shapes"]["input_ids"]
    assert shapes["min"] == [1, 1] and shapes["max"][0] == 16
    assert shapes["opt"][1] % 16 == 0 and p["p50"] <= shapes["opt"][1] <= p["p75"] + 15  # the p50–p75 bucket
    assert shapes["max"][1] == min(-(-p["p99"] // 64) * 64, 128)  # p99 rounded up to 64, within the model
    assert any("exceed the model's 128 tokens" in w for w in advice["warnings"])
    bundle = Bundle.load(encoder)
    assert read_profile_file(profile_file, bundle) == advice["profiles"]
    plan = plan_build(encoder, BuildOptions(flavour="trt10", profile_from=profile_file), need_library=False)
    assert plan.profiles == advice["profiles"]


def test_advise_texts_file_and_gpt2(decoder, tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(["short prompt"] * 50 + ["a much longer prompt " * 20] * 2), encoding="utf-8")
    result = invoke("advise", decoder, "--texts", texts)
    assert result.exit_code == 0, result.output
    assert "52 texts from" in result.stdout and "prefill" in result.stdout and "decode" in result.stdout
    line = one_error_line(invoke("advise", decoder, "--texts", tmp_path / "missing.txt"))
    assert "does not exist" in line


# --------------------------------------------------------------------------------------------------- doctor


def test_doctor_reports_this_machine():
    result = invoke("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["packages"]["numpy"] and "tensorrt-rtx" in report["packages"]
    backends = {b["name"]: b for b in report["backends"]}
    assert set(backends) >= {"ort-cpu", "ort-cuda", "ort-trt", "trt", "build rtx", "build trt10", "export"}
    assert backends["ort-cpu"]["ok"] == ("CPUExecutionProvider" in report["providers"])
    if not report["gpus"]:
        assert "NVIDIA GPU" in backends["trt"]["missing"] and not backends["build trt10"]["ok"]
    assert backends["build rtx"]["ok"] == HAS_RTX
    human = invoke("doctor")
    assert human.exit_code == 0 and "backends" in human.stdout and "packages" in human.stdout


def test_doctor_known_incompatible_combinations():
    from trtpipe.doctor import backends, find_problems

    base = {"onnxruntime": "1.32.0", "onnxruntime-gpu": None, "tensorrt": None, "tensorrt-rtx": None}
    assert find_problems(base, [], ["CPUExecutionProvider"], None) == []
    both = find_problems({**base, "onnxruntime-gpu": "1.32.0"}, [], ["CPUExecutionProvider"], None)
    assert both[0].severity == "error" and "share the `onnxruntime` module" in both[0].message
    no_gpu = find_problems({**base, "tensorrt": "10.13.0"}, [], ["CPUExecutionProvider"], None)
    assert any("no NVIDIA GPU" in p.message and "--flavour rtx" in p.fix for p in no_gpu)
    rtx_h100 = find_problems({**base, "tensorrt-rtx": "1.7.1", "cuda-python": "12.9"}, [H100], [], "12.6")
    messages = " | ".join(p.message for p in rtx_h100)
    assert "not on NVIDIA H100" in messages and "CUDAExecutionProvider" in messages
    no_cuda_python = find_problems({**base, "tensorrt": "10.13.0"}, [H100], ["CUDAExecutionProvider"], "12.6")
    assert any("cuda-python" in p.message and p.severity == "error" for p in no_cuda_python)
    too_new = find_problems({**base, "cuda-python": "13.0.1"}, [H100], ["CUDAExecutionProvider"], "12.4")
    assert any("built for CUDA 13" in p.message for p in too_new)
    rows = {b.name: b for b in backends({**base, "tensorrt": "10.13.0", "cuda-python": "12.9"}, [H100], [])}
    assert rows["trt"].ok and rows["build trt10"].ok and not rows["ort-cuda"].ok


# ------------------------------------------------------------------------------------------- CLI user errors


@pytest.mark.parametrize(
    "args, message",
    [
        (["--variant", "int8-qdq"], "trtpipe optimize"),
        (["--variant", "fp16"], "--precision fp16"),
        (["--variant", "fused"], "TensorRT builds the fp32, fp16 and int8-qdq variants"),
        (["--flavour", "tensorrt9"], "choose trt10"),
        (["--max-shapes", "input_ids:4x999"], "exceeds the model's 128 positions"),
        (["--max-shapes", "input_ids:4"], "rank 1"),
        (["--builder-level", "9"], "--builder-level must be 0-5"),
        (["--workspace", "-1"], "--workspace must be > 0"),
        (["--flavour", "rtx", "--compute-capabilities", "9.0"], "cannot target compute capability 9.0"),
        (["--flavour", "rtx", "--version-compatible"], "TensorRT 10 option"),
        (["--flavour", "rtx", "--timing-cache", "x.cache"], "no timing cache"),
        (["--profile-from", "nope.json"], "does not exist; write one with `trtpipe advise"),
        (["--profile-from", "p.json", "--max-shapes", "input_ids:1x8"], "not both"),
    ],
)
def test_build_user_errors_are_one_line(encoder, args, message):
    if "--flavour" not in args:
        args = [*args, "--flavour", "rtx"]
    if not HAS_RTX and "rtx" in args:
        args = [*args, "--print-trtexec"]  # plans without the library: the same checks run first
    line = one_error_line(invoke("build", encoder, *args))
    assert message in line


def test_trt10_without_gpu_or_tensorrt_names_the_missing_piece(encoder, monkeypatch):
    monkeypatch.setattr(plan_mod, "nvidia_gpus", lambda: ())
    monkeypatch.setattr(plan_mod, "module_available", lambda name: name == "tensorrt")
    line = one_error_line(invoke("build", encoder, "--flavour", "trt10"))
    assert "need an NVIDIA GPU" in line and "--flavour rtx" in line and "trtpipe doctor" in line
    monkeypatch.setattr(plan_mod, "module_available", lambda name: False)
    line = one_error_line(invoke("build", encoder, "--flavour", "trt10"))
    assert "needs TensorRT 10" in line and "trtpipe doctor" in line
    line = one_error_line(invoke("build", encoder))
    assert "no TensorRT to build with" in line and "trtpipe doctor" in line


def test_lint_and_advise_errors(encoder):
    line = one_error_line(invoke("lint", encoder, "--variant", "int8-qdq"))
    assert "trtpipe optimize" in line and "--precision int8-qdq" in line
    line = one_error_line(invoke("advise", encoder, "--max-batch", "0"))
    assert "--max-batch must be ≥ 1" in line
    line = one_error_line(invoke("build", encoder.parent / "no-such-bundle"))
    assert "no bundle at" in line


def test_build_defaults_on_an_empty_directory(tmp_path):
    line = one_error_line(invoke("build-defaults", "--out", tmp_path))
    assert "no bundles in" in line and "make export" in line


# ------------------------------------------------------------------------------------------------------ GPU


def _trt10_or_rtx() -> str:
    from trtpipe.runtime.trt.platform import nvidia_gpus

    if module_available("tensorrt"):
        return "trt10"
    if not HAS_RTX or nvidia_gpus()[0].compute_capability.split(".")[0] in ("9", "10"):
        pytest.skip("needs TensorRT 10 (pip install trtpipe[gpu]); TensorRT-RTX plans do not run on this GPU")
    return "rtx"


@pytest.mark.gpu
@pytest.mark.trt
@pytest.mark.parametrize("variant", ["fp32", "fp16"])
def test_gpu_build_and_parity_vs_torch(make_bundle, tmp_path, variant):
    from trtpipe.parity import check_parity

    path = private_copy(make_bundle("tiny-bert", "classify"), tmp_path)
    if variant not in Bundle.load(path).variants:
        made = invoke("optimize", path, "--precision", variant, "--force", "--quiet")
        if made.exit_code != 0:
            pytest.skip(f"could not make the {variant} variant: {made.output.strip()[:200]}")
    build_engine(path, BuildOptions(variant=variant, flavour=_trt10_or_rtx()))
    kwargs = {"atol": 0.2, "rtol": 5e-2} if variant == "fp16" else {}
    report = check_parity(path, backend="trt", variant=variant, samples=8, store=False, **kwargs)
    assert report.passed, report.failures()
    if variant == "fp32":
        assert report.atol == 1e-3


@pytest.mark.gpu
@pytest.mark.trt
def test_gpu_greedy_decode_matches_ort_token_for_token(make_bundle, tmp_path):
    from trtpipe.runtime.generate import Generator

    path = private_copy(make_bundle("tiny-gpt2", "generate"), tmp_path)
    build_engine(path, BuildOptions(flavour=_trt10_or_rtx(), tf32=False))
    prompts = ["The list", "Python is a programming language that"]
    reference = Generator(path, backend="ort-cpu", kv="pingpong").generate(prompts, max_new_tokens=24)
    engine = Generator(path, backend="trt").generate(prompts, max_new_tokens=24)
    assert [c.ids for c in engine] == [c.ids for c in reference]


@pytest.mark.gpu
def test_gpu_ort_cuda_decoder_matches_cpu(make_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        pytest.skip("needs onnxruntime-gpu")
    from trtpipe.runtime.generate import Generator
    from trtpipe.runtime.ort_cuda import OrtCudaDecoder

    path = make_bundle("tiny-gpt2", "generate")
    reference = Generator(path, backend="ort-cpu", kv="pingpong")
    on_gpu = Generator(path, backend="ort-cpu", kv="pingpong")
    on_gpu.runner = OrtCudaDecoder.from_bundle(on_gpu.bundle)
    prompts = ["The list", "A longer prompt about the standard library"]
    want = reference.generate(prompts, max_new_tokens=16)
    got = on_gpu.generate(prompts, max_new_tokens=16)
    assert [c.ids for c in got] == [c.ids for c in want]
    assert np.isfinite(got[0].stats["kv_bytes"])
