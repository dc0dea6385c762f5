"""Scale-out on Triton: repositories from bundles, configs checked against Triton's own schema, bad input, the
Python-backend model in process, and a real tritonserver on loopback answering like the runtime under load."""

from __future__ import annotations

import importlib
import json
import os
import queue
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_close
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime import Generator, Sampling, UserError, load_pipeline
from trtpipe.runtime.bundle import Bundle
from trtpipe.runtime.store import write_manifest
from trtpipe.serving import InvalidConfig, RepoOptions, validate_config, write_repository
from trtpipe.serving.config import KNOWN_BACKENDS, KNOWN_PLATFORMS

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()
TEXTS = [
    "The film was a delight from start to finish.",
    "Terrible service, cold food.",
    "An average day at the office",
    "Stock prices fell sharply on Monday.",
    "Cats sleep for most of the day.",
]
PROMPTS = ["The list", "Hello there, how", "def main"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def read_config(path: Path):
    return validate_config(path.read_text(), expected_name=path.parent.name)


@pytest.fixture(scope="module")
def classify(make_bundle):
    return make_bundle("tiny-bert", "classify")


@pytest.fixture(scope="module")
def embed(make_bundle):
    return make_bundle("tiny-bert", "embed")


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


LONG = (
    2000  # tokens a long stream asks for (long_gpt2, conftest.py): seconds on Triton, so a client can go away
)


# ------------------------------------------------------------------------------------------ configs / schema


def test_python_repository_layout_and_configs_parse_with_tritons_schema(tmp_path, classify, embed, gpt2):
    repo = tmp_path / "repo"
    result = invoke("triton", classify, embed, gpt2, "--out", repo, "--max-batch", 16, "--instances", 2, "-q")
    assert result.exit_code == 0, result.output
    models = {p.name for p in repo.iterdir() if p.is_dir()}
    assert models == {"tiny-bert-classify", "tiny-bert-embed", "tiny-gpt2-generate"}
    pb = importlib.import_module("tritonclient.grpc.model_config_pb2")
    for name in models:
        config = read_config(repo / name / "config.pbtxt")
        assert config.backend == "python" and config.backend in KNOWN_BACKENDS and not config.platform
        assert config.max_batch_size == 16
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
        assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert config.instance_group[0].count == 2
        assert not config.model_transaction_policy.decoupled
        assert (repo / name / "1" / "model.py").is_file()
        copied = Bundle.load(repo / name / "1" / "bundle")  # the runtime can load the copy, hashes and all
        copied.model_path()
        assert config.parameters["task"].string_value == copied.task
    classify_cfg = read_config(repo / "tiny-bert-classify" / "config.pbtxt")
    inputs = {i.name: i for i in classify_cfg.input}
    assert inputs["text"].data_type == pb.TYPE_STRING and list(inputs["text"].dims) == [1]
    assert inputs["text_pair"].optional
    outputs = {o.name: list(o.dims) for o in classify_cfg.output}
    assert outputs == {"label": [1], "score": [1], "scores": [2]}
    embed_cfg = read_config(repo / "tiny-bert-embed" / "config.pbtxt")
    assert [(o.name, list(o.dims)) for o in embed_cfg.output] == [("embedding", [32])]
    record = json.loads((repo / "trtpipe-repository.json").read_text())
    assert record["models"]["tiny-gpt2-generate"]["task"] == "generate"
    assert record["models"]["tiny-bert-embed"]["bundle"] == str(embed.resolve())


def test_stream_writes_a_decoupled_generation_model(tmp_path, gpt2, embed):
    repo = tmp_path / "repo"
    result = invoke("triton", f"gen={gpt2}", embed, "--out", repo, "--stream", "-q")
    assert result.exit_code == 0, result.output
    assert read_config(repo / "gen" / "config.pbtxt").model_transaction_policy.decoupled
    assert not read_config(repo / "tiny-bert-embed" / "config.pbtxt").model_transaction_policy.decoupled


def test_onnxruntime_backend_config_comes_from_the_manifest(tmp_path, classify, embed):
    repo = tmp_path / "repo"
    result = invoke(
        "triton", classify, embed, "--backend", "onnxruntime", "--out", repo, "--no-dynamic-batching", "-q"
    )
    assert result.exit_code == 0, result.output
    pb = importlib.import_module("tritonclient.grpc.model_config_pb2")
    config = read_config(repo / "tiny-bert-embed" / "config.pbtxt")
    assert (config.backend, config.platform) == ("onnxruntime", "onnxruntime_onnx")
    assert KNOWN_PLATFORMS[config.platform] == config.backend
    assert config.default_model_filename == "model.onnx"
    assert not config.HasField("dynamic_batching")
    assert config.max_batch_size == 8
    assert {i.name: (i.data_type, list(i.dims)) for i in config.input} == {
        name: (pb.TYPE_INT64, [-1]) for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert {o.name: list(o.dims) for o in config.output} == {
        "last_hidden_state": [-1, 32],
        "sentence_embedding": [32],
    }
    assert (repo / "tiny-bert-embed" / "1" / "model.onnx").read_bytes() == (embed / "model.onnx").read_bytes()
    logits = read_config(repo / "tiny-bert-classify" / "config.pbtxt").output[0]
    assert (logits.name, logits.data_type, list(logits.dims)) == ("logits", pb.TYPE_FP32, [2])


def _add_engine(bundle_dir: Path, name: str, flavour: str, write_file: bool = True, **extra) -> None:
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    path = bundle_dir / "engines" / name
    if write_file:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"not a real plan " + flavour.encode())
    manifest["engines"][f"engines/{name}"] = {"flavour": flavour, "variant": "fp32", **extra}
    write_manifest(bundle_dir, manifest)


def test_tensorrt_backend_serves_the_trt10_plan_on_gpus(tmp_path, copy_bundle, classify):
    bundle = copy_bundle(classify)
    _add_engine(bundle, "fp32.rtx-sm89.plan", "rtx")
    _add_engine(
        bundle,
        "fp32.trt10-h100-sm90.plan",
        "trt10",
        profiles=[{"input_ids": {"min": [1, 1], "opt": [8, 64], "max": [32, 128]}}],
    )
    repo = tmp_path / "repo"
    result = invoke("triton", bundle, "--backend", "tensorrt", "--out", repo, "--max-batch", 32, "-q")
    assert result.exit_code == 0, result.output
    pb = importlib.import_module("tritonclient.grpc.model_config_pb2")
    config = read_config(repo / bundle.name / "config.pbtxt")
    assert (config.backend, config.platform) == ("tensorrt", "tensorrt_plan")
    assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_GPU
    assert config.default_model_filename == "model.plan"
    assert (repo / bundle.name / "1" / "model.plan").read_bytes().endswith(b"trt10")
    # the engine's profile caps the batch
    result = invoke("triton", bundle, "--backend", "tensorrt", "--out", tmp_path / "r2", "--max-batch", 64)
    assert result.exit_code == 2 and "--max-batch 32" in result.output


def test_validate_config_rejects_what_triton_would(classify):
    good = (
        'name: "m" backend: "python" max_batch_size: 4 input { name: "text" data_type: TYPE_STRING dims: 1 } '
        'output { name: "y" data_type: TYPE_FP32 dims: -1 } instance_group { count: 1 kind: KIND_CPU }'
    )
    assert validate_config(good, expected_name="m").max_batch_size == 4
    bad = {
        'name: "m" backend: "python" max_batch_size: 4 inputs { name: "x" }': "not a Triton ModelConfig",
        good.replace("TYPE_STRING", "TYPE_TEXT"): "not a Triton ModelConfig",
        good.replace('"python"', '"onnx"'): "unknown backend",
        good.replace(
            'backend: "python"', 'backend: "python" platform: "tensorrt_plan"'
        ): "belongs to backend",
        good + ' platform: "pytorch_plan"': "unknown platform",
        good.replace("dims: -1", "dims: 0"): "invalid dims",
        good.replace(
            "max_batch_size: 4", "max_batch_size: 4 dynamic_batching { preferred_batch_size: 8 }"
        ): "preferred",
        good.replace("max_batch_size: 4", "max_batch_size: 0 dynamic_batching { }"): "max_batch_size ≥ 1",
        good.replace('"python"', '"tensorrt"'): "GPUs only",
        good.replace('"python"', '"onnxruntime"')
        + " model_transaction_policy { decoupled: true }": "decoupled",
        good.replace('name: "y"', 'name: "text" } output { name: "text"'): "duplicate output",
    }
    for text, message in bad.items():
        with pytest.raises(InvalidConfig, match=message):
            validate_config(text)
    with pytest.raises(InvalidConfig, match="differs from its directory"):
        validate_config(good, expected_name="other")


# ----------------------------------------------------------------------------------------------- bad input


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize(
    "case, message",
    [
        ("gpt2-onnxruntime", "--backend python"),
        ("gpt2-tensorrt", "--backend python"),
        ("exists", "--overwrite"),
        ("no-engine", "trtpipe build"),
        ("rtx-engine", "TensorRT 10"),
        ("missing-engine-file", "trtpipe build"),
        ("same-name", "NAME=BUNDLE"),
        ("stream-without-gpt2", "--stream applies to GPT-2"),
        ("bad-max-batch", "--max-batch"),
        ("no-bundle", "trtpipe export"),
        ("out-is-a-bundle", "would replace bundle"),
        ("bad-variant", "trtpipe optimize"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    case, message, tmp_path, copy_bundle, classify, embed, gpt2
):
    repo = tmp_path / "out" / "repo"
    repo.parent.mkdir()
    args: list = ["--out", repo]
    if case == "gpt2-onnxruntime":
        args = [gpt2, "--backend", "onnxruntime", *args]
    elif case == "gpt2-tensorrt":
        args = [gpt2, "--backend", "tensorrt", *args]
    elif case == "exists":
        repo.mkdir()
        (repo / "keep.txt").write_text("mine")
        args = [embed, *args]
    elif case == "no-engine":
        args = [embed, "--backend", "tensorrt", *args]
    elif case == "rtx-engine":
        bundle = copy_bundle(embed)
        _add_engine(bundle, "fp32.rtx-sm89.plan", "rtx")
        args = [bundle, "--backend", "tensorrt", *args]
    elif case == "missing-engine-file":
        bundle = copy_bundle(embed)
        _add_engine(bundle, "fp32.trt10-a100-sm80.plan", "trt10", write_file=False)
        args = [bundle, "--backend", "tensorrt", *args]
    elif case == "same-name":
        twin = tmp_path / "elsewhere" / embed.name
        shutil.copytree(embed, twin)
        args = [embed, twin, *args]
    elif case == "stream-without-gpt2":
        args = [embed, "--stream", *args]
    elif case == "bad-max-batch":
        args = [embed, "--max-batch", 0, *args]
    elif case == "no-bundle":
        args = [tmp_path / "nope", *args]
    elif case == "out-is-a-bundle":
        bundle = copy_bundle(embed)
        args = [bundle, "--out", bundle, "--overwrite"]
    elif case == "bad-variant":
        args = [embed, "--variant", "int8", *args]
    before = {p: p.stat().st_mtime_ns for p in repo.rglob("*")} if repo.exists() else None
    result = invoke("triton", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output
    if before is None:
        assert not repo.exists()
    else:
        assert {p: p.stat().st_mtime_ns for p in repo.rglob("*")} == before
    assert _leftovers(repo.parent) == []


def test_a_repository_path_the_python_backend_cannot_load_from_is_refused(tmp_path, embed):
    odd = tmp_path / "my models (v2)"
    result = invoke("triton", embed, "--out", odd)
    assert result.exit_code == 2 and "through a shell" in result.output and "'('" in result.output
    assert not odd.exists()
    write_repository([str(embed)], tmp_path / "fine_v2-1", RepoOptions())  # letters, digits, _ - . are fine


def test_overwrite_replaces_and_an_empty_dir_is_fine(tmp_path, embed, classify):
    repo = tmp_path / "repo"
    repo.mkdir()  # existing but empty: no --overwrite needed
    assert invoke("triton", embed, "--out", repo, "-q").exit_code == 0
    result = invoke("triton", classify, "--out", repo, "--overwrite", "-q")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in repo.iterdir()) == ["tiny-bert-classify", "trtpipe-repository.json"]
    assert _leftovers(tmp_path) == []


def test_a_failure_while_writing_leaves_nothing_half_written(tmp_path, embed, classify, monkeypatch):
    from trtpipe.serving import repository

    repo = tmp_path / "repo"
    write_repository([str(embed)], repo, RepoOptions())
    before = sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))
    calls = []
    link_or_copy = repository._link_or_copy

    def failing_copy(source, target):
        calls.append(source)
        if len(calls) == 3:
            raise OSError("disk full")
        link_or_copy(source, target)

    monkeypatch.setattr(repository, "_link_or_copy", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        write_repository([str(classify)], repo, RepoOptions(), overwrite=True)
    assert sorted(str(p.relative_to(repo)) for p in repo.rglob("*")) == before  # the old repository, intact
    with pytest.raises(OSError):
        calls.clear()
        write_repository([str(classify)], tmp_path / "fresh", RepoOptions())
    assert not (tmp_path / "fresh").exists()
    assert _leftovers(tmp_path) == []


def test_the_launcher_refuses_numpy_2_naming_the_fix(monkeypatch):
    import importlib.metadata

    from trtpipe.serving import server

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.1.0")
    with pytest.raises(UserError, match="numpy<2"):
        server.find_triton()


# --------------------------------------------------------------------- the Python-backend model, in process


class FakeTensor:
    def __init__(self, name, array):
        self._name, self._array = name, np.asarray(array)

    def name(self):
        return self._name

    def as_numpy(self):
        return self._array


class FakeError(Exception):
    INVALID_ARG, INTERNAL, UNAVAILABLE = 3, 13, 14

    def __init__(self, message, code=None):
        super().__init__(message)
        self.code = code

    def message(self):
        return self.args[0]


class FakeResponse:
    def __init__(self, output_tensors=(), error=None):
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


class FakeSender:
    def __init__(self):
        self.sent = []
        self.cancelled = False

    def send(self, response=None, flags=0):
        self.sent.append((response, flags))

    def is_cancelled(self):
        return self.cancelled


class FakeRequest:
    def __init__(self, **inputs):
        self.inputs = {k: FakeTensor(k, v) for k, v in inputs.items()}
        self.sender = FakeSender()

    def get_response_sender(self):
        return self.sender


def _texts(*texts):
    return np.array([[t.encode()] for t in texts], dtype=np.object_)


@pytest.fixture
def python_model(monkeypatch):
    """trtpipe.serving.python_model imported against a stand-in for Triton's triton_python_backend_utils."""
    fake = types.ModuleType("triton_python_backend_utils")
    fake.Tensor, fake.TritonError, fake.InferenceResponse = FakeTensor, FakeError, FakeResponse
    fake.get_input_tensor_by_name = lambda request, name: request.inputs.get(name)
    fake.Logger = types.SimpleNamespace(log_info=print, log_warn=print, log_error=print)
    fake.TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    monkeypatch.delitem(sys.modules, "trtpipe.serving.python_model", raising=False)
    module = importlib.import_module("trtpipe.serving.python_model")
    yield module
    sys.modules.pop("trtpipe.serving.python_model", None)


def test_auto_threads_give_a_real_model_every_cpu_and_a_tiny_one_half(
    python_model, monkeypatch, tmp_path, classify, capsys
):
    tio = importlib.import_module("trtpipe.serving.triton_io")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    minilm = {"hidden_size": 384, "num_layers": 6, "intermediate_size": 1536}  # manifest["model"] summaries
    tiny = {"hidden_size": 32, "num_layers": 2, "intermediate_size": 64}
    gpt2 = {"hidden_size": 768, "num_layers": 12}
    assert tio.flops_per_token(minilm) == 2 * 6 * (4 * 384**2 + 2 * 384 * 1536)  # ≈ 21 MFLOP
    assert tio.flops_per_token(gpt2) == 2 * 12 * 12 * 768**2  # no intermediate_size → 4 × hidden
    assert tio.flops_per_token(tiny) < tio.LIGHT_FLOPS_PER_TOKEN < tio.flops_per_token(minilm)
    two = {"instance_group": [{"count": 2}]}
    assert tio.threads("auto", {}) == 8 and tio.threads("auto", two) == 4
    assert tio.threads("auto", {}, light=True) == 4 and tio.threads("auto", two, light=True) == 2
    assert tio.threads("3", two) == 3 and tio.threads("", {}) is None
    write_repository([str(classify)], tmp_path / "repo", RepoOptions())
    for light_below, threads in ((tio.LIGHT_FLOPS_PER_TOKEN, 4), (1e3, 8)):  # the instance reads its manifest
        monkeypatch.setattr(tio, "LIGHT_FLOPS_PER_TOKEN", light_below)  # 1e3: the tiny BERT counts as real
        _instance(python_model, tmp_path / "repo", "tiny-bert-classify").finalize()
        assert f"{threads} threads" in capsys.readouterr().out


def _instance(module, repo: Path, name: str):
    from google.protobuf import json_format

    config = read_config(repo / name / "config.pbtxt")
    args = {
        "model_config": json.dumps(json_format.MessageToDict(config, preserving_proto_field_name=True)),
        "model_repository": str(repo / name),
        "model_version": "1",
        "model_name": name,
    }
    return module.BundleModel(args)


def test_python_model_batches_requests_and_isolates_a_bad_one(python_model, tmp_path, classify):
    repo = tmp_path / "repo"
    write_repository([str(classify)], repo, RepoOptions())
    model = _instance(python_model, repo, "tiny-bert-classify")
    requests = [
        FakeRequest(text=_texts(TEXTS[0], TEXTS[1])),
        FakeRequest(text=_texts("")),  # empty: a UserError for this request only
        FakeRequest(text=_texts(TEXTS[2]), text_pair=_texts(TEXTS[3])),
        FakeRequest(text=np.array([[b"\xff\xfe"]], dtype=np.object_)),  # not UTF-8
    ]
    responses = model.execute(requests)
    expected = load_pipeline(classify).classify([TEXTS[0], TEXTS[1]], top_k=None)
    assert [v.decode() for v in responses[0].outputs["label"].ravel()] == [e["label"] for e in expected]
    assert responses[0].outputs["scores"].shape == (2, 2)
    for row, answer in enumerate(expected):
        assert abs(responses[0].outputs["score"][row, 0] - answer["score"]) < 1e-5
    assert responses[1].error.code == FakeError.INVALID_ARG and "empty" in responses[1].error.message()
    pair = load_pipeline(classify).classify([TEXTS[2]], [TEXTS[3]], top_k=None)[0]
    assert responses[2].outputs["label"][0, 0].decode() == pair["label"]
    assert "UTF-8" in responses[3].error.message()


@pytest.mark.parametrize("task", ["ner", "qa", "fill-mask"])
def test_python_model_json_and_qa_answers_match_the_runtime(task, python_model, tmp_path, make_bundle):
    bundle = make_bundle("tiny-bert", task)
    repo = tmp_path / "repo"
    write_repository([f"m={bundle}"], repo, RepoOptions())
    model = _instance(python_model, repo, "m")
    pipe = load_pipeline(bundle)
    if task == "qa":
        question, context = "Where did the cat sit?", "The cat sat on the mat in the house."
        (response,) = model.execute([FakeRequest(question=_texts(question), context=_texts(context))])
        expected = pipe.qa(question, context)
        assert response.outputs["answer"][0, 0].decode() == expected["answer"]
        assert (response.outputs["start"][0, 0], response.outputs["end"][0, 0]) == (
            expected["start"],
            expected["end"],
        )
        assert abs(response.outputs["score"][0, 0] - expected["score"]) < 1e-5
        return
    if task == "ner":
        texts = ["Ada Lovelace lived in London.", "Grace Hopper worked at Harvard."]
    else:
        texts = ["Paris is the [MASK] of France.", "The [MASK] sat on the [MASK]."]
    (response,) = model.execute([FakeRequest(text=_texts(*texts))])
    if task == "ner":
        got = [json.loads(v) for v in response.outputs["entities"].ravel()]
        expected = pipe.ner(texts)
    else:
        got = [json.loads(v) for v in response.outputs["fills"].ravel()]
        expected = pipe.fill_mask(texts, top_k=5)
    assert got == json.loads(json.dumps(expected))  # same rows, same batch: the very same answers


def _finished(*senders, timeout: float = 60.0) -> None:
    """Wait until every sender got its final response (the engine answers from its own thread)."""
    deadline = time.monotonic() + timeout
    while not all(any(flags == 1 for _, flags in sender.sent) for sender in senders):
        assert time.monotonic() < deadline, [sender.sent for sender in senders]
        time.sleep(0.01)


def test_the_outbox_sends_in_posted_order_from_its_own_thread_and_survives_a_failed_send(python_model):
    """Responses leave in the order they were posted, built on the outbox's thread; a send that raises (a client
    gone) is logged and the ones after it still go; close() sends what is posted first."""
    import threading

    generation = importlib.import_module("trtpipe.serving.generation")
    threads, sent = set(), []

    class Sender:
        def send(self, response=None, flags=0):
            threads.add(threading.current_thread().name)
            if response == "boom":
                raise RuntimeError("client gone")
            sent.append((response, flags))

    outbox, sender = generation.Outbox(), Sender()
    for i in range(50):
        outbox.post(sender, (lambda i=i: "boom" if i == 7 else i))
    outbox.post(sender, None, 1)
    outbox.close()
    assert sent == [(i, 0) for i in range(50) if i != 7] + [(None, 1)]
    assert threads == {"trtpipe-outbox"} and not outbox.thread.is_alive()


def test_python_model_generation_matches_the_runtime(python_model, tmp_path, gpt2):
    """execute() only submits (returns None); each request's one final response comes from the engine thread,
    with exactly what the runtime generates alone — greedy or seeded, whatever the other requests ask."""
    repo = tmp_path / "repo"
    write_repository([f"gen={gpt2}"], repo, RepoOptions())
    write_repository([f"stream={gpt2}"], tmp_path / "repo2", RepoOptions(stream=True))
    model = _instance(python_model, repo, "gen")
    generator = Generator(gpt2)
    try:
        requests = [
            FakeRequest(text=_texts(PROMPTS[0]), max_new_tokens=np.array([[8]], np.int32)),
            FakeRequest(text=_texts(PROMPTS[1]), max_new_tokens=np.array([[5]], np.int32)),
            FakeRequest(
                text=_texts(PROMPTS[2]),
                max_new_tokens=np.array([[8]], np.int32),
                temperature=np.array([[0.8]], np.float32),
                top_k=np.array([[20]], np.int32),
                seed=np.array([[7]], np.int64),
            ),
            FakeRequest(text=_texts(PROMPTS[0]), max_new_tokens=np.array([[0]], np.int32)),
            FakeRequest(text=_texts(*PROMPTS[:2]), max_new_tokens=np.array([[4], [6]], np.int32)),
        ]
        assert model.execute(requests) is None
        _finished(*(r.sender for r in requests))
        answers = [r.sender.sent for r in requests]
        assert all(len(sent) == 1 for sent in answers)  # exactly one (final) response per request
        for index, steps in ((0, 8), (1, 5)):
            expected = generator.generate(PROMPTS[index], max_new_tokens=steps)[0]
            assert answers[index][0][0].outputs["ids"][0].tolist() == expected.ids
            assert answers[index][0][0].outputs["completion"][0, 0].decode() == expected.text
        sampled = generator.generate(PROMPTS[2], 8, Sampling(temperature=0.8, top_k=20, seed=7))[0]
        assert answers[2][0][0].outputs["ids"][0].tolist() == sampled.ids
        assert "max_new_tokens" in answers[3][0][0].error.message()
        pair = answers[4][0][0].outputs["ids"]
        for row, (prompt, steps) in enumerate(zip(PROMPTS[:2], (4, 6))):
            want = generator.generate(prompt, max_new_tokens=steps)[0].ids
            assert pair[row][: len(want)].tolist() == want and (pair[row][len(want) :] == -1).all()
    finally:
        model.finalize()
    streaming = _instance(python_model, tmp_path / "repo2", "stream")
    try:
        request = FakeRequest(text=_texts(PROMPTS[1]), max_new_tokens=np.array([[6]], np.int32))
        assert streaming.execute([request]) is None
        _finished(request.sender)
        sent = request.sender.sent
        assert sent[-1] == (None, 1)  # the final flag closes the stream
        expected = generator.generate(PROMPTS[1], max_new_tokens=6)[0]
        assert [int(r.outputs["ids"][0, 0]) for r, _ in sent[:-1]] == expected.ids
        assert "".join(r.outputs["completion"][0, 0].decode() for r, _ in sent[:-1]) == expected.text
        assert sent[-2][0].outputs["finish"][0, 0].decode() == expected.finish
        two = FakeRequest(text=_texts(*PROMPTS[:2]))
        streaming.execute([two])
        assert (
            two.sender.sent[0][1] == 1 and "one prompt per request" in two.sender.sent[0][0].error.message()
        )
    finally:
        streaming.finalize()


def _two_requests_get_what_ort_cpu_gives(model, gpt2) -> None:
    """Two generation requests at once through the model: each gets the greedy ids ONNX Runtime gives it alone."""
    requests = [
        FakeRequest(text=_texts(prompt), max_new_tokens=np.array([[8]], np.int32)) for prompt in PROMPTS[:2]
    ]
    model.execute(requests)
    for prompt, request in zip(PROMPTS[:2], requests):
        _finished(request.sender)
        expected = Generator(gpt2).generate(prompt, max_new_tokens=8)[0]
        assert request.sender.sent[0][0].outputs["ids"][0].tolist() == expected.ids


def test_python_model_on_the_ov_runtime_answers_like_ort_cpu(python_model, tmp_path, classify, gpt2):
    """--runtime ov: a CPU instance; classification and generation (in-flight batching on the interop graph) give
    the answers ONNX Runtime gives."""
    pytest.importorskip("openvino")
    repo = tmp_path / "repo"
    result = invoke("triton", f"cls={classify}", f"gen={gpt2}", "--runtime", "ov", "--out", repo, "-q")
    assert result.exit_code == 0, result.output
    pb = importlib.import_module("tritonclient.grpc.model_config_pb2")
    for name in ("cls", "gen"):
        config = read_config(repo / name / "config.pbtxt")
        assert config.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        assert config.parameters["runtime"].string_value == "ov"
    model = _instance(python_model, repo, "cls")
    try:
        (response,) = model.execute([FakeRequest(text=_texts(TEXTS[0], TEXTS[1]))])
        expected = load_pipeline(classify).classify(TEXTS[:2], top_k=None)
        assert [v.decode() for v in response.outputs["label"].ravel()] == [e["label"] for e in expected]
        scores = [e["score"] for e in expected]
        assert_close(response.outputs["score"][:, 0], scores, atol=1e-4, what="scores")
    finally:
        model.finalize()
    model = _instance(python_model, repo, "gen")
    try:
        engine = model.generation.engine
        assert engine.backend == "ov" and engine.runner.session.backend == "ov"
        _two_requests_get_what_ort_cpu_gives(model, gpt2)
    finally:
        model.finalize()


def test_python_model_with_an_openvino_prefill_generates_like_ort_cpu(python_model, tmp_path, gpt2, classify):
    """--prefill-backend ov: the generation model's engine prefills on OpenVINO and decodes on ONNX Runtime in
    place, with the tokens ONNX Runtime alone gives; a bad value or a runtime it cannot feed is one line, exit 2."""
    pytest.importorskip("openvino")
    repo = tmp_path / "repo"
    result = invoke("triton", f"gen={gpt2}", "--prefill-backend", "ov", "--out", repo, "-q")
    assert result.exit_code == 0, result.output
    assert read_config(repo / "gen" / "config.pbtxt").parameters["prefill_backend"].string_value == "ov"
    model = _instance(python_model, repo, "gen")
    try:
        engine = model.generation.engine
        assert engine.backend == "ort-cpu" and engine.generator.prefill_backend == "ov"
        _two_requests_get_what_ort_cpu_gives(model, gpt2)
    finally:
        model.finalize()
    for extra, message in (
        (["--prefill-backend", "trt"], "unknown --prefill-backend 'trt'; choose ov"),
        (
            ["--prefill-backend", "ov", "--runtime", "ov"],
            "--prefill-backend applies to --backend python --runtime",
        ),
    ):
        result = invoke("triton", f"gen={gpt2}", *extra, "--out", tmp_path / "bad", "-q")
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "bad").exists()


def test_python_model_on_openvinos_paged_engine_generates_like_ort_cpu(python_model, tmp_path, gpt2):
    """--runtime ov --paged: the generation model's engine runs OpenVINO's PagedAttention model (runtime/paged.py),
    with the tokens ONNX Runtime alone gives; --paged on another runtime is one line, exit 2."""
    pytest.importorskip("openvino")
    from trtpipe.runtime.paged import PagedDecoder

    repo = tmp_path / "repo"
    result = invoke("triton", f"gen={gpt2}", "--runtime", "ov", "--paged", "--out", repo, "-q")
    assert result.exit_code == 0, result.output
    assert read_config(repo / "gen" / "config.pbtxt").parameters["paged"].string_value == "1"
    model = _instance(python_model, repo, "gen")
    try:
        assert isinstance(model.generation.engine.runner, PagedDecoder)
        _two_requests_get_what_ort_cpu_gives(model, gpt2)
    finally:
        model.finalize()
    result = invoke("triton", f"gen={gpt2}", "--paged", "--out", tmp_path / "bad", "-q")
    assert result.exit_code == 2 and "--paged applies to --backend python --runtime ov only" in result.output
    assert not (tmp_path / "bad").exists()
    result = invoke(
        "triton",
        f"gen={gpt2}",
        "--runtime",
        "ov",
        "--paged",
        "--kv-cache",
        "int8",
        "--out",
        tmp_path / "bad",
        "-q",
    )
    assert (
        result.exit_code == 2
        and "no gate for it on fp32" in result.output
        and "--precision kv8" in result.output
    )
    assert not (tmp_path / "bad").exists()


def test_python_model_on_the_paged_u8_cache(python_model, tmp_path, gpt2, copy_bundle):
    """--runtime ov --paged --kv-cache int8 on a bundle whose kv8 gated OpenVINO's u8 cache: the engine runs on it."""
    pytest.importorskip("openvino")
    from trtpipe.optimize.variants import optimize_bundle

    path = copy_bundle(gpt2)
    optimize_bundle(path, "kv8", force=True)
    repo = tmp_path / "repo"
    result = invoke(
        "triton", f"gen={path}", "--runtime", "ov", "--paged", "--kv-cache", "int8", "--out", repo, "-q"
    )
    assert result.exit_code == 0, result.output
    assert read_config(repo / "gen" / "config.pbtxt").parameters["kv_cache"].string_value == "int8"
    model = _instance(python_model, repo, "gen")
    try:
        runner = model.generation.engine.runner
        assert runner.compiled.input("key_cache.0").get_element_type().get_type_name() == "u8"
        request = FakeRequest(text=_texts(PROMPTS[0]), max_new_tokens=np.array([[4]], np.int32))
        model.execute([request])
        _finished(request.sender)
        assert len(request.sender.sent[0][0].outputs["ids"][0]) == 4
    finally:
        model.finalize()


def _slow_steps(monkeypatch, engine, seconds: float = 0.002) -> None:
    """Each decode step of `engine` takes at least `seconds` longer: a test that acts while a long stream runs
    (cancel it, drain, finalize) does not race its end on a fast CPU, where a tiny model's stream lasts milliseconds."""
    decode = engine.runner.decode

    def slow_decode(*args, **kwargs):
        time.sleep(seconds)
        return decode(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "decode", slow_decode)


def test_python_model_frees_a_cancelled_slot_and_bounds_its_queue(python_model, tmp_path, monkeypatch, gpt2):
    """One slot, no queue: a second request is refused at once; a client that goes away mid-stream frees the slot
    within a step and the next request runs; finalize() ends what is still running with an error, not a hang."""
    repo = tmp_path / "repo"
    write_repository([f"gen={gpt2}"], repo, RepoOptions(stream=True, max_batch=1, max_queue=0))
    model = _instance(python_model, repo, "gen")
    engine = model.generation.engine
    _slow_steps(monkeypatch, engine)  # 200 steps ≥ 0.4 s: cancel and finalize land mid-stream
    long = FakeRequest(text=_texts(PROMPTS[0]), max_new_tokens=np.array([[200]], np.int32))
    model.execute([long])
    while not long.sender.sent:  # streaming: its first token arrived, it holds the only slot
        time.sleep(0.005)
    refused = FakeRequest(text=_texts(PROMPTS[1]), max_new_tokens=np.array([[4]], np.int32))
    model.execute([refused])
    assert refused.sender.sent[0][1] == 1 and "queue holds 0" in refused.sender.sent[0][0].error.message()
    long.sender.cancelled = True
    _finished(long.sender)
    assert len(long.sender.sent) < 200  # it stopped early
    deadline = time.monotonic() + 10
    while engine.busy:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    after = FakeRequest(text=_texts(PROMPTS[1]), max_new_tokens=np.array([[4]], np.int32))
    model.execute([after])
    _finished(after.sender)
    assert [int(r.outputs["ids"][0, 0]) for r, _ in after.sender.sent[:-1]] == (
        Generator(gpt2).generate(PROMPTS[1], max_new_tokens=4)[0].ids
    )
    stuck = FakeRequest(text=_texts(PROMPTS[2]), max_new_tokens=np.array([[200]], np.int32))
    model.execute([stuck])
    model.finalize()
    _finished(stuck.sender, timeout=10)
    final = stuck.sender.sent[-1][0]
    assert final is not None and "stopped" in final.error.message()
    assert engine.thread is not None and not engine.thread.is_alive() and engine.busy == 0


def test_a_short_row_that_ends_before_the_next_is_submitted_waits_for_it(python_model, tmp_path, gpt2):
    """A request of two rows whose first ends while the second is still being submitted (a busy machine): its one
    response still carries both rows (it used to close with the first row alone)."""
    repo = tmp_path / "repo"
    write_repository([f"gen={gpt2}"], repo, RepoOptions())
    model = _instance(python_model, repo, "gen")
    engine = model.generation.engine
    submit, calls = engine.submit, []

    def slow_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            time.sleep(0.5)  # the first row (one token) is done by now
        return submit(*args, **kwargs)

    engine.submit = slow_second
    try:
        request = FakeRequest(text=_texts(*PROMPTS[:2]), max_new_tokens=np.array([[1], [3]], np.int32))
        model.execute([request])
        _finished(request.sender)
        ((response, _),) = request.sender.sent
        ids = response.outputs["ids"]
        generator = Generator(gpt2)
        assert ids.shape == (2, 3)
        assert ids[0].tolist() == generator.generate(PROMPTS[0], max_new_tokens=1)[0].ids + [-1, -1]
        assert ids[1].tolist() == generator.generate(PROMPTS[1], max_new_tokens=3)[0].ids
    finally:
        model.finalize()


def test_python_model_refuses_new_requests_once_draining_and_cuts_off_what_runs(
    python_model, tmp_path, monkeypatch, long_gpt2, classify
):
    """The launcher's drain notice (serving/drain.py): once it exists, new requests are refused at once
    (UNAVAILABLE), and at the time it holds a generation still running ends with the shutdown error, not a hang."""
    from trtpipe.serving import drain

    notice = tmp_path / "drain-notice"
    monkeypatch.setenv(drain.ENV, str(notice))
    repo = tmp_path / "repo"
    write_repository([f"gen={long_gpt2}", f"cls={classify}"], repo, RepoOptions(stream=True))
    gen, cls = _instance(python_model, repo, "gen"), _instance(python_model, repo, "cls")
    _slow_steps(monkeypatch, gen.generation.engine)  # ≥ 4 s for LONG steps: the drain watch polls every 0.2 s
    try:
        running = FakeRequest(text=_texts(PROMPTS[0]), max_new_tokens=np.array([[LONG]], np.int32))
        gen.execute([running])
        while not running.sender.sent:  # it is generating
            time.sleep(0.005)
        drain.write_notice(notice, 0)  # a drain of 0 s: the cut-off is now
        new = FakeRequest(text=_texts(PROMPTS[1]), max_new_tokens=np.array([[4]], np.int32))
        gen.execute([new])
        (refused, flags) = new.sender.sent[0]
        assert flags == 1 and refused.error.code == FakeError.UNAVAILABLE
        assert refused.error.message() == drain.REFUSED
        (response,) = cls.execute([FakeRequest(text=_texts(TEXTS[0]))])
        assert response.error.code == FakeError.UNAVAILABLE and response.error.message() == drain.REFUSED
        _finished(running.sender, timeout=10)
        final = running.sender.sent[-1][0]
        assert final.error.code == FakeError.UNAVAILABLE and final.error.message() == drain.CUT_OFF
        assert len(running.sender.sent) < LONG
    finally:
        gen.finalize()
        cls.finalize()
    assert drain.cutoff_s(30) == 27 and drain.cutoff_s(4) == 2 and drain.cutoff_s(0) == 0


# ------------------------------------------------------------------------------- a real server, on loopback


@pytest.fixture(scope="module")
def triton(tmp_path_factory, classify, embed, gpt2, long_gpt2):
    """tritonserver from the nvidia-pytriton wheel on free loopback ports, serving python-backend models."""
    from trtpipe.serving import start_server

    root = tmp_path_factory.mktemp("triton")
    probe = root / "empty"
    probe.mkdir()
    try:  # can the binary start on this machine at all? (an empty repository: no models involved)
        start_server(probe, timeout_s=60).stop()
    except UserError as exc:
        pytest.skip(f"tritonserver cannot start on this machine: {exc}")
    write_repository([str(classify), str(embed), str(gpt2)], root / "repo", RepoOptions(max_batch=8))
    write_repository(
        [f"tiny-gpt2-stream={gpt2}", f"long-gpt2-stream={long_gpt2}"],
        root / "stream",
        RepoOptions(stream=True),
    )
    from trtpipe.serving.server import free_port

    server = start_server([root / "repo", root / "stream"], timeout_s=120, metrics_port=free_port())
    try:
        yield server, root
    finally:
        server.stop()


def _http(server):
    import tritonclient.http as http

    return http, http.InferenceServerClient(server.http_url, network_timeout=60.0)


def _bytes_input(module, name, texts):
    tensor = module.InferInput(name, [len(texts), 1], "BYTES")
    tensor.set_data_from_numpy(_texts(*texts))
    return tensor


def test_server_classifies_and_embeds_like_the_runtime(triton, classify, embed):
    server, _ = triton
    http, client = _http(server)
    assert client.is_server_ready() and client.is_model_ready("tiny-bert-classify")
    result = client.infer("tiny-bert-classify", [_bytes_input(http, "text", TEXTS)])
    expected = load_pipeline(classify).classify(TEXTS, top_k=None)
    labels = [v.decode() for v in result.as_numpy("label").ravel()]
    assert labels == [e["label"] for e in expected]
    names = [label for _, label in sorted(Bundle.load(classify).labels.items())]
    want = np.array([[e["scores"][n] for n in names] for e in expected])
    assert_close(result.as_numpy("scores"), want, atol=1e-5, rtol=0, what="scores")
    assert_close(
        result.as_numpy("score").ravel(), [e["score"] for e in expected], atol=1e-5, rtol=0, what="score"
    )
    result = client.infer("tiny-bert-embed", [_bytes_input(http, "text", TEXTS)])
    assert_close(
        result.as_numpy("embedding"), load_pipeline(embed).embed(TEXTS), atol=1e-5, rtol=0, what="embed"
    )
    try:
        client.infer("tiny-bert-embed", [_bytes_input(http, "text", ["   "])])
        raise AssertionError("empty text was accepted")
    except Exception as exc:  # InferenceServerException, HTTP 400, the runtime's message
        assert "empty" in str(exc) and "400" in str(exc)
    client.close()


def test_server_generates_like_the_runtime_over_http_and_grpc_streaming(triton, gpt2):
    import tritonclient.grpc as grpc

    server, _ = triton
    http, client = _http(server)
    generator = Generator(gpt2)
    for prompt in PROMPTS:
        steps = http.InferInput("max_new_tokens", [1, 1], "INT32")
        steps.set_data_from_numpy(np.array([[12]], dtype=np.int32))
        result = client.infer("tiny-gpt2-generate", [_bytes_input(http, "text", [prompt]), steps])
        expected = generator.generate(prompt, max_new_tokens=12)[0]
        assert result.as_numpy("ids")[0].tolist() == expected.ids
        assert result.as_numpy("completion")[0, 0].decode() == expected.text
        assert result.as_numpy("finish")[0, 0].decode() == expected.finish
    client.close()
    stream = grpc.InferenceServerClient(server.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)])
    answers: queue.Queue = queue.Queue()
    stream.start_stream(callback=lambda result, error: answers.put((result, error)))
    try:
        for index, prompt in enumerate(PROMPTS):
            steps = grpc.InferInput("max_new_tokens", [1, 1], "INT32")
            steps.set_data_from_numpy(np.array([[10]], dtype=np.int32))
            stream.async_stream_infer(
                "tiny-gpt2-stream",
                [_bytes_input(grpc, "text", [prompt]), steps],
                request_id=str(index),
                enable_empty_final_response=True,
            )
        tokens: dict[str, list] = {str(i): [] for i in range(len(PROMPTS))}
        finals = 0
        while finals < len(PROMPTS):
            result, error = answers.get(timeout=60)
            assert error is None, error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finals += 1
                continue
            tokens[response.id].append(
                (int(result.as_numpy("ids")[0, 0]), result.as_numpy("completion")[0, 0].decode())
            )
    finally:
        stream.stop_stream()
        stream.close()
    for index, prompt in enumerate(PROMPTS):
        expected = generator.generate(prompt, max_new_tokens=10)[0]
        assert [i for i, _ in tokens[str(index)]] == expected.ids
        assert "".join(t for _, t in tokens[str(index)]) == expected.text


