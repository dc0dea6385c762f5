"""Export: every family × task on tiny models passes parity; ALBERT sharing and tied weights survive; intake."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import ENCODER_TASKS

from trtpipe.runtime import Bundle, UserError


@pytest.mark.parametrize("family", ["tiny-bert", "tiny-albert"])
@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_encoder_export_passes_parity(make_bundle, family, task):
    path = make_bundle(family, task)
    bundle = Bundle.load(path)
    verdict = bundle.variants["fp32"]["parity"]["ort-cpu"]
    assert verdict["verdict"] == "pass", verdict
    assert all(o["max_abs"] <= 1e-4 for o in verdict["outputs"].values())
    model = onnx.load(str(bundle.model_path()))
    assert model.opset_import[0].version >= 17
    onnx.checker.check_model(model)
    # every dynamic axis is named and the I/O matches the manifest exactly
    for value, spec in zip(model.graph.input, bundle.manifest["inputs"]):
        assert value.name == spec["name"]
        assert [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] == spec["shape"]
    assert [o.name for o in model.graph.output] == [o["name"] for o in bundle.manifest["outputs"]]


def test_embed_outputs_normalised_embeddings(make_bundle):
    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    assert [o["name"] for o in bundle.manifest["outputs"]] == ["last_hidden_state", "sentence_embedding"]


def test_albert_base_onnx_stays_the_size_of_its_parameters(make_bundle):
    """Cross-layer sharing survives export: 12 layers share one set of weights (≈45 MB, not hundreds)."""
    bundle = Bundle.load(make_bundle("albert-base", "embed"))
    params = bundle.model["parameter_bytes"]
    size = bundle.variants["fp32"]["bytes"]
    assert params < 50e6
    assert size <= 1.1 * params, f"ONNX {size / 2**20:.1f} MiB vs parameters {params / 2**20:.1f} MiB"


def test_tied_mlm_head_is_stored_once(make_bundle):
    """The MLM decoder is tied to the word embeddings; constant folding would store a transposed copy."""
    bundle = Bundle.load(make_bundle("tiny-albert", "fill-mask"))
    assert bundle.variants["fp32"]["graph"]["tied_bytes_saved"] > 0
    assert bundle.variants["fp32"]["bytes"] <= 1.1 * bundle.model["parameter_bytes"]
    model = onnx.load(str(bundle.model_path()))
    vocab = bundle.limits["vocab_size"]
    big = [i for i in model.graph.initializer if vocab in i.dims]
    assert len([i for i in big if len(i.dims) == 2]) == 1  # one [V, E] matrix serves Gather and the head


def test_albert_layers_read_the_shared_weights_themselves(make_bundle):
    """torch.onnx exports a reused parameter as Identity(initializer); every ALBERT layer must read the initializer
    itself, or quantizers and fusion treat layers 2..L's weights as activations (int8 ALBERT was 1.03× for that)."""
    bundle = Bundle.load(make_bundle("tiny-albert", "classify"))
    model = onnx.load(str(bundle.model_path()))
    inits = {i.name for i in model.graph.initializer}
    assert not [n.name for n in model.graph.node if n.op_type == "Identity" and n.input[0] in inits]
    weights = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert (
        len(weights) == 6 * bundle.model["num_layers"] + 1
    )  # Q, K, V, out, FFN in/out per layer + embedding map
    assert len({n.input[1] for n in weights}) == 7  # ... and shared: one set of layer weights


def test_existing_bundle_needs_overwrite(make_bundle):
    from trtpipe.export import export_bundle

    path = make_bundle("tiny-bert", "classify")
    with pytest.raises(UserError, match="--overwrite"):
        export_bundle("tiny-bert", "classify", path)


def _save_checkpoint(tmp_path, safetensors=True, model_type="bert"):
    import transformers

    from trtpipe.export.vocab import minilm_dir

    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        id2label={0: "NEG", 1: "POS", 2: "NEU"},
        label2id={"NEG": 0, "POS": 1, "NEU": 2},
    )
    model = transformers.BertForSequenceClassification(config)
    target = tmp_path / "ckpt"
    model.save_pretrained(target, safe_serialization=safetensors)
    transformers.AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(target)
    return target


def test_checkpoint_directory_export_keeps_labels(tmp_path):
    from trtpipe.export import export_bundle

    ckpt = _save_checkpoint(tmp_path)
    path = export_bundle(str(ckpt), "classify", tmp_path / "out")
    bundle = Bundle.load(path)
    assert bundle.labels == {0: "NEG", 1: "POS", 2: "NEU"}
    assert bundle.manifest["source"]["kind"] == "checkpoint"
    assert bundle.manifest["source"]["random_head"] is False
    assert bundle.limits["max_positions"] == 64
    assert bundle.variants["fp32"]["parity"]["ort-cpu"]["verdict"] == "pass"


