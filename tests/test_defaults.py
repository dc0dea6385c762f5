"""Every command's defaults fit the smallest bundles the project makes (tiny presets, a 16-token encoder): a default
that does not fit a bundle is dropped or shrunk with a note, and only a value the user gave that does not fit is an
error (one line naming the limit and the fix, exit 2)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from trtpipe.benchmark.shapes import compare_seq, decoder_shapes, encoder_shapes
from trtpipe.cli import app
from trtpipe.runtime import UserError

SMALL = [
    ("tiny-bert", "classify", {}),
    ("tiny-albert", "fill-mask", {}),
    ("tiny-bert", "qa", {}),
    ("tiny-bert", "classify", {"max_length": 16}),
    ("tiny-gpt2", "generate", {}),
]
QUICK = ["--iters", "1", "--rounds", "1", "--warmup", "0", "--no-memory"]


def _id(item) -> str:
    preset, task, options = item
    return "-".join([preset, task, *(f"{k}{v}" for k, v in options.items())])


def _invoke(args: list[str]):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


def _input(task: str) -> list[str]:
    return {
        "generate": ["The list of"],
        "qa": ["--question", "Who sat?", "--context", "The cat sat on the mat."],
        "fill-mask": ["Raise a [MASK] if the key is missing."],
    }.get(task, ["The cat sat on the mat."])


@pytest.mark.parametrize("item", SMALL, ids=_id)
def test_every_command_runs_with_its_defaults(make_bundle, tmp_path, item):
    preset, task, options = item
    path = make_bundle(preset, task, **options)
    decoder = task == "generate"
    commands = [
        ["inspect", path],
        ["generate" if decoder else "run", path, *_input(task)],
        ["benchmark", "--engine", path, *QUICK, "--out", tmp_path / "reports"],
        ["advise", path],
        ["build", path, "--print-trtexec"],
        ["lint", path, "--table"],
        ["triton", path, "--out", tmp_path / "repo"],
    ]
    if decoder:
        text = tmp_path / "text.txt"
        text.write_text("The cat sat on the mat. It was a sunny day, and the list of files was long.\n" * 4)
        commands.append(["score", path, text])
    if task in ("classify", "embed"):
        commands.append(["benchmark", "--engine", path, "--workload", text_file(tmp_path), "--rounds", "1"])
    for args in commands:
        result = _invoke(args)
        assert result.exit_code == 0, (args, result.output)


def text_file(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_text(
        "A short one.\nA somewhat longer sentence about the files in a directory and their names.\n"
    )
    return path


def test_compare_runs_with_its_defaults(make_bundle, tmp_path):
    paths = [make_bundle(p, t, **o) for p, t, o in SMALL if p != "tiny-albert"]
    result = _invoke(["compare", *paths, "--no-memory", "--out", tmp_path, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert report["seq"] == 16  # the 16-token bundle sets the length every model is measured at
    assert "sequence length 128 does not fit" in result.output


def test_decoder_benchmark_drops_a_default_prompt_that_does_not_fit(make_bundle, tmp_path):
    path = make_bundle("tiny-gpt2", "generate")
    result = _invoke(["benchmark", "--engine", path, "--new-tokens", "4", *QUICK, "--out", tmp_path])
    assert result.exit_code == 0, result.output
    assert (
        "prompt length 512 does not fit tiny-gpt2-generate's 256 positions with 4 new tokens; measuring 32 only"
        in (" ".join(result.output.split()))
    )
    report = json.loads((tmp_path / f"benchmark-{path.name}.json").read_text())
    assert report["config"]["prompt_lens"] == [32] and [r["prompt_len"] for r in report["decoder"]] == [32]
    assert any("512" in note for note in report["notes"])
    assert "note: prompt length 512" in (tmp_path / f"benchmark-{path.name}.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prompt-len", "512"], "--prompt-len 512 leaves no room in tiny-gpt2-generate's 256 positions"),
        (["--prompt-len", "255"], "pass --prompt-len 254 or less"),
        (
            ["--prompt-len", "32,250", "--new-tokens", "64"],
            "prompt 250 + 64 new tokens exceeds tiny-gpt2-generate's 256 positions; pass --prompt-len 192 or less",
        ),
        (["--new-tokens", "300"], "pass --new-tokens 255 or less"),
        (["--new-tokens", "1"], "--new-tokens must be ≥ 2"),
    ],
)
def test_an_explicit_decoder_shape_that_does_not_fit_is_an_error(make_bundle, tmp_path, args, message):
    path = make_bundle("tiny-gpt2", "generate")
    result = _invoke(["benchmark", "--engine", path, *args, *QUICK, "--out", tmp_path])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert not list(tmp_path.iterdir())  # nothing written


def test_encoder_benchmark_cuts_the_default_seq_and_refuses_an_explicit_one(make_bundle, tmp_path):
    path = make_bundle("tiny-bert", "classify", max_length=16)
    result = _invoke(["benchmark", "--engine", path, *QUICK, "--out", tmp_path])
    assert result.exit_code == 0, result.output
    assert "sequence length 128 does not fit" in result.output
    report = json.loads((tmp_path / f"benchmark-{path.name}.json").read_text())
    assert {(r["batch"], r["seq"]) for r in report["encoder"]} == {(1, 16), (8, 16)}
    result = _invoke(["benchmark", "--engine", path, "--seq", "32", *QUICK, "--out", tmp_path])
    assert result.exit_code == 2
    assert "--seq 32 exceeds" in result.output and "pass --seq 16 or less" in " ".join(result.output.split())


# ------------------------------------------------------------------------------- the pure shape rules


def _bundle(positions: int, decoder: bool, max_length: int | None = None, engines: dict | None = None):
    return SimpleNamespace(
        name="b",
        path="b",
        is_decoder=decoder,
        limits={"max_positions": positions},
        max_length=max_length or positions,
        engines=engines or {},
    )


def test_decoder_shape_rules():
    small = _bundle(256, True)
    assert decoder_shapes(small, None, None).prompt_lens == [32]
    shapes = decoder_shapes(_bundle(1024, True), None, None)
    assert (shapes.prompt_lens, shapes.new_tokens, shapes.notes) == ([32, 512], 64, [])
    shapes = decoder_shapes(small, [250], None)  # an explicit prompt keeps; the default new tokens shrink
    assert shapes.new_tokens == 6 and "measuring 6 new tokens" in shapes.notes[0]
    shapes = decoder_shapes(small, None, 250)  # explicit new tokens; no default prompt fits: the room left
    assert shapes.prompt_lens == [6] and "measuring a 6-token prompt instead" in shapes.notes[0]
    shapes = decoder_shapes(_bundle(64, True), None, None)  # not even 32 + 64 fits
    assert shapes.prompt_lens[0] + shapes.new_tokens <= 64 and len(shapes.notes) == 2
    with pytest.raises(UserError, match="pass --prompt-len 192 or less"):
        decoder_shapes(small, [32, 200], 64)


def test_encoder_shape_rules():
    shapes = encoder_shapes(_bundle(128, False, max_length=16), None, None)
    assert (shapes.batches, shapes.seq) == ([1, 8], 16) and "128" in shapes.notes[0]
    assert encoder_shapes(_bundle(512, False), None, None).notes == []
    shapes = encoder_shapes(
        _bundle(512, False), None, None, max_batch=4, max_seq=64
    )  # a TensorRT engine's maxima
    assert (shapes.batches, shapes.seq) == ([1], 64) and len(shapes.notes) == 2
    with pytest.raises(UserError, match="pass --batch 4 or less"):
        encoder_shapes(_bundle(512, False), [8], None, max_batch=4)
    with pytest.raises(UserError, match="pass --seq 16 or less"):
        encoder_shapes(_bundle(128, False, max_length=16), None, 17)


def test_compare_seq_rules():
    encoder, decoder = _bundle(512, False, max_length=64), _bundle(100, True)
    assert compare_seq([_bundle(512, False), _bundle(1024, True)], None, 17) == (128, [])
    seq, notes = compare_seq([encoder, decoder], None, 17)
    assert seq == 64 and "does not fit" in notes[0]
    assert compare_seq([_bundle(512, False), decoder], None, 17)[0] == 83
    with pytest.raises(UserError, match="pass --seq 83 or less"):
        compare_seq([decoder], 90, 17)
