"""The OpenVINO backend (`ov`): ONNX Runtime's answers on every encoder task and family, GPT-2 greedy token for
token, the variants it runs within their tolerances, its settings, threads, and one-line refusals."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
from conftest import ENCODER_TASKS, assert_close
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime import BACKENDS, Bundle, Generator, UserError, kv, load_pipeline, open_session
from trtpipe.runtime.text import TextEncoder

openvino = pytest.importorskip("openvino")

PRESETS = ("tiny-bert", "tiny-albert", "tiny-roberta", "tiny-distilbert")
TEXTS = [
    "The film was a delight from start to finish.",
    "Terrible service, cold food.",
    "Ada Lovelace wrote the first program in London.",
    "Cats sleep for most of the day.",
]
PROMPTS = ["The list of", "def main", "Hello there, how are"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def feeds_for(bundle: Bundle) -> dict:
    """One padded batch of real text (qa: question + context pairs) in the bundle's own inputs."""
    encoder = TextEncoder(bundle)
    texts = list(TEXTS)
    if bundle.task == "fill-mask":
        mask = encoder.info.get("mask_token", "[MASK]")
        texts = [f"{text} It was {mask}." for text in texts]
    pairs = list(reversed(texts)) if bundle.task == "qa" else None
    return encoder.collate(encoder.encode(texts, pairs)).feeds


def same_answers(got, expected, atol: float = 1e-4, where: str = "answer") -> None:
    """Labels, words, spans and tokens equal; scores and vectors within atol."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), where
        for key in expected:
            same_answers(got[key], expected[key], atol, f"{where}.{key}")
    elif isinstance(expected, (list, tuple)) and not (expected and isinstance(expected[0], float)):
        assert len(got) == len(expected), where
        for i, (a, b) in enumerate(zip(got, expected)):
            same_answers(a, b, atol, f"{where}[{i}]")
    elif isinstance(expected, (float, np.ndarray)):
        assert_close(got, expected, atol=atol, rtol=atol, what=where)
    else:
        assert got == expected, where


def task_answers(pipe, task: str):
    bundle = pipe.bundle
    if task == "embed":
        return pipe.embed(TEXTS)
    if task == "classify":
        return pipe.classify(TEXTS, top_k=None)
    if task == "ner":
        return pipe.ner(TEXTS)
    if task == "qa":
        return pipe.qa(question=["Who wrote the first program?"] * 2, context=TEXTS[2:4])
    mask = TextEncoder(bundle).info.get("mask_token", "[MASK]")
    return pipe.fill_mask([f"Paris is the {mask} of France.", f"The {mask} sat on the mat."], top_k=3)


# ------------------------------------------------------------------------------------- encoders at fp32


def test_ov_is_a_backend_with_the_session_contract(make_bundle):
    assert "ov" in BACKENDS
    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    session = open_session(bundle, backend="ov", threads=1)
    assert session.backend == "ov" and session.variant == "fp32"
    assert session.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert session.output_names == ("last_hidden_state", "sentence_embedding")
    # f32 whatever the CPU's default (bf16 where the CPU has it), one thread as asked, latency first
    compiled = session.compiled
    assert compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert str(compiled.get_property("PERFORMANCE_HINT")) in ("LATENCY", "PerformanceMode.LATENCY")
    outputs = session.run(feeds_for(bundle))
    assert list(outputs) == list(session.output_names)
    assert all(isinstance(v, np.ndarray) for v in outputs.values())
    session.close()


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_ov_matches_ort_cpu_on_every_task_and_family(make_bundle, preset, task):
    bundle = Bundle.load(make_bundle(preset, task))
    feeds = feeds_for(bundle)
    expected = open_session(bundle, threads=2).run(feeds)
    got = open_session(bundle, backend="ov", threads=2).run(feeds)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].dtype == expected[name].dtype, name
        assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, what=f"{preset} {task} {name}")
    ours, theirs = load_pipeline(bundle, backend="ov"), load_pipeline(bundle)
    same_answers(task_answers(ours, task), task_answers(theirs, task), where=f"{preset} {task}")


@pytest.mark.parametrize("family", ["xlm-roberta", "electra", "mpnet", "modernbert", "deberta-v2"])
def test_the_other_families_embed_like_ort_cpu_or_are_refused_in_one_line(make_bundle, family):
    """OpenVINO 2026.4's CPU plugin cannot compile DeBERTa-v2's export (an If of dynamic rank): refused, naming
    ort-cpu. Every other family gives ONNX Runtime's tensors."""
    bundle = Bundle.load(make_bundle(f"tiny-{family}", "embed"))
    feeds = feeds_for(bundle)
    expected = open_session(bundle).run(feeds)
    try:
        session = open_session(bundle, backend="ov")
    except UserError as exc:
        assert family == "deberta-v2" and "\n" not in str(exc), exc
        assert "cannot run model.onnx" in str(exc) and "use --backend ort-cpu" in str(exc)
        return
    got = session.run(feeds)
    for name in expected:
        assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, what=f"{family} {name}")


