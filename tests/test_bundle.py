"""Bundle format: schema, round trip, versions, hashes, path confinement, locking, atomic replacement."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from trtpipe.runtime import Bundle, UserError, open_session
from trtpipe.runtime.manifest import FORMAT_VERSION, validate_manifest
from trtpipe.runtime.paths import inside
from trtpipe.runtime.store import BundleLock, bundle_transaction, staged_bundle, write_manifest


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_manifest_schema_and_round_trip(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "classify"))
    bundle = Bundle.load(path)
    m = bundle.manifest
    assert m["format_version"] == FORMAT_VERSION
    for key in (
        "family",
        "task",
        "source",
        "model",
        "labels",
        "inputs",
        "outputs",
        "limits",
        "tokenizer",
        "variants",
        "engines",
    ):
        assert key in m, key
    assert m["source"]["seed"] == 0 and m["source"]["random_weights"] is True
    assert len(m["source"]["weights_sha256"]) == 64
    assert set(m["source"]["versions"]) >= {"torch", "transformers", "onnx", "trtpipe"}
    assert bundle.labels == {0: "NEGATIVE", 1: "POSITIVE"}
    assert [i["name"] for i in m["inputs"]] == ["input_ids", "attention_mask", "token_type_ids"]
    write_manifest(path, m)
    again = Bundle.load(path)
    assert again.manifest["variants"] == m["variants"] and again.labels == bundle.labels


def test_previous_format_loads_and_newer_is_refused(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    data = _manifest(path)
    old = dict(data, format_version=FORMAT_VERSION - 1)
    old.pop("engines")
    old["limits"] = {k: v for k, v in data["limits"].items() if k != "max_length"}
    (path / "manifest.json").write_text(json.dumps(old))
    bundle = Bundle.load(path)
    assert bundle.engines == {} and bundle.max_length == data["limits"]["max_positions"]
    assert open_session(bundle).output_names  # still opens
    (path / "manifest.json").write_text(json.dumps(dict(data, format_version=FORMAT_VERSION + 1)))
    with pytest.raises(UserError, match="newer than this trtpipe reads.*upgrade trtpipe"):
        Bundle.load(path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda m: m.update(family="t5"), "unknown family"),
        (lambda m: m.update(task="translate"), "unknown task"),
        (lambda m: m["limits"].update(max_positions=10**9), "limits.max_positions"),
        (lambda m: m["limits"].update(vocab_size=-1), "limits.vocab_size"),
        (lambda m: m["inputs"][0].update(shape=["batch", 10**9]), "invalid dimension"),
        (lambda m: m["inputs"][0].update(dtype="complex128"), "dtype"),
        (lambda m: m["inputs"][0].update(name=""), "has an input without a name"),
        (lambda m: m["variants"]["fp32"].update(sha256={"/etc/passwd": "0"}), "absolute path"),
        (lambda m: m["variants"]["fp32"].update(sha256={"../x.onnx": "0"}), "leaves the bundle"),
        (lambda m: m["tokenizer"].update(file="../../tokenizer.json"), "leaves the bundle"),
        (lambda m: m.pop("variants"), "no fp32 variant"),
        (lambda m: m.update(format_version="2"), "format_version"),
    ],
)
def test_invalid_manifests_are_refused(make_bundle, copy_bundle, mutate, message):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    data = _manifest(path)
    mutate(data)
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match=message):
        Bundle.load(path)


def test_corrupt_and_missing_manifest(tmp_path, make_bundle, copy_bundle):
    with pytest.raises(UserError, match="no bundle at"):
        Bundle.load(tmp_path / "nope")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="no manifest.json"):
        Bundle.load(tmp_path / "plain")
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(UserError, match="manifest.json is corrupt"):
        Bundle.load(path)


def test_symlink_out_of_bundle_is_refused(make_bundle, copy_bundle, tmp_path):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    outside = tmp_path / "outside.onnx"
    shutil.copy(path / "model.onnx", outside)
    (path / "model.onnx").unlink()
    os.symlink(outside, path / "model.onnx")
    with pytest.raises(UserError, match="outside the bundle"):
        Bundle.load(path)
    with pytest.raises(UserError, match="outside the bundle"):
        inside(path, "model.onnx")


def test_hash_mismatch_and_truncation_are_caught_before_loading(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    data = (path / "model.onnx").read_bytes()
    (path / "model.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="does not match its sha256.*re-export"):
        open_session(path)
    (path / "model.onnx").unlink()
    with pytest.raises(UserError, match="model.onnx .* is missing"):
        open_session(path)


def test_inspect_fails_a_file_that_no_longer_matches_the_manifest(make_bundle, copy_bundle):
    """Sizes are checked on every inspect (a stat per file), sha256 with --verify; a mismatch is a failed check
    (exit 1, like parity), shown in the file's row, and the fix is named."""
    from typer.testing import CliRunner

    from trtpipe.cli import app
    from trtpipe.runtime.paths import sha256_file

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    plan = path / "engines" / "fp32.rtx-ampere.plan"
    plan.parent.mkdir()
    plan.write_bytes(b"plan" * 64)
    data = _manifest(path)
    engine = {"flavour": "rtx", "variant": "fp32", "sha256": sha256_file(plan), "bytes": 256}
    data["engines"] = {"engines/fp32.rtx-ampere.plan": engine, "engines/gone.plan": dict(engine)}
    write_manifest(path, data)

    def inspect(*options):
        result = CliRunner().invoke(app, ["inspect", str(path), *options])
        return result.exit_code, " ".join(result.stdout.split()), " ".join(result.stderr.split())

    code, shown, error = inspect()
    assert code == 1 and "engine engines/gone.plan: engines/gone.plan is missing" in error
    assert "trtpipe build" in error and shown.count("size ok") == 2  # fp32 and the good plan
    data["engines"].pop("engines/gone.plan")
    write_manifest(path, data)
    assert inspect()[0] == 0

    model = path / "model.onnx"
    whole = model.read_bytes()
    model.write_bytes(whole[: len(whole) // 2])
    code, shown, error = inspect()
    assert (
        code == 1 and f"FAIL: {len(whole) // 2:,} bytes on disk, the manifest records {len(whole):,}" in shown
    )
    assert error.startswith("check failed:") and "variant fp32" in error and "re-export" in error
    assert Bundle.load(path).file_problems() == {
        ("variant", "fp32"): f"{len(whole) // 2:,} bytes on disk, the manifest records {len(whole):,}"
    }
    code, _, error = inspect("--json")
    assert code == 1 and "variant fp32" in error

    flipped = bytearray(whole)  # same size, different bytes: only the sha256 sees it
    flipped[len(whole) // 2] ^= 0xFF
    model.write_bytes(bytes(flipped))
    assert inspect()[0] == 0
    code, shown, error = inspect("--verify")
    assert code == 1 and "model.onnx does not match its sha256" in shown and "sha256 ok" in shown
    plan.write_bytes(b"nalp" * 64)
    assert ("engine", "engines/fp32.rtx-ampere.plan") in Bundle.load(path).file_problems(sha256=True)


def test_corrupt_model_with_matching_hash_is_a_user_error(make_bundle, copy_bundle):
    from trtpipe.runtime.paths import sha256_file

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    for content, message in (
        (b"\x08\x07garbage" * 100, "not a readable ONNX file"),  # not protobuf at all
        (b"\x08\x07", "could not load .*corrupt or truncated"),
    ):  # protobuf, but no model
        (path / "model.onnx").write_bytes(content)
        data = _manifest(path)
        data["variants"]["fp32"]["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
        (path / "manifest.json").write_text(json.dumps(data))
        with pytest.raises(UserError, match=message):
            open_session(path)


def test_second_writer_gets_a_clear_error(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    with (
        BundleLock(path),
        pytest.raises(UserError, match="another trtpipe process .* is writing"),
        bundle_transaction(path),
    ):
        pass
    # the lock is gone afterwards and nothing is left behind
    with bundle_transaction(path):
        pass
    assert not list(path.parent.glob(f".{path.name}*"))


def test_failed_staging_leaves_previous_bundle_intact(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    before = _manifest(path)
    with pytest.raises(RuntimeError), staged_bundle(path, overwrite=True) as staging:
        (staging / "half-written").write_text("x")
        raise RuntimeError("export crashed")
    assert _manifest(path) == before
    assert not [p for p in path.parent.iterdir() if ".tmp-" in p.name]
    Bundle.load(path).model_path()


def test_staged_bundle_replaces_atomically(tmp_path):
    target = tmp_path / "b"
    target.mkdir()
    (target / "old").write_text("old")
    with staged_bundle(target, overwrite=True) as staging:
        (staging / "new").write_text("new")
    assert (target / "new").exists() and not (target / "old").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_transaction_rolls_back_staged_files(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    with pytest.raises(RuntimeError), bundle_transaction(path) as (bundle, stage):
        stage(path / "model.extra.onnx").write_text("partial")
        bundle.manifest["variants"]["extra"] = {
            "file": "model.extra.onnx",
            "sha256": {"model.extra.onnx": "0"},
        }
        raise RuntimeError("optimizer crashed")
    assert "extra" not in Bundle.load(path).variants
    assert not (path / "model.extra.onnx").exists()
    assert not [p for p in path.iterdir() if ".tmp-" in p.name]


def test_validate_manifest_accepts_written_manifest(make_bundle):
    path = make_bundle("tiny-bert", "qa")
    validate_manifest(path, _manifest(path))
