"""Demo models: the training code end to end on the `tiny` recipe (seconds), the data it trains on, and the
skip-if-present bookkeeping. The full recipe (`make demo-models`, minutes) is not run here."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trtpipe import corpus
from trtpipe.demo import DEMO_MODELS, is_current, train_demo_models
from trtpipe.demo import data as demo_data
from trtpipe.demo.recipes import META, METRICS, read_meta
from trtpipe.runtime.errors import UserError


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("models")
    result = train_demo_models(out, recipe="tiny")
    return out, result


def test_tiny_run_trains_every_model_with_metadata(tiny_models):
    out, result = tiny_models
    assert result["trained"] == list(DEMO_MODELS) and result["skipped"] == []
    for name in DEMO_MODELS:
        meta = read_meta(out / name)
        assert meta is not None, name
        assert meta["recipe"] == "tiny" and meta["seed"] == 0 and meta["train"]["seconds"] >= 0
        assert len(meta["corpus"]["fingerprint"]) == 16 and meta["weights_sha256"]
        assert (out / name / "tokenizer.json").is_file() and (out / name / "model.safetensors").is_file()
    assert 0 < read_meta(out / "demo-albert")["parameters"] < read_meta(out / "demo-bert")["parameters"]
    classify = read_meta(out / "demo-bert-classify")
    assert classify["metrics"]["chance"] == pytest.approx(1 / len(demo_data.CLASSES))
    assert classify["base"]["weights_sha256"] == read_meta(out / "demo-bert")["weights_sha256"]
    metrics = json.loads((out / METRICS).read_text())
    assert set(metrics["models"]) == set(DEMO_MODELS)
    assert set(metrics["albert_vs_bert"]["mlm_top1"]) == {"demo-bert", "demo-albert"}
    assert not list(out.glob(".*tmp*")), "temp dirs left behind"


@pytest.mark.parametrize(
    ("name", "task"),
    [("demo-gpt2", "generate"), ("demo-bert-classify", "classify"), ("demo-albert", "fill-mask")],
)
def test_tiny_checkpoints_export_and_pass_parity(tiny_models, tmp_path, name, task):
    from trtpipe.export import export_bundle
    from trtpipe.runtime.bundle import Bundle

    out, _ = tiny_models
    bundle = Bundle.load(export_bundle(str(out / name), task, tmp_path / name))
    assert bundle.variants["fp32"]["parity"]["ort-cpu"]["verdict"] == "pass"
    assert not bundle.random_weights
    if task == "classify":
        assert list(bundle.manifest["labels"].values()) == list(demo_data.CLASSES)
    if task == "fill-mask":
        tokenizer = bundle.manifest["tokenizer"]
        assert tokenizer["mask_token"] == "[MASK]" and tokenizer["mask_id"] == 4 and tokenizer["pad_id"] == 0


def test_a_demo_bundle_checks_parity_from_any_working_directory(tiny_models, tmp_path, monkeypatch):
    """Exported by preset name from $TRTPIPE_MODELS, checked later from elsewhere: the reference is rebuilt from the
    checkpoint the manifest names; with that gone, the error says where it looked and how to point at it."""
    from trtpipe.cli import app
    from trtpipe.export import export_bundle

    out, _ = tiny_models
    models = tmp_path / "models"
    shutil.copytree(out / "demo-bert-classify", models / "demo-bert-classify")
    monkeypatch.setenv("TRTPIPE_MODELS", str(models))
    bundle = export_bundle("demo-bert-classify", "classify", tmp_path / "bundle")
    monkeypatch.delenv("TRTPIPE_MODELS")
    monkeypatch.chdir(tmp_path / "bundle")  # no models/ here
    result = CliRunner().invoke(app, ["parity", str(bundle), "--json"])
    assert result.exit_code == 0, result.output
    assert "pass" in result.output
    shutil.rmtree(models)
    result = CliRunner().invoke(app, ["parity", str(bundle)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert "not trained yet" in message and "$TRTPIPE_MODELS" in message


def test_encoder_tokenizer_as_the_runtime_reads_it(tiny_models):
    from tokenizers import Tokenizer

    out, _ = tiny_models
    tok = Tokenizer.from_file(str(out / "demo-bert" / "tokenizer.json"))
    single, pair = tok.encode_batch(["Return a [MASK] object.", ("First part.", "Second part.")])
    assert single.tokens[0] == "[CLS]" and single.tokens[-1] == "[SEP]" and "[MASK]" in single.tokens
    assert pair.tokens.count("[SEP]") == 2 and set(pair.type_ids) == {0, 1}
    assert pair.type_ids[-1] == 1 and pair.sequence_ids[1] == 0 and pair.sequence_ids[-2] == 1
    word = single.tokens.index("[MASK]")
    assert single.offsets[word] == (9, 15) and single.special_tokens_mask[0] == 1


def test_present_models_are_skipped_and_force_retrains_only_the_named(tiny_models):
    out, _ = tiny_models
    again = train_demo_models(out, recipe="tiny")
    assert again["trained"] == [] and again["skipped"] == list(DEMO_MODELS)
    before = read_meta(out / "demo-albert-classify")["created"]
    forced = train_demo_models(out, force=True, only=["demo-albert-classify"], recipe="tiny")
    assert forced["trained"] == ["demo-albert-classify"] and forced["skipped"] == ["demo-albert"]
    assert read_meta(out / "demo-albert-classify")["created"] >= before
    assert not is_current(out, "demo-gpt2", recipe="full")  # a tiny model never stands in for the full one


def test_a_classifier_of_a_changed_base_is_stale(tiny_models, tmp_path):
    out, _ = tiny_models
    for name in ("demo-bert", "demo-bert-classify"):
        (tmp_path / name).mkdir()
        for file in ("config.json", META):
            shutil.copy(out / name / file, tmp_path / name / file)
    assert is_current(tmp_path, "demo-bert-classify", recipe="tiny")
    meta = json.loads((tmp_path / "demo-bert" / META).read_text())
    meta["weights_sha256"] = "retrained"
    (tmp_path / "demo-bert" / META).write_text(json.dumps(meta))
    assert not is_current(tmp_path, "demo-bert-classify", recipe="tiny")
    (tmp_path / "demo-bert" / META).write_text("{not json")
    assert not is_current(tmp_path, "demo-bert", recipe="tiny")


def test_training_is_deterministic(tiny_models, tmp_path):
    out, _ = tiny_models
    result = train_demo_models(tmp_path, only=["demo-gpt2"], recipe="tiny")
    assert result["trained"] == ["demo-gpt2"]
    assert (
        read_meta(tmp_path / "demo-gpt2")["weights_sha256"] == read_meta(out / "demo-gpt2")["weights_sha256"]
    )


def test_classification_data_is_deterministic_balanced_and_split_by_hash():
    data = demo_data.classification_data()
    again = demo_data.classification_data.__wrapped__()
    assert data == again
    for split in ("train", "heldout"):
        counts = Counter(e.label for e in data[split])
        assert sorted(counts) == list(range(len(demo_data.CLASSES)))
        assert len(set(counts.values())) == 1, counts  # balanced
        assert min(counts.values()) >= (100 if split == "train" else 15)
    train_texts = {e.text for e in data["train"]}
    heldout_texts = {e.text for e in data["heldout"]}
    assert not train_texts & heldout_texts
    assert all(corpus.is_heldout(t) for t in heldout_texts)
    assert not any(corpus.is_heldout(t) for t in train_texts)
    for example in data["train"][:50]:
        modules = demo_data.CLASSES[list(demo_data.CLASSES)[example.label]]
        assert example.module.split(".")[0] in modules


def test_heldout_text_never_reaches_training():
    units = {split: set() for split in ("train", "heldout")}
    for doc in demo_data.documents():
        for unit in doc:
            units["heldout" if corpus.is_heldout(unit) else "train"].add(unit)
    assert units["train"] and units["heldout"] and not units["train"] & units["heldout"]
    train_stream = "\x00".join(demo_data.split_texts("train"))
    heldout_docstrings = [e.text for e in demo_data.classification_data()["heldout"]]
    assert heldout_docstrings and all(t in units["heldout"] for t in heldout_docstrings)
    assert not any(t in train_stream for t in heldout_docstrings)


def test_unwrap_joins_prose_and_keeps_code():
    text = "A sentence that is\nwrapped here.\n\n   code = 1\n   more = 2\n"
    assert demo_data.unwrap(text) == "A sentence that is wrapped here.\n\n   code = 1\n   more = 2"


def test_unknown_model_names_are_user_errors(tmp_path):
    from trtpipe.cli import app

    with pytest.raises(UserError, match="unknown demo model"):
        train_demo_models(tmp_path, only=["demo-gpt3"])
    result = CliRunner().invoke(app, ["demo-models", "--out", str(tmp_path), "--only", "demo-gpt2,nope"])
    assert result.exit_code == 2 and "unknown demo model nope" in result.output


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_training_loop_autocasts_to_bf16_only_where_the_cpu_has_it(monkeypatch, native_bf16):
    """Emulated bf16 costs ~30x a step on AVX2-only CPUs: there the loop trains in fp32, and says so."""
    import torch

    from trtpipe.demo import train

    monkeypatch.setattr(train, "autocast_dtype", lambda: torch.bfloat16 if native_bf16 else None)
    seen = []
    model = torch.nn.Linear(4, 2)

    def loss_fn(m, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        out = m(batch)
        assert out.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
        return out.float().pow(2).mean()

    batches = iter([torch.ones(3, 4)] * 2)
    losses = train.train_loop(model, batches, loss_fn, steps=2, lr=1e-3, warmup=1)
    assert seen == [native_bf16] * 2 and len(losses) == 2
    assert train.precision_label().startswith("bf16" if native_bf16 else "fp32")
