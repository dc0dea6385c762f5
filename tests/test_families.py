"""The encoder families beyond BERT and ALBERT, through every stage: export and parity per task, the graph's inputs,
Optimum's ORTModel on our bundles, sentence-transformers pooling, exact character offsets, fusion, fp16, int8 under
its gate, TensorRT-RTX plans with lint and advice, the Triton repository."""

from __future__ import annotations

import importlib
import json
import shutil
import unicodedata

import numpy as np
import pytest
from conftest import ENCODER_TASKS, assert_close
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.models import MODELS
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import Bundle, UserError, load_pipeline, open_session
from trtpipe.runtime.text import TextEncoder

# family -> does its graph take token_type_ids
FAMILIES = {
    "distilbert": False,
    "roberta": False,
    "xlm-roberta": False,
    "electra": True,
    "mpnet": False,
    "deberta-v2": False,
    "modernbert": False,
}
HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ENCODER_TASKS)
def test_family_exports_every_task_and_passes_parity(make_bundle, family, task):
    import onnx

    bundle = Bundle.load(make_bundle(f"tiny-{family}", task))
    assert bundle.manifest["family"] == family
    verdict = bundle.variants["fp32"]["parity"]["ort-cpu"]
    assert verdict["verdict"] == "pass", verdict
    assert all(o["max_abs"] <= 1e-4 for o in verdict["outputs"].values())
    model = onnx.load(str(bundle.model_path()))
    inputs = [i.name for i in model.graph.input]
    expected = ["input_ids", "attention_mask"] + (["token_type_ids"] if FAMILIES[family] else [])
    assert inputs == expected == bundle.input_names()
    assert [o.name for o in model.graph.output] == [o["name"] for o in bundle.manifest["outputs"]]
    tokenizer_config = json.loads((bundle.path / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_input_names"] == expected


@pytest.mark.parametrize("family", [f for f, types in FAMILIES.items() if not types])
def test_feeds_with_token_type_ids_are_refused_where_the_family_has_none(make_bundle, family):
    bundle = Bundle.load(make_bundle(f"tiny-{family}", "classify"))
    encoder = TextEncoder(bundle)
    feeds = encoder.collate(encoder.encode(["a first text", "and a second one"])).feeds
    session = open_session(bundle)
    session.run(feeds)
    with pytest.raises(UserError, match="no token_type_ids input.*drop token_type_ids"):
        session.run({**feeds, "token_type_ids": np.zeros_like(feeds["input_ids"])})


def test_roberta_positions_start_after_the_padding_index(make_bundle):
    """RoBERTa counts position ids from padding_idx + 1: 130 position rows hold 128 tokens, and 129 are refused."""
    bundle = Bundle.load(make_bundle("tiny-roberta", "classify"))
    assert bundle.limits["max_positions"] == 130 - 2
    pipe = load_pipeline(bundle)
    long_text = " ".join(["word"] * 400)
    with pytest.raises(UserError, match="longer than the model's limit of 128"):
        pipe(long_text)
    assert pipe(long_text, truncate=True)["label"] in ("NEGATIVE", "POSITIVE")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("task", ["classify", "qa"])
def test_optimum_ortmodel_loads_the_bundle_and_gives_our_logits(make_bundle, family, task):
    from optimum.onnxruntime import ORTModelForQuestionAnswering, ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    path = make_bundle(f"tiny-{family}", task)
    bundle = Bundle.load(path)
    tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    if task == "qa":
        enc = tokenizer(
            ["Who wrote it?", "Where is the module?"],
            ["It was written by the core team.", "The module lives in the standard library of Python."],
            padding=True,
            return_tensors="pt",
        )
        model = ORTModelForQuestionAnswering.from_pretrained(path)
    else:
        enc = tokenizer(
            ["A short text.", "A somewhat longer text, padded less."], padding=True, return_tensors="pt"
        )
        model = ORTModelForSequenceClassification.from_pretrained(path)
    assert set(enc) == set(bundle.input_names())  # the bundle's tokenizer feeds Optimum without extra inputs
    theirs = model(**enc)
    ours = open_session(bundle).run({k: v.numpy() for k, v in enc.items()})
    names = ("start_logits", "end_logits") if task == "qa" else ("logits",)
    for name in names:
        assert_close(getattr(theirs, name).numpy(), ours[name], atol=1e-4, rtol=1e-4, what=name)


def _sentence_transformers_dir(tmp_path, pooling_mode: str, normalize: bool):
    import torch
    import transformers
    from sentence_transformers import SentenceTransformer, models

    from trtpipe.export.family_vocabs import family_tokenizer_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(family_tokenizer_dir("mpnet-wordpiece"))
    config = transformers.MPNetConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "mpnet"
    transformers.MPNetModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    word = models.Transformer(str(checkpoint), max_seq_length=128)
    modules = [word, models.Pooling(word.get_word_embedding_dimension(), pooling_mode=pooling_mode)]
    st = SentenceTransformer(modules=modules + ([models.Normalize()] if normalize else []), device="cpu")
    target = tmp_path / f"st-{pooling_mode}"
    st.save(str(target))
    return target, SentenceTransformer(str(target), device="cpu")


@pytest.mark.parametrize("pooling_mode, normalize", [("mean", True), ("cls", False), ("max", True)])
def test_mpnet_from_a_sentence_transformers_directory_encodes_like_it(tmp_path, pooling_mode, normalize):
    from trtpipe import corpus
    from trtpipe.export import export_bundle

    directory, st = _sentence_transformers_dir(tmp_path, pooling_mode, normalize)
    bundle = Bundle.load(export_bundle(str(directory), "embed", tmp_path / "bundle"))
    assert bundle.manifest["source"]["pooling"]["modes"] == [pooling_mode]
    assert bundle.manifest["source"]["pooling"]["normalize"] is normalize
    texts = corpus.sample(12, split="heldout")
    ours = np.asarray(load_pipeline(bundle)(texts))
    theirs = st.encode(texts)
    cosine = (ours * theirs).sum(-1) / np.linalg.norm(ours, axis=-1) / np.linalg.norm(theirs, axis=-1)
    assert cosine.min() >= 0.9999, cosine
    assert_close(ours, theirs, atol=1e-4, rtol=1e-3, what="sentence embedding")


def test_a_sentence_transformers_module_the_graph_cannot_hold_is_refused(tmp_path):
    from trtpipe.export.pooling import read_pooling

    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "path": "", "type": "x.Transformer"},
                {"idx": 1, "path": "2_Dense", "type": "x.Dense"},
            ]
        )
    )
    with pytest.raises(UserError, match="module Dense"):
        read_pooling(tmp_path)