def test_run_is_thread_safe(make_bundle):
    """Several threads on one session, each with its own batch size and text: each gets its serial answer."""
    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    session = open_session(bundle, backend="ov", threads=1)
    encoder = TextEncoder(bundle)
    batches = [encoder.collate(encoder.encode(TEXTS[: 1 + i % 4])).feeds for i in range(8)]
    serial = [session.run(f)["sentence_embedding"] for f in batches]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                results[i] = session.run(batches[i])["sentence_embedding"]
                assert_close(results[i], serial[i], atol=1e-6, rtol=1e-6, what=f"thread {i}")
        except BaseException as exc:  # collected: an assert in a thread does not fail the test by itself
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 8


def test_openvino_is_imported_only_when_the_ov_backend_opens(make_bundle):
    """With torch, transformers, onnx and optimum blocked: the runtime imports without openvino, ort-cpu answers
    without it, and the ov backend answers the same."""
    path = make_bundle("tiny-bert", "classify")
    code = textwrap.dedent(f"""
        import sys, importlib.abc
        BLOCKED = ("torch", "transformers", "onnx", "optimum", "onnxscript", "sentence_transformers")
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked for this test: " + name)
        sys.meta_path.insert(0, Block())
        import trtpipe.runtime as rt
        ort = rt.load_pipeline({str(path)!r}).classify(["it works"])[0]["label"]
        assert "openvino" not in sys.modules
        ov = rt.load_pipeline({str(path)!r}, backend="ov").classify(["it works"])[0]["label"]
        assert "openvino" in sys.modules and ov == ort, (ov, ort)
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print(ov)
    """)
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("NEGATIVE", "POSITIVE")


# ------------------------------------------------------------------------------------------------- GPT-2


def test_greedy_generation_is_token_exact_against_ort_cpu(make_bundle):
    path = make_bundle("tiny-gpt2", "generate")
    ours = Generator(path, backend="ov", threads=2)
    assert not ours.inplace and ours.variant == "fp32"  # the ping-pong interop graph
    for kv_mode in ("auto", "pingpong"):  # ORT's in-place twin and its ping-pong graph give the same ids
        theirs = Generator(path, threads=2, kv=kv_mode)
        for prompt in PROMPTS:
            got = ours.generate(prompt, max_new_tokens=16)[0]
            expected = theirs.generate(prompt, max_new_tokens=16)[0]
            assert got.ids == expected.ids and got.text == expected.text, (kv_mode, prompt)
    batch = ours.generate(PROMPTS, max_new_tokens=8)  # left-padded batch, mixed lengths
    alone = [ours.generate(p, max_new_tokens=8)[0].ids for p in PROMPTS]
    assert [c.ids for c in batch] == alone