def test_server_errors_name_the_request_fields_not_cli_flags(triton):
    """Bad settings and an over-long prompt, over HTTP and gRPC: the error (HTTP 400 / INVALID_ARGUMENT) names the
    input the client sent (temperature, not --temperature) and offers no truncate, which a request cannot pass."""
    import tritonclient.grpc as grpc
    import tritonclient.http as http

    server, _ = triton
    dtypes = {"INT32": np.int32, "FP32": np.float32}
    cases = [
        ("tiny-gpt2-generate", "x", {"temperature": ("FP32", -1.0)}, "temperature must be ≥ 0 (0 = greedy)"),
        ("tiny-gpt2-generate", "x", {"top_p": ("FP32", 1.5)}, "top_p must be in (0, 1]"),
        ("tiny-gpt2-generate", "x", {"top_k": ("INT32", -2)}, "top_k must be ≥ 0"),
        ("tiny-gpt2-generate", "x", {"repetition_penalty": ("FP32", 0.0)}, "repetition_penalty must be > 0"),
        ("tiny-gpt2-generate", "x", {"max_new_tokens": ("INT32", 0)}, "max_new_tokens must be ≥ 1 (got 0)"),
        (
            "tiny-gpt2-generate",
            "word " * 300,
            {"max_new_tokens": ("INT32", 8)},
            "with max_new_tokens 8 it must be ≤ 248 (the model has 256 positions); shorten it",
        ),
        ("tiny-bert-classify", "word " * 300, {}, "longer than the model's limit of 128; shorten it"),
    ]
    clients = {
        "http": (http, http.InferenceServerClient(server.http_url, network_timeout=60.0)),
        "grpc": (
            grpc,
            grpc.InferenceServerClient(server.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)]),
        ),
    }
    try:
        for protocol, (module, client) in clients.items():
            for model, text, settings, expected in cases:
                inputs = [_bytes_input(module, "text", [text])]
                for name, (dtype, value) in settings.items():
                    tensor = module.InferInput(name, [1, 1], dtype)
                    tensor.set_data_from_numpy(np.array([[value]], dtype=dtypes[dtype]))
                    inputs.append(tensor)
                with pytest.raises(Exception) as failure:  # InferenceServerException
                    client.infer(model, inputs)
                message = str(failure.value)
                assert expected in message, (protocol, message)
                assert "--" not in message and "truncate" not in message, (protocol, message)
                assert ("400" if protocol == "http" else "INVALID_ARG") in message, (protocol, message)
    finally:
        for _, client in clients.values():
            client.close()


