"""The CLI through typer's test runner, and the console entry point for usage errors (one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trtpipe.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result


def cli(*args, cwd=None):
    """The real entry point (`python cli.py …`) in a subprocess."""
    return subprocess.run(
        [sys.executable, "-W", "ignore", str(ROOT / "cli.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


def test_export_inspect_run_through_the_cli(tmp_path):
    target = tmp_path / "b"
    result = invoke("export", "tiny-bert", "--task", "ner", "--out", target, "--quiet")
    assert result.exit_code == 0, result.output
    result = invoke("inspect", target, "--json")
    assert result.exit_code == 0
    manifest = json.loads(result.stdout)
    assert manifest["task"] == "ner" and manifest["labels"]["1"] == "B-PER"
    result = invoke("run", target, "Ada Lovelace lives in London.", "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["random_weights"] is True and payload["task"] == "ner"
    for ent in payload["result"][0]:
        assert "Ada Lovelace lives in London."[ent["start"] : ent["end"]] == ent["word"]
    human = invoke("run", target, "Ada Lovelace lives in London.")
    assert human.exit_code == 0 and "Ada Lovelace" in human.stdout


@pytest.mark.parametrize(
    "task, args, key",
    [
        ("classify", ["good text", "--top-k", "2"], "scores"),
        ("embed", ["one", "two"], None),
        ("fill-mask", ["Paris is the [MASK] of France."], "token_str"),
        ("qa", ["--question", "Where?", "--context", "The cat sat on the mat in the house."], "answer"),
    ],
)
def test_run_every_task_as_json(make_bundle, task, args, key):
    path = make_bundle("tiny-albert", task)
    result = invoke("run", path, *args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["result"]
    if task == "embed":
        assert len(data) == 2 and len(data[0]) == 32
    elif task == "qa":
        assert key in data
    else:
        first = data[0][0] if isinstance(data[0], list) else data[0]
        assert key in first


def test_run_reads_files_and_rejects_non_utf8(make_bundle, tmp_path):
    path = make_bundle("tiny-bert", "classify")
    good = tmp_path / "texts.txt"
    good.write_text("first line\n\nsecond line\n", encoding="utf-8")
    result = invoke("run", path, "--file", good, "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["result"]) == 2
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("café crème\n".encode("latin-1"))
    result = invoke("run", path, "--file", bad)
    assert result.exit_code == 2
    assert "not UTF-8" in result.output and "iconv" in result.output


def test_long_text_errors_or_truncates_with_warning(make_bundle):
    path = make_bundle("tiny-bert", "classify")
    long_text = "token " * 300
    result = invoke("run", path, long_text)
    assert result.exit_code == 2 and "--truncate" in result.output
    result = invoke("run", path, long_text, "--truncate")
    assert result.exit_code == 0 and "truncated to 128" in result.output
    # a pair that pushes the text past the limit is counted whole, and warned about too
    result = invoke("run", path, "token " * 100, "--text-pair", "token " * 100, "--truncate")
    assert result.exit_code == 0 and "text 1 and its pair have 203 tokens; truncated to 128" in result.output


def test_the_python_pipeline_warns_when_it_truncates(make_bundle):
    """pipe(text, truncate=True) cuts with a TextTruncated warning, as `run --truncate` prints; fitting text and
    truncate=False never warn."""
    import warnings

    from trtpipe.runtime import TextTruncated, load_pipeline

    pipe = load_pipeline(make_bundle("tiny-bert", "classify"))
    with pytest.warns(TextTruncated, match="text 2 has 302 tokens; truncated to 128"):
        pipe(["short", "token " * 300], truncate=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TextTruncated)
        pipe(["short", "token " * 100], truncate=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["run", "{b}", ""], "empty"),
        (["run", "{b}"], "no input text"),
        (["run", "{b}", "x", "--top-k", "0"], "--top-k"),
        (["run", "{b}", "x", "--backend", "cuda"], "unknown backend"),
        (["run", "{b}", "x", "--variant", "int4"], "no variant 'int4'"),
        (["run", "/nonexistent/bundle", "x"], "no bundle at"),
        (["export", "tiny-bert", "--task", "translate"], "unknown task 'translate'"),
        (["export", "no-such-model"], "neither a checkpoint directory nor a preset"),
        (["parity", "{b}", "--samples", "0"], "--samples"),
    ],
)
def test_user_errors_are_one_red_line_exit_2(make_bundle, args, message):
    path = make_bundle("tiny-bert", "classify")
    result = invoke(*[a.format(b=path) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1


def test_entry_point_usage_errors_are_one_line(make_bundle):
    path = make_bundle("tiny-bert", "classify")
    result = cli("run", path, "x", "--bogus")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: No such option: --bogus (see `trtpipe run --help`)"]
    result = cli("frobnicate")
    assert result.returncode == 2 and "No such command" in result.stderr and "Traceback" not in result.stderr
    result = cli("run", path, "x", "--top-k", "many")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    result = cli("run", path, "hello world", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["result"][0]["label"]


def test_parity_command_passes_and_stores_verdict(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-albert", "qa"))
    result = invoke("parity", path, "--json", "--samples", "8")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass" and set(report["outputs"]) == {"start_logits", "end_logits"}
    stored = json.loads((path / "manifest.json").read_text())["variants"]["fp32"]["parity"]["ort-cpu"]
    assert stored["verdict"] == "pass" and stored["samples"] == 8
