"""Reliability and security: one bad-input matrix over every CLI command and public runtime function, atomic
bundles under SIGKILL, untrusted bundles, NaN/Inf, fuzzing, concurrency."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime import (
    Bundle,
    Generator,
    Sampling,
    UserError,
    check_feeds,
    load_pipeline,
    open_session,
    perplexity,
)
from trtpipe.runtime.paths import sha256_file

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()

# (command line with {enc} = tiny-bert classify, {emb} = tiny-bert embed, {gpt} = tiny-gpt2, {tmp} = a temp dir,
#  {latin1} = a non-UTF-8 file, {empty} = an empty file; the message fragment that names the fix)
CLI_MATRIX = [
    ("export {tmp}/missing-dir --task classify", "neither a checkpoint directory nor a preset"),
    ("export {tmp}/noconfig --task classify", "no config.json"),
    ("export tiny-bert --task translate", "unknown task 'translate'"),
    ("export tiny-gpt2 --task classify --out {tmp}/o", "not available for gpt2"),
    ("export tiny-bert --task classify --out {tmp}/o --opset 9", "--opset must be between"),
    ("export tiny-bert --task classify --out {enc}", "already exists; pass --overwrite"),
    ("inspect {tmp}/nope", "no bundle at"),
    ("inspect {latin1}", "is a file, not a bundle directory"),
    ("run {enc}", "no input text"),
    ("run {enc} ''", "empty"),
    ("run {enc} --file {latin1}", "not UTF-8"),
    ("run {enc} --file {tmp}/nope.txt", "does not exist"),
    ("run {enc} 'x' --top-k 0", "--top-k must be ≥ 1"),
    ("run {enc} 'x' --backend tpu", "unknown backend 'tpu'"),
    ("run {enc} 'x' --backend trt", "trtpipe doctor"),
    ("run {enc} 'x' --backend ort-cuda", "trtpipe doctor"),
    ("run {enc} 'x' --variant int4", "no variant 'int4'"),
    ("run {enc} 'x' --threads 0", "--threads must be ≥ 1"),
    ("run {enc} '" + "word " * 300 + "'", "--truncate"),
    ("run {gpt} 'x'", "trtpipe generate"),
    ("parity {tmp}/nope", "no bundle at"),
    ("parity {enc} --samples 0", "--samples must be ≥ 1"),
    ("generate {enc} 'x'", "generation needs a GPT-2 bundle"),
    ("generate {gpt} 'x' --max-new-tokens 0", "--max-new-tokens must be ≥ 1"),
    ("generate {gpt} 'x' --temperature -0.5", "--temperature must be ≥ 0"),
    ("generate {gpt} 'x' --top-p 2", "--top-p must be in (0, 1]"),
    ("generate {gpt} 'x' --top-k -1", "--top-k must be ≥ 0"),
    ("generate {gpt} 'x' --repetition-penalty 0", "--repetition-penalty must be > 0"),
    ("generate {gpt} ''", "empty"),
    ("generate {gpt} '" + "word " * 400 + "'", "--truncate"),
    ("score {gpt} {latin1}", "not UTF-8"),
    ("score {gpt} {empty}", "the text to score is empty"),
    ("score {enc} {text}", "perplexity needs a GPT-2 bundle"),
    ("optimize {enc} --precision int3", "unknown precision 'int3'"),
    ("optimize {enc} --precision int8 --calibration {empty}", "is empty"),
    ("optimize {enc} --precision int8-qdq --method magic", "unknown calibration method"),
    ("benchmark --engine {tmp}/nope", "no bundle at"),
    ("benchmark --engine {emb} --backend tpu", "unknown backend 'tpu'"),
    ("benchmark --engine {emb} --iters 0", "--iters"),
    ("benchmark --engine {emb} --variant int3", "no variant 'int3'"),
    ("benchmark --engine {emb} --out {latin1}/sub", "cannot create the output directory"),
    ("compare {enc}", "at least two bundles"),
    ("build {enc} --variant int8-qdq --flavour rtx", "trtpipe optimize"),
    ("build {enc} --flavour trt9", "trt9"),
    ("lint {tmp}/nope", "no bundle at"),
    ("advise {enc} --texts {latin1}", "not UTF-8"),
    ("triton {gpt} --out {tmp}/repo --backend onnxruntime", "--backend python"),
    ("triton {enc} --out {tmp}/repo --backend tensorrt", "trtpipe build"),
    ("demo-models --only nonsense", "nonsense"),
]


@pytest.fixture(scope="module")
def matrix_env(make_bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("matrix")
    (tmp / "noconfig").mkdir()
    (tmp / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1"))
    (tmp / "empty.txt").write_text("")
    (tmp / "text.txt").write_text("Some text to score.\n")
    return {
        "enc": make_bundle("tiny-bert", "classify"),
        "emb": make_bundle("tiny-bert", "embed"),
        "gpt": make_bundle("tiny-gpt2", "generate"),
        "tmp": tmp,
        "latin1": tmp / "latin1.txt",
        "empty": tmp / "empty.txt",
        "text": tmp / "text.txt",
    }


@pytest.mark.parametrize(
    "line, message", CLI_MATRIX, ids=[c[0].split()[0] + ":" + c[1][:30] for c in CLI_MATRIX]
)
def test_cli_bad_input_matrix(matrix_env, line, message):
    import shlex

    args = shlex.split(line.format(**{k: str(v) for k, v in matrix_env.items()}))
    before = {p.name for p in matrix_env["tmp"].iterdir()}
    manifests = {k: (Path(matrix_env[k]) / "manifest.json").read_bytes() for k in ("enc", "emb", "gpt")}
    result = runner.invoke(app, args)
    assert result.exit_code == 2, (line, result.output)
    assert message in result.output, (line, result.output)
    assert "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error:")]) == 1
    assert {p.name for p in matrix_env["tmp"].iterdir()} == before  # nothing half-written
    for key, data in manifests.items():
        assert (Path(matrix_env[key]) / "manifest.json").read_bytes() == data  # bundles untouched


def _raises(fn, message):
    with pytest.raises(UserError, match=message):
        fn()


def test_library_bad_input_matrix(matrix_env):
    """The public runtime API raises UserError (never a bare KeyError/IndexError/ORT error) for bad input."""
    enc, emb, gpt = matrix_env["enc"], matrix_env["emb"], matrix_env["gpt"]
    session = open_session(emb)
    good = {
        "input_ids": np.array([[101, 2000, 102]]),
        "attention_mask": np.ones((1, 3), np.int64),
        "token_type_ids": np.zeros((1, 3), np.int64),
    }
    cases = [
        (lambda: Bundle.load(matrix_env["tmp"] / "nope"), "no bundle at"),
        (lambda: open_session(emb, backend="tpu"), "unknown backend"),
        (lambda: open_session(emb, variant="int4"), "no variant"),
        (lambda: session.run({**good, "input_ids": np.array([[101, 99999, 102]])}), "outside the vocabulary"),
        (lambda: session.run({**good, "input_ids": np.zeros((1, 3), np.float32)}), "dtype"),
        (lambda: session.run({k: v for k, v in good.items() if k != "attention_mask"}), "missing input"),
        (lambda: session.run({**good, "attention_mask": np.ones((2, 3), np.int64)}), "must agree"),
        (lambda: session.run("not a dict"), "dict"),
        (
            lambda: check_feeds(
                {"input_ids": "abc"}, [{"name": "input_ids", "dtype": "int64", "shape": ["b"]}]
            ),
            "dtype",
        ),
        (lambda: load_pipeline(gpt), "generate"),
        (lambda: load_pipeline(enc).classify(["ok", ""]), "empty"),
        (lambda: load_pipeline(enc).classify("a string, not a list"), "single string"),
        (lambda: load_pipeline(enc).embed(["x"]), "not 'embed'"),
        (lambda: load_pipeline(enc).classify(["x"], batch_size=0), "batch size"),
        (lambda: load_pipeline(enc).classify(["word " * 300]), "or pass truncate=True"),
        (lambda: Generator(enc), "GPT-2 bundle"),
        (lambda: Generator(gpt).generate("x", max_new_tokens=-1), "max_new_tokens must be"),
        (lambda: Generator(gpt).generate([[3, 99999]], max_new_tokens=2), "outside the vocabulary"),
        (lambda: Generator(gpt).generate([], max_new_tokens=2), "at least one prompt"),
        (lambda: Sampling(temperature=float("nan")), "temperature"),
        (lambda: Sampling(top_p=0), "top_p must be"),
        (lambda: Generator(gpt, kv="magic"), "kv must be"),
        (lambda: perplexity(enc, "text"), "GPT-2 bundle"),
        (lambda: perplexity(gpt, "a"), "two tokens"),
        (lambda: perplexity(gpt, "some longer text here", stride=0), "stride"),
    ]
    for index, (fn, message) in enumerate(cases):
        try:
            _raises(fn, message)
        except BaseException as exc:
            raise AssertionError(f"case {index} ({message!r}): {exc}") from None


def test_sigkilled_export_leaves_the_previous_bundle_intact(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "classify"))
    before = json.loads((path / "manifest.json").read_text())
    env = {**os.environ, "TRTPIPE_QUIET": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-W",
            "ignore",
            str(ROOT / "cli.py"),
            "export",
            "tiny-bert",
            "--task",
            "classify",
            "--out",
            str(path),
            "--overwrite",
            "--seed",
            "7",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    staged = []
    while time.time() < deadline and proc.poll() is None:
        staged = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-")]
        if staged and any(staged[0].iterdir()):
            break
        time.sleep(0.01)
    assert proc.poll() is None, "export finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert staged, "the export never staged a temp dir"
    bundle = Bundle.load(path)  # the previous bundle still loads, verifies and runs
    assert bundle.manifest["source"]["seed"] == before["source"]["seed"] == 0
    assert load_pipeline(bundle).classify(["still works"])[0]["label"]
    litter = [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    assert litter  # a SIGKILL cannot clean up; the next writer must
    from trtpipe.export import export_bundle

    export_bundle("tiny-bert", "classify", path, overwrite=True, seed=7)
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock")]
    assert Bundle.load(path).manifest["source"]["seed"] == 7


def test_external_data_outside_the_bundle_is_refused(make_bundle, copy_bundle, tmp_path):
    import onnx

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    model = onnx.load(str(path / "model.onnx"))
    secret = tmp_path / "secret.bin"
    big = max(model.graph.initializer, key=lambda i: len(i.raw_data))
    secret.write_bytes(big.raw_data)
    big.data_location = onnx.TensorProto.EXTERNAL
    for location in ("../secret.bin", str(secret)):
        del big.external_data[:]
        for key, value in (("location", location), ("offset", "0"), ("length", str(len(big.raw_data)))):
            entry = big.external_data.add()
            entry.key, entry.value = key, value
        raw = big.raw_data
        big.ClearField("raw_data")
        onnx.save(model, str(path / "model.onnx"))
        big.raw_data = raw
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["variants"]["fp32"]["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
        (path / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(UserError, match="outside the bundle; refusing to load it"):
            open_session(path)


def test_unlisted_external_data_is_refused(make_bundle, copy_bundle):
    import onnx

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    model = onnx.load(str(path / "model.onnx"))
    onnx.save_model(
        model,
        str(path / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=1024,
    )
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["variants"]["fp32"]["sha256"] = {"model.onnx": sha256_file(path / "model.onnx")}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not list"):
        open_session(path)
    manifest["variants"]["fp32"]["sha256"]["weights.bin"] = sha256_file(path / "weights.bin")
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert open_session(path).run  # listed and hashed: fine


def test_runtime_never_unpickles():
    sources = "\n".join(p.read_text() for p in (ROOT / "trtpipe" / "runtime").rglob("*.py"))
    for forbidden in ("import pickle", "pickle.load", "torch.load", "allow_pickle=True", "dill", "joblib"):
        assert forbidden not in sources, forbidden


def test_check_finite_names_the_output_that_went_bad(make_bundle, copy_bundle):
    import onnx
    from onnx import numpy_helper

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    model = onnx.load(str(path / "model.onnx"))
    weight = next(i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == 32)
    array = numpy_helper.to_array(weight).copy()
    array[:] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(path / "model.onnx"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["variants"]["fp32"]["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["run", str(path), "hello", "--check-finite"])
    assert (
        result.exit_code == 2 and "output 'last_hidden_state' has" in result.output and "NaN" in result.output
    )
    result = runner.invoke(app, ["parity", str(path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["outputs"]["sentence_embedding"]["nan"] > 0


# ------------------------------------------------------------------------------------------------ fuzzing

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
FUZZ_CLI = settings(
    max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)


@pytest.fixture(scope="module")
def fuzz_targets(make_bundle):
    return {
        task: load_pipeline(make_bundle("tiny-bert", task))
        for task in ("embed", "classify", "ner", "qa", "fill-mask")
    }


@FUZZ
@given(
    ids=st.lists(st.lists(st.integers(-5, 31000), min_size=0, max_size=140), min_size=0, max_size=4),
    dtype=st.sampled_from([np.int64, np.int32, np.float32, np.bool_, np.uint8]),
)
def test_fuzz_session_feeds(fuzz_targets, ids, dtype):
    session = fuzz_targets["embed"].session
    width = max((len(r) for r in ids), default=0)
    array = np.zeros((len(ids), width), dtype=np.int64)
    for row, values in enumerate(ids):
        array[row, : len(values)] = values
    feeds = {
        "input_ids": array.astype(dtype),
        "attention_mask": np.ones_like(array),
        "token_type_ids": np.zeros_like(array),
    }
    try:
        out = session.run(feeds)
    except UserError:
        return
    assert out["sentence_embedding"].shape == (len(ids), 32)


@FUZZ
@given(
    texts=st.lists(st.text(min_size=0, max_size=300), min_size=0, max_size=6),
    batch=st.integers(-1, 9),
    task=st.sampled_from(["embed", "classify", "ner", "fill-mask"]),
    truncate=st.booleans(),
)
def test_fuzz_pipelines(fuzz_targets, texts, batch, task, truncate):
    pipe = fuzz_targets[task]
    call = {"embed": pipe.embed, "classify": pipe.classify, "ner": pipe.ner, "fill-mask": pipe.fill_mask}[
        task
    ]
    try:
        result = call(texts, batch_size=batch, truncate=truncate)
    except UserError:
        return
    assert len(result) == len(texts)
    if task == "ner":
        for text, entities in zip(texts, result):
            for entity in entities:
                assert text[entity["start"] : entity["end"]] == entity["word"]


@FUZZ
@given(question=st.text(max_size=80), context=st.text(max_size=1500))
def test_fuzz_question_answering(fuzz_targets, question, context):
    try:
        answer = fuzz_targets["qa"].qa(question=question, context=context)
    except UserError:
        return
    assert context[answer["start"] : answer["end"]] == answer["answer"]


@FUZZ
@given(
    prompt=st.one_of(st.text(max_size=200), st.lists(st.integers(-3, 2100), max_size=40)),
    new=st.integers(-2, 12),
    temperature=st.one_of(st.floats(-1, 3), st.just(float("nan"))),
    top_k=st.integers(-2, 60),
    top_p=st.floats(-0.5, 1.5),
    seed=st.integers(0, 5),
    stop=st.lists(st.text(max_size=4), max_size=2),
)
def test_fuzz_generation(make_bundle, prompt, new, temperature, top_k, top_p, seed, stop):
    generator = _generator(make_bundle)
    try:
        sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        completion = generator.generate([prompt], max_new_tokens=new, sampling=sampling, stop=stop)[0]
    except UserError:
        return
    assert 1 <= len(completion.ids) <= new
    assert all(s not in completion.text for s in stop if s)


_GENERATORS: dict = {}


def _generator(make_bundle):
    if "g" not in _GENERATORS:
        _GENERATORS["g"] = Generator(make_bundle("tiny-gpt2", "generate"))
    return _GENERATORS["g"]


OPTION_VALUES = st.one_of(
    st.integers(-3, 100).map(str), st.sampled_from(["", "abc", "1e9", "-0", "nan", "∞", "1,2"])
)


@FUZZ_CLI
@given(top_k=OPTION_VALUES, batch=OPTION_VALUES, threads=OPTION_VALUES, text=st.text(max_size=60))
def test_fuzz_cli_arguments(matrix_env, top_k, batch, threads, text):
    result = runner.invoke(
        app,
        [
            "run",
            str(matrix_env["enc"]),
            text,
            "--top-k",
            top_k,
            "--batch-size",
            batch,
            "--threads",
            threads,
            "--json",
        ],
    )
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output
    if result.exit_code == 0:
        assert json.loads(result.stdout)["result"]


# --------------------------------------------------------------------------------------------- concurrency


def test_one_session_from_eight_threads_equals_serial(make_bundle):
    from trtpipe import corpus

    pipe = load_pipeline(make_bundle("tiny-bert", "embed"))
    texts = corpus.sample(64)
    serial = [pipe.embed([t], truncate=True) for t in texts]
    results: dict[int, np.ndarray] = {}
    errors = []

    def work(worker: int) -> None:
        try:
            for index in range(worker, len(texts), 8):
                results[index] = pipe.embed([texts[index]], truncate=True)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for index, expected in enumerate(serial):
        np.testing.assert_array_equal(results[index], expected)


def test_parallel_generate_streams_never_mix_caches(make_bundle):
    generator = Generator(make_bundle("tiny-gpt2", "generate"))
    prompts = [
        "The list of",
        "Return the value",
        "A class is",
        "If the",
        "Python",
        "for loop",
        "import os",
        "def f",
    ]
    serial = [generator.generate(p, max_new_tokens=12)[0].ids for p in prompts]
    results: dict[int, list[int]] = {}

    def work(index: int) -> None:
        results[index] = [t.id for t in generator.stream(prompts[index], max_new_tokens=12)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(8)] == serial