def test_server_batches_concurrent_generation_in_flight(triton, gpt2):
    """Eight clients at once, each with its own length and settings: every one gets exactly what the runtime
    generates alone (they shared decode steps on the server)."""
    from concurrent.futures import ThreadPoolExecutor

    server, _ = triton
    http, _ = _http(server)
    generator = Generator(gpt2)
    cases = [
        (
            PROMPTS[i % 3] + " x" * i,
            4 + 3 * i,
            Sampling() if i % 2 else Sampling(temperature=0.9, top_k=30, seed=i),
        )
        for i in range(8)
    ]

    def ask(case):
        prompt, steps, sampling = case
        client = http.InferenceServerClient(server.http_url, network_timeout=60.0)
        inputs = [_bytes_input(http, "text", [prompt])]
        for name, dtype, value in (
            ("max_new_tokens", "INT32", steps),
            ("temperature", "FP32", sampling.temperature),
            ("top_k", "INT32", sampling.top_k),
            ("seed", "INT64", sampling.seed or 0),
        ):
            tensor = http.InferInput(name, [1, 1], dtype)
            tensor.set_data_from_numpy(
                np.array([[value]], dtype={"INT32": np.int32, "FP32": np.float32}.get(dtype, np.int64))
            )
            inputs.append(tensor)
        try:
            return client.infer("tiny-gpt2-generate", inputs).as_numpy("ids")[0].tolist()
        finally:
            client.close()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, cases))
    for (prompt, steps, sampling), ids in zip(cases, answers):
        seeded = sampling if sampling.temperature else Sampling(seed=0)
        assert ids == generator.generate(prompt, steps, seeded)[0].ids