def test_a_missing_task_head_is_flagged_wherever_its_answers_show(tmp_path):
    """A classification checkpoint exported for QA gets a random QA head: the manifest, `run` (line and --json) and
    load_pipeline all say so."""
    from typer.testing import CliRunner

    from trtpipe.cli import app
    from trtpipe.export import export_bundle
    from trtpipe.runtime import load_pipeline

    path = export_bundle(str(_save_checkpoint(tmp_path)), "qa", tmp_path / "qa")
    bundle = Bundle.load(path)
    assert bundle.random_head and not bundle.random_weights
    args = ["run", str(path), "--question", "Who?", "--context", "Guido van Rossum created Python."]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "randomly initialised" in " ".join(result.output.split())
    assert json.loads(CliRunner().invoke(app, [*args, "--json"]).output)["random_head"] is True
    with pytest.warns(UserWarning, match="randomly initialised"):
        load_pipeline(path)


def test_bin_checkpoint_loads_with_weights_only(tmp_path):
    from trtpipe.export import export_bundle

    ckpt = _save_checkpoint(tmp_path, safetensors=False)
    assert (ckpt / "pytorch_model.bin").exists()
    path = export_bundle(str(ckpt), "classify", tmp_path / "out")
    assert Bundle.load(path).manifest["source"]["weights_format"].startswith("pytorch_model.bin")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    import pickle

    from trtpipe.export import export_bundle

    ckpt = _save_checkpoint(tmp_path, safetensors=False)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    import torch

    with open(ckpt / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"bert.embeddings.word_embeddings.weight": Exploit(), "x": torch.zeros(1)}, handle)
    with pytest.raises(UserError, match="refused to load"):
        export_bundle(str(ckpt), "classify", tmp_path / "out")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_bad_model_inputs(tmp_path):
    from trtpipe.export import export_bundle

    with pytest.raises(UserError, match="neither a checkpoint directory nor a preset"):
        export_bundle(str(tmp_path / "missing"), "classify", tmp_path / "o1")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="no config.json"):
        export_bundle(str(empty), "classify", tmp_path / "o2")
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(UserError, match="unsupported architecture 't5'.*bert.*albert.*gpt2"):
        export_bundle(str(t5), "classify", tmp_path / "o3")
    with pytest.raises(UserError, match="task 'generate' is not available for bert"):
        export_bundle("tiny-bert", "generate", tmp_path / "o4")
    with pytest.raises(UserError, match="task 'classify' is not available for gpt2"):
        export_bundle("tiny-gpt2", "classify", tmp_path / "o5")
    with pytest.raises(UserError, match="--opset"):
        export_bundle("tiny-bert", "classify", tmp_path / "o6", opset=11)
    with pytest.raises(UserError, match="--max-length"):
        export_bundle("tiny-bert", "classify", tmp_path / "o7", max_length=100000)
    assert not any(
        p.name.startswith(("o", ".o")) for p in tmp_path.iterdir() if p.is_dir() and p.name != "t5"
    )


def test_max_length_is_recorded_and_enforced(make_bundle):
    from trtpipe.runtime import load_pipeline

    bundle = Bundle.load(make_bundle("tiny-bert", "classify", max_length=16))
    assert bundle.max_length == 16
    pipe = load_pipeline(bundle)
    long_text = "word " * 40
    with pytest.raises(UserError, match="longer than the model's limit of 16"):
        pipe.classify([long_text])
    assert pipe.classify([long_text], truncate=True)[0]["label"] in ("NEGATIVE", "POSITIVE")


def test_minilm_embeddings_match_sentence_transformers(make_bundle):
    """Real weights: the bundle's in-graph pooling equals sentence-transformers' all-MiniLM-L6-v2 output."""
    from sentence_transformers import SentenceTransformer

    from trtpipe import corpus
    from trtpipe.export.vocab import minilm_dir
    from trtpipe.runtime import load_pipeline

    texts = corpus.sample(12)
    ours = load_pipeline(make_bundle("minilm", "embed")).embed(texts, batch_size=5)
    reference = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    cosine = np.sum(ours * reference, axis=1)
    assert cosine.min() > 0.99999, cosine
    assert not Bundle.load(make_bundle("minilm", "embed")).random_weights