def test_the_in_place_kv_graph_is_refused_on_ov(make_bundle):
    path = make_bundle("tiny-gpt2", "generate")
    with pytest.raises(UserError, match=r"runs on ONNX Runtime only.*--backend ov runs: fp32") as caught:
        open_session(path, backend="ov", variant="kv-inplace")
    assert "\n" not in str(caught.value) and "kv-inplace" not in str(caught.value).split("runs: ")[1]
    with pytest.raises(UserError, match="in-place KV graph runs on ONNX Runtime only.*kv=pingpong"):
        Generator(path, backend="ov", kv="inplace")


# ------------------------------------------------------------------------------------------ the variants


@pytest.fixture(scope="module")
def optimized(make_bundle, tmp_path_factory):
    """Private copies of tiny-bert embed and tiny-gpt2 with every precision (force: the toys may miss a gate)."""
    from trtpipe.optimize.variants import optimize_bundle

    root = tmp_path_factory.mktemp("ov-optimized")
    out = {}
    for preset, task in (("tiny-bert", "embed"), ("tiny-gpt2", "generate")):
        path = root / f"{preset}-{task}"
        shutil.copytree(make_bundle(preset, task), path)
        with warnings.catch_warnings():  # the gate's own notes (texts truncated for calibration)
            warnings.simplefilter("ignore")
            for precision in ("fused", "fp16", "int8", "int8-qdq", "int8-wo", "int4"):
                optimize_bundle(path, precision, force=True)
        out[preset] = Bundle.load(path)
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


# fp32-exact rewrites match at the fp32 tolerance; the lossy ones within their gates (DESIGN §7): each backend
# rounds fp16 / int8 activations its own way (ORT computes fp16 where it has kernels, OpenVINO decompresses the
# fp16 weights and computes in f32)
EXACT = ("fused", "int8")
LOSSY = ("fp16", "int8-qdq", "int8-wo", "int4")


@pytest.mark.parametrize("variant", EXACT + LOSSY)
def test_encoder_variants_match_ort_cpu(optimized, variant):
    bundle = optimized["tiny-bert"]
    feeds = feeds_for(bundle)
    expected = open_session(bundle, variant=variant).run(feeds)
    got = open_session(bundle, backend="ov", variant=variant).run(feeds)
    # fp16's Casts renamed the compiled outputs; the session keeps the graph's names
    assert list(got) == list(expected)
    if variant in EXACT:
        for name in expected:
            assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, what=f"{variant} {name}")
        return
    cos = _cosines(got["sentence_embedding"], expected["sentence_embedding"])
    floor = (0.999, 0.999) if variant == "fp16" else (0.99, 0.98)  # (mean, min)
    assert cos.mean() >= floor[0] and cos.min() >= floor[1], (variant, cos)


@pytest.mark.parametrize("variant", EXACT + LOSSY)
def test_decoder_variants_match_ort_cpu(optimized, variant):
    bundle = optimized["tiny-gpt2"]
    model = bundle.model
    encoder = TextEncoder(bundle)
    prompts = [enc.ids for enc in encoder.encode(TEXTS + PROMPTS)]
    feeds = kv.left_padded(prompts, 0)
    layers, heads, head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
    feeds.update(kv.empty_past(layers, heads, head_dim, batch=len(prompts)))
    expected = open_session(bundle, variant=variant).run(feeds)
    got = open_session(bundle, backend="ov", variant=variant).run(feeds)
    assert list(got) == list(expected)
    if variant in EXACT:
        for name in expected:
            assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4, what=f"{variant} {name}")
        ours = Generator(bundle, backend="ov", variant=variant).generate(PROMPTS, 12)
        theirs = Generator(bundle, variant=variant, kv="pingpong").generate(PROMPTS, 12)
        assert [c.ids for c in ours] == [c.ids for c in theirs]
        return
    logits, reference = got["logits"][:, -1], expected["logits"][:, -1]
    if variant == "fp16":
        assert_close(logits, reference, atol=0.2, rtol=5e-2, what="fp16 logits")
    top1 = (logits.argmax(-1) == reference.argmax(-1)).mean()
    assert top1 >= 0.97 and _cosines(logits, reference).min() >= 0.99, (variant, top1)