def test_the_engine_reports_its_state_on_tritons_metrics_endpoint(triton):
    """After the generation tests: tokens and steps counted per model, busy slots and waiting requests as gauges."""
    server, _ = triton
    http, client = _http(server)
    steps = http.InferInput("max_new_tokens", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[5]], dtype=np.int32))
    client.infer("tiny-gpt2-generate", [_bytes_input(http, "text", [PROMPTS[0]]), steps])
    client.close()
    values = _generation_metrics(  # a finished row leaves its slot at the next step
        server,
        "tiny-gpt2-generate",
        lambda v: v.get("trtpipe_generation_tokens", 0) >= 5 and v.get("trtpipe_generation_slots_busy") == 0,
    )
    assert values["trtpipe_generation_tokens"] >= 5 and values["trtpipe_generation_steps"] >= 4
    assert values["trtpipe_generation_prefill_tokens"] > 0
    assert values["trtpipe_generation_slots_busy"] == 0 and values["trtpipe_generation_requests_waiting"] == 0


def _generation_metrics(server, model: str, ready, timeout_s: float = 10.0) -> dict:
    """The engine's trtpipe_generation_* values for `model` from the metrics endpoint, polled until `ready(values)`
    (they refresh once a second) or for timeout_s at most; the last values read either way."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + timeout_s
    while True:
        text = opener.open(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
        values = {
            line.split("{")[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("trtpipe_generation_") and f'model="{model}"' in line
        }
        if ready(values) or time.monotonic() > deadline:
            return values
        time.sleep(0.2)


def _tokens_before_cancellation(server, before: int) -> int:
    """Waits (≤ 30 s) for the server to log one more client cancellation than `before`; the tokens that request
    had streamed when the engine freed its slot."""
    deadline = time.monotonic() + 30
    while server.log().count("cancelled by its client") <= before:
        assert time.monotonic() < deadline, "the engine never heard that its client went away"
        time.sleep(0.05)
    line = [line for line in server.log().splitlines() if "cancelled by its client" in line][before]
    return int(line.split("after ")[1].split(" tokens")[0])


def test_a_client_that_cancels_mid_stream_frees_its_slot(triton, gpt2):
    import tritonclient.grpc as grpc

    server, _ = triton
    before = server.log().count("cancelled by its client")
    first: queue.Queue = queue.Queue()
    stream = grpc.InferenceServerClient(server.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)])
    stream.start_stream(callback=lambda result, error: first.put((result, error)))
    steps = grpc.InferInput("max_new_tokens", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[LONG]], dtype=np.int32))
    stream.async_stream_infer("long-gpt2-stream", [_bytes_input(grpc, "text", [PROMPTS[0]]), steps])
    result, error = first.get(timeout=60)
    assert error is None
    stream.stop_stream(cancel_requests=True)
    stream.close()
    assert _tokens_before_cancellation(server, before) < LONG
    http, client = _http(server)  # the server goes on serving
    steps = http.InferInput("max_new_tokens", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[6]], dtype=np.int32))
    result = client.infer("tiny-gpt2-generate", [_bytes_input(http, "text", [PROMPTS[1]]), steps])
    assert result.as_numpy("ids")[0].tolist() == Generator(gpt2).generate(PROMPTS[1], max_new_tokens=6)[0].ids
    client.close()


KILLED_CLIENT = """
import sys, time, numpy as np, tritonclient.grpc as grpc
stream = grpc.InferenceServerClient(sys.argv[1], channel_args=[("grpc.enable_http_proxy", 0)])
stream.start_stream(callback=lambda result, error: print("token" if error is None else error, flush=True))
text = grpc.InferInput("text", [1, 1], "BYTES")
text.set_data_from_numpy(np.array([[sys.argv[2].encode()]], dtype=np.object_))
steps = grpc.InferInput("max_new_tokens", [1, 1], "INT32")
steps.set_data_from_numpy(np.array([[int(sys.argv[3])]], dtype=np.int32))
stream.async_stream_infer("long-gpt2-stream", [text, steps])
time.sleep(600)
"""


def test_a_client_killed_mid_stream_frees_its_slot_and_the_others_go_on(triton, long_gpt2):
    """A client process SIGKILLed mid-stream: the engine hears it, frees the slot, and a request streaming beside it
    gets exactly its own answer; afterwards no slot is busy and nothing waits (metrics)."""
    import signal

    import tritonclient.grpc as grpc

    server, _ = triton
    before = server.log().count("cancelled by its client")
    victim = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, server.grpc_url, PROMPTS[0], str(LONG)],
        stdout=subprocess.PIPE,
        text=True,
    )
    answers: queue.Queue = queue.Queue()
    other = grpc.InferenceServerClient(server.grpc_url, channel_args=[("grpc.enable_http_proxy", 0)])
    other.start_stream(callback=lambda result, error: answers.put((result, error)))
    steps = grpc.InferInput("max_new_tokens", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[200]], dtype=np.int32))
    try:
        assert victim.stdout.readline().strip() == "token"  # it is streaming: kill it while both run
        other.async_stream_infer(
            "long-gpt2-stream",
            [_bytes_input(grpc, "text", [PROMPTS[1]]), steps],
            enable_empty_final_response=True,
        )
        victim.send_signal(signal.SIGKILL)
        victim.wait(30)
        ids = []
        while True:
            result, error = answers.get(timeout=60)
            assert error is None, error
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
            ids.append(int(result.as_numpy("ids")[0, 0]))
    finally:
        victim.kill()
        other.stop_stream()
        other.close()
    assert ids == Generator(long_gpt2).generate(PROMPTS[1], max_new_tokens=200)[0].ids
    assert _tokens_before_cancellation(server, before) < LONG
    idle = ("trtpipe_generation_slots_busy", "trtpipe_generation_requests_waiting")
    gauges = _generation_metrics(server, "long-gpt2-stream", lambda v: all(v[name] == 0 for name in idle))
    assert all(gauges[name] == 0 for name in idle), f"a slot stayed busy: {gauges}"


def test_stopping_the_server_mid_generation_ends_requests_without_a_hang(tmp_path, gpt2):
    """Requests in flight when the server stops get their answer or an error within bounded time, never a hang."""
    from concurrent.futures import ThreadPoolExecutor

    import tritonclient.http as http

    from trtpipe.serving import start_server

    write_repository([f"gen={gpt2}"], tmp_path / "repo", RepoOptions(max_batch=2))
    server = start_server(tmp_path / "repo", timeout_s=120)

    def ask(index):
        client = http.InferenceServerClient(server.http_url, network_timeout=60.0)
        steps = http.InferInput("max_new_tokens", [1, 1], "INT32")
        steps.set_data_from_numpy(np.array([[240]], dtype=np.int32))
        try:
            client.infer("gen", [_bytes_input(http, "text", [PROMPTS[index % 3]]), steps])
            return "answered"
        except Exception as exc:
            return f"error: {exc}"

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, i) for i in range(4)]
        time.sleep(0.3)
        started = time.monotonic()
        code = server.stop()
        outcomes = [f.result(timeout=90) for f in futures]
    assert time.monotonic() - started < 90 and code is not None
    assert all(o == "answered" or o.startswith("error") for o in outcomes), outcomes


def test_server_under_concurrent_load(triton, classify, capsys):
    from trtpipe.serving.load import run_load

    server, root = triton
    clients, requests = 8, 200
    report = run_load(
        server.http_url,
        "tiny-bert-classify",
        lambda c, i: [("text", _texts(TEXTS[(c + i) % len(TEXTS)]))],
        clients=clients,
        requests=requests,
        outputs=["label", "score"],
        timeout_s=90,
    )
    report["machine"] = f"{os.cpu_count()} CPUs, loopback, python backend (ort-cpu), max_batch 8"
    (root / "load.json").write_text(json.dumps(report, indent=2))
    with capsys.disabled():  # shown by `make test` too
        print(
            f"\ntriton load: {clients} clients × {requests} requests: {report['throughput_rps']} req/s, "
            f"p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms ({root / 'load.json'})"
        )
    assert report["errors"] == 0, report["first_error"]
    assert report["completed"] == clients * requests
    assert report["throughput_rps"] > 0 and report["p99_ms"] >= report["p50_ms"]


def test_a_time_bounded_stream_load_builds_each_request_when_it_sends_it(triton):
    """The soak asks for 100,000 requests per client and stops on time: inputs are made as requests go out, not all
    up front (which once kept the soak from sending anything before its start gate gave up)."""
    from trtpipe.serving.load import run_stream_load

    server, _ = triton
    made = []

    def make(client, index):
        made.append((client, index))
        return [
            ("text", _texts(PROMPTS[index % len(PROMPTS)])),
            ("max_new_tokens", np.array([[4]], np.int32)),
        ]

    started = time.monotonic()
    report = run_stream_load(
        server.grpc_url, "tiny-gpt2-stream", make, clients=2, requests=100_000, timeout_s=2.0
    )
    assert report["errors"] == 0, report["first_error"]
    assert report["completed"] > 0 and report["tokens"] >= 4 * report["completed"]
    assert len(made) == report["completed"]  # one input per request sent, none built ahead
    assert time.monotonic() - started < 60


def test_a_model_that_fails_to_load_names_its_error(triton, tmp_path, embed):
    from trtpipe.serving import start_server

    repo = tmp_path / "repo"
    write_repository([str(embed)], repo, RepoOptions())
    onnx = repo / "tiny-bert-embed" / "1" / "bundle" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()  # a hard link to the session bundle: replace it, never write through it
    onnx.write_bytes(data[: len(data) // 2])
    log = tmp_path / "triton.log"
    with pytest.raises(UserError, match="sha256") as failure:
        start_server(repo, timeout_s=60, log_path=log)
    print(failure.value)
    assert "tiny-bert-embed" in str(failure.value) and str(log) in str(failure.value)
    assert "sha256" in log.read_text()


def test_triton_serve_cli_runs_and_stops_by_itself(triton, tmp_path, embed):
    repo = tmp_path / "repo"
    write_repository([str(embed)], repo, RepoOptions())
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "cli.py"),
            "triton-serve",
            repo,
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            "--duration",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ready: HTTP http://127.0.0.1:" in result.stdout and "tiny-bert-embed" in result.stdout
    assert "tritonserver stopped (exit 0)" in result.stderr