TRICKY = [
    "東京タワーは高い and Zoë went home",
    "I ❤️ 🍕 pizza with  café au lait",
    "cafe\u0301 noir, s'il vous plaît 👩\u200d💻",
]


def _covered(text: str, spans: list[tuple[int, int]]) -> str:
    """The characters of `text` no span covers, whitespace aside."""
    hit = [False] * len(text)
    for start, end in spans:
        hit[start:end] = [True] * (end - start)
    return "".join(c for c, h in zip(text, hit) if not h and not c.isspace())


@pytest.mark.parametrize("family", ["bert", *FAMILIES])
def test_ner_and_qa_spans_are_exact_characters_of_the_text(make_bundle, family):
    """Every word tagged as an entity is the text between its offsets, with no space at its edges, a combining mark
    or emoji joiner inside it, and together the words cover every visible character (CJK, emoji, accents)."""
    from trtpipe.runtime.tasks import _aggregate_entities

    bundle = Bundle.load(make_bundle(f"tiny-{family}", "ner"))
    encoder = TextEncoder(bundle)
    labels = {0: "B-PER"}
    for text, enc in zip(TRICKY, encoder.encode(TRICKY)):
        probs = np.zeros((len(enc.ids), 1), np.float32) + 1.0  # every word is its own entity
        words = _aggregate_entities(text, enc, probs, labels)
        for word in words:
            assert word["word"] == text[word["start"] : word["end"]] == word["word"].strip(), word
            assert word["end"] == len(text) or not unicodedata.combining(text[word["end"]]), word
            assert word["end"] == len(text) or text[word["end"]] not in "\ufe0f\u200d", word
        assert _covered(text, [(w["start"], w["end"]) for w in words]) == "", (family, text)
    qa = load_pipeline(make_bundle(f"tiny-{family}", "qa"))
    for context in TRICKY:
        answer = qa(question="what?", context=context)
        assert answer["answer"] == context[answer["start"] : answer["end"]] == answer["answer"].strip()


@pytest.fixture(scope="module")
def optimized(make_bundle, tmp_path_factory):
    """Per family: its embed bundle with fused, fp16 and int8 added, gates enforced."""
    root = tmp_path_factory.mktemp("families-optimized")
    out = {}
    for family in FAMILIES:
        path = root / family
        shutil.copytree(make_bundle(f"tiny-{family}", "embed"), path)
        for precision in ("fused", "fp16", "int8"):
            optimize_bundle(path, precision)
        out[family] = Bundle.load(path)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_fusion_counts_per_family_and_the_gaps_named(optimized, family):
    spec = MODELS[family]
    bundle = optimized[family]
    report = bundle.variants["fused"]["report"]
    assert report["missing"] == []
    layers = bundle.model["num_layers"]
    for ops, want in spec.fusions_for(layers).items():
        assert sum(report["fused_ops"].get(op, 0) for op in ops.split("|")) >= want, (ops, report)
    attention = report["fused_ops"].get("Attention", 0) + report["fused_ops"].get("MultiHeadAttention", 0)
    if spec.fusion_gap:
        assert attention == 0 and report["unfusable"] == spec.fusion_gap
    else:
        assert attention == layers and report["unfusable"] is None