def test_benchmark_plans_every_variant_ov_runs(optimized):
    from trtpipe.benchmark.run import _variants_for, backend_available

    bundle = optimized["tiny-gpt2"]
    assert backend_available("ov", bundle) is None
    every = ["fp32", "fused", "fp16", "int8", "int8-qdq", "int8-wo", "int4"]  # all but the in-place KV twins
    assert _variants_for(bundle, "ov", ["all"]) == every
    assert "int8" not in _variants_for(bundle, "ort-cuda", ["all"])  # ORT's CPU-only ops stay off the GPU


def _has_bf16() -> bool:
    from trtpipe.benchmark.env import isa_flags

    return any(flag in isa_flags() for flag in ("avx512_bf16", "amx_bf16"))


def test_the_bf16_variant_is_openvinos_bf16_compute_of_model_onnx_gated(make_bundle, copy_bundle, tmp_path):
    """optimize --precision bf16: no new file, the fp32 file at bf16 on ov (about 2x on a bf16 CPU, measured in
    bench/openvino_peers.py), within the lossy gate; other backends and GPT-2 refuse it in one line. On a CPU
    without bf16 arithmetic the variant is refused (OpenVINO would compile the hint at f32)."""
    from trtpipe.optimize.variants import optimize_bundle

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    files_before = sorted(p.name for p in path.iterdir())
    if not _has_bf16():
        with pytest.raises(UserError, match="no bf16 arithmetic"):
            optimize_bundle(path, "bf16")
        assert "bf16" not in Bundle.load(path).variants
        return
    entry = optimize_bundle(path, "bf16")
    bundle = Bundle.load(path)
    assert sorted(p.name for p in path.iterdir()) == files_before  # the manifest changed, no file was added
    assert (
        entry["file"] == bundle.variants["fp32"]["file"]
        and entry["sha256"] == bundle.variants["fp32"]["sha256"]
    )
    assert entry["compute"] == "bf16" and entry["backends"] == ["ov"] and entry["gate"]["verdict"] == "pass"
    assert entry["gate"]["backend"] == "ov"
    session = open_session(bundle, backend="ov", variant="bf16")
    assert session.precision == "bf16" and open_session(bundle, backend="ov").precision == "f32"
    feeds = feeds_for(bundle)
    got, expected = session.run(feeds), open_session(bundle).run(feeds)
    cos = _cosines(got["sentence_embedding"], expected["sentence_embedding"])
    assert cos.min() >= 0.98 and not np.allclose(
        got["sentence_embedding"], expected["sentence_embedding"], atol=1e-6
    )
    same = load_pipeline(bundle, backend="ov", variant="bf16").embed(TEXTS)
    assert _cosines(same, load_pipeline(bundle).embed(TEXTS)).min() >= 0.98
    with pytest.raises(
        UserError, match="variant bf16 is bf16 compute of model.onnx on ov only; use --backend ov"
    ):
        open_session(bundle, variant="bf16")
    result = invoke("run", path, "hello", "--variant", "bf16")
    assert result.exit_code == 2 and "use --backend ov" in result.output and "Traceback" not in result.output
    for extra, message in (
        ([], "variant bf16 runs on ov only; use --runtime ov"),
        (["--backend", "onnxruntime"], "serve it with --backend python --runtime ov"),
    ):
        result = invoke("triton", path, "--variant", "bf16", *extra, "--out", tmp_path / "bad", "-q")
        assert result.exit_code == 2 and message in result.output, result.output
    result = invoke("triton", path, "--variant", "bf16", "--runtime", "ov", "--out", tmp_path / "repo", "-q")
    assert result.exit_code == 0, result.output

    from trtpipe.benchmark.run import _variants_for

    assert "bf16" in _variants_for(bundle, "ov", ["all"]) and "bf16" not in _variants_for(
        bundle, "ort-cpu", ["all"]
    )
    with pytest.raises(UserError, match="already has the bf16 variant"):
        optimize_bundle(path, "bf16")
    gpt2 = copy_bundle(make_bundle("tiny-gpt2", "generate"))
    with pytest.raises(UserError, match="bf16 is OpenVINO's compute of an encoder's graph"):
        optimize_bundle(gpt2, "bf16")