@pytest.mark.parametrize("family", FAMILIES)
def test_fp16_and_int8_pass_their_gates_per_family(optimized, family):
    bundle = optimized[family]
    for precision in ("fp16", "int8"):
        gate = bundle.variants[precision]["gate"]
        assert gate["verdict"] == "pass" and not gate["forced"], gate
    assert bundle.variants["int8"]["gate"]["metrics"]["embedding_cosine_min"] >= 0.98
    embeddings = {v: load_pipeline(bundle, variant=v)(["one sentence", "another"]) for v in ("fp32", "int8")}
    assert np.allclose(np.linalg.norm(embeddings["int8"], axis=-1), 1.0, atol=1e-3)


def test_int8_on_a_random_classifier_head_is_gated_on_label_agreement(make_bundle, copy_bundle):
    """No trained checkpoint of these families exists offline: a random head's labels are gated against fp32's."""
    path = copy_bundle(make_bundle("tiny-electra", "classify"))
    entry = optimize_bundle(path, "int8", force=True)
    assert "label_agreement" in entry["gate"]["metrics"]
    assert entry["gate"]["thresholds"]["label_agreement"] == [">=", 0.99]


@pytest.mark.skipif(not HAS_RTX, reason="needs tensorrt-rtx")
@pytest.mark.parametrize("family", FAMILIES)
def test_rtx_plan_lint_and_advice_per_family(make_bundle, copy_bundle, family):
    path = copy_bundle(make_bundle(f"tiny-{family}", "classify"))
    lint = invoke("lint", path, "--json")
    assert lint.exit_code == 0, lint.output
    advice = invoke("advise", path, "--json")
    assert advice.exit_code == 0, advice.output
    built = invoke("build", path, "--flavour", "rtx", "--json")
    assert built.exit_code == 0, built.output
    engine = Bundle.load(path).manifest["engines"]
    assert len(engine) == 1 and next(iter(engine.values()))["flavour"] == "rtx"


def test_triton_repositories_carry_each_familys_inputs(make_bundle, tmp_path):
    from trtpipe.serving import validate_config

    bundles = [make_bundle(f"tiny-{family}", "classify") for family in FAMILIES]
    repo = tmp_path / "repo"
    result = invoke("triton", *bundles, "--backend", "onnxruntime", "--out", repo, "-q")
    assert result.exit_code == 0, result.output
    for family, path in zip(FAMILIES, bundles):
        config = validate_config((repo / path.name / "config.pbtxt").read_text(), expected_name=path.name)
        assert [i.name for i in config.input] == Bundle.load(path).input_names(), family
    python = invoke("triton", bundles[1], "--out", tmp_path / "py", "-q")
    assert python.exit_code == 0, python.output


@pytest.mark.parametrize("model_type", ["gpt_neo", "llama", "deberta"])
def test_a_family_still_unsupported_keeps_the_one_line_refusal(tmp_path, model_type):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": model_type}))
    result = invoke("export", tmp_path, "--out", tmp_path / "out")
    assert result.exit_code == 2
    line = result.output.strip()
    assert "\n" not in line and f"unsupported architecture '{model_type}'" in line
    for family in FAMILIES:
        assert family in line


def test_a_distilgpt2_shaped_checkpoint_exports_and_passes_parity(tmp_path):
    """The GPT-2 family across its real shapes: 6 layers × 768 wide (distilgpt2, DialoGPT-small's width), from a
    checkpoint directory; every parity level passes (tensors, top-k, greedy sequences vs transformers, cache)."""
    import torch
    import transformers

    from trtpipe.export import export_bundle
    from trtpipe.export.vocab import gpt2_tokenizer_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(gpt2_tokenizer_dir(2048))
    config = transformers.GPT2Config(
        n_embd=768, n_layer=6, n_head=12, vocab_size=2048, n_positions=256, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    checkpoint = tmp_path / "distilgpt2-like"
    transformers.GPT2LMHeadModel(config).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    bundle = Bundle.load(export_bundle(str(checkpoint), "generate", tmp_path / "bundle"))
    assert (bundle.model["num_layers"], bundle.model["hidden_size"]) == (6, 768)
    parity = bundle.variants["fp32"]["parity"]
    assert parity and all(v["verdict"] == "pass" for v in parity.values()), parity
    tokenizer_config = json.loads((bundle.path / "tokenizer" / "tokenizer_config.json").read_text())
    assert tokenizer_config["model_input_names"] == ["input_ids", "attention_mask"]