# ---------------------------------------------------------------------------------------- bad inputs


def test_bad_feeds_are_user_errors(make_bundle):
    bundle = Bundle.load(make_bundle("tiny-bert", "classify"))
    session = open_session(bundle, backend="ov")
    good = feeds_for(bundle)
    cases = [
        ({**good, "input_ids": good["input_ids"].astype(np.float32)}, "dtype float32, expected int64"),
        ({**good, "input_ids": good["input_ids"][0]}, "expected rank 2"),
        ({**good, "input_ids": good["input_ids"] + 10**6}, "outside the vocabulary"),
        ({k: v for k, v in good.items() if k != "attention_mask"}, "missing input"),
        ({**good, "attention_mask": good["attention_mask"][:, :3]}, "inputs must agree"),
    ]
    for feeds, message in cases:
        with pytest.raises(UserError, match=message):
            session.run(feeds)


def test_unknown_variant_missing_openvino_and_a_corrupt_file(make_bundle, copy_bundle, monkeypatch):
    path = make_bundle("tiny-bert", "classify")
    with pytest.raises(UserError, match="has no variant 'int4'.*trtpipe optimize"):
        open_session(path, backend="ov", variant="int4")
    broken = copy_bundle(path)
    model = broken / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 3])
    with pytest.raises(UserError, match="does not match its sha256"):
        open_session(broken, backend="ov")
    with pytest.raises(UserError, match="OpenVINO could not read.*re-export") as caught:
        open_session(broken, backend="ov", verify=False)
    assert "\n" not in str(caught.value)
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed: `import openvino` fails
    with pytest.raises(UserError, match=r"openvino is not installed.*pip install trtpipe\[ov\]"):
        open_session(path, backend="ov")
    from trtpipe.runtime.ov import openvino_info

    assert openvino_info() is None


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_runs_on_ov_and_refuses_in_one_line(make_bundle, copy_bundle):
    path = make_bundle("tiny-bert", "classify")
    gpt2 = make_bundle("tiny-gpt2", "generate")
    ours = invoke("run", path, TEXTS[0], "--backend", "ov", "--json")
    theirs = invoke("run", path, TEXTS[0], "--json")
    assert ours.exit_code == 0 and theirs.exit_code == 0, ours.output
    assert ours.stdout.count('"label"') == theirs.stdout.count('"label"') >= 1
    for args, message in (
        (["run", path, "x", "--backend", "ov", "--variant", "int4"], "has no variant 'int4'"),
        (["run", path, "x", "--backend", "openvino"], "choose one of: ort-cpu, ort-cuda, ort-trt, trt, ov"),
        (["generate", gpt2, "x", "--backend", "ov", "--variant", "kv-inplace"], "runs on ONNX Runtime only"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output
        assert len([line for line in result.output.splitlines() if line.startswith("error:")]) == 1
    generated = invoke("generate", gpt2, "The list", "--backend", "ov", "-q")
    assert generated.exit_code == 0, generated.output
    checked = copy_bundle(path)
    parity = invoke("parity", checked, "--backend", "ov")
    assert parity.exit_code == 0, parity.output
    verdict = Bundle.load(checked).variants["fp32"]["parity"]["ov"]
    assert verdict["verdict"] == "pass" and verdict["atol"] == 1e-4


def test_doctor_shows_openvino_and_its_cpu(make_bundle):
    import json

    result = invoke("doctor", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["packages"]["openvino"] == openvino.__version__.split("-")[0]
    backends = {b["name"]: b for b in report["backends"]}
    assert backends["ov"]["ok"] and backends["ov"]["install"] == "pip install trtpipe[ov]"
    info = report["openvino"]
    assert "CPU" in info["devices"] and "FP32" in info["capabilities"]
    assert info["default_precision"] in ("f32", "bf16", "f16")
    assert "OpenVINO " in invoke("doctor").stdout
