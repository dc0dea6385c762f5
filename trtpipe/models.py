"""The one spec table: model kinds (encoder, decoder) with the sizes each stage uses, families with their tasks,
heads, config classes and fusions (the offline presets are rows of presets.py). Plain data (no registries, no
imports): generic code asks this table instead of branching on a family name."""

from __future__ import annotations

from dataclasses import dataclass

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
    # the transformers attention implementation exported: ORT fuses DistilBERT's sdpa graph, not its eager one
    attention: str = "eager"

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

# where ONNX Runtime's optimizer has no attention pattern, LayerNorm and Gelu still fuse
_UNFUSED_ATTENTION = {"SkipLayerNormalization": (2, 0), "FastGelu|BiasGelu|Gelu": (1, 0)}


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
    "albert": _encoder(
        "albert",
        "ALBERT",
        "Albert",
        {**_ENCODER_FUSIONS, "Attention|MultiHeadAttention": (1, -1)},
        shared_layers=True,
        fusion_gap="no Attention fusion for the first of ALBERT's shared layers (all the others fuse: measured "
        "1 of 2 on tiny-albert, 11 of 12 on albert-base); that one keeps MatMul + Softmax attention over the one "
        "packed QKV weight",
    ),
    "distilbert": _encoder("distilbert", "DistilBERT", "DistilBert", token_types="no", attention="sdpa"),
    "roberta": _encoder("roberta", "RoBERTa", "Roberta", token_types="no", positions_after_pad=True),
    "xlm-roberta": _encoder(
        "xlm-roberta", "XLM-RoBERTa", "XLMRoberta", token_types="no", positions_after_pad=True
    ),
    "electra": _encoder("electra", "ELECTRA", "Electra"),
    "mpnet": _encoder(
        "mpnet",
        "MPNet",
        "MPNet",
        _UNFUSED_ATTENTION,
        token_types="no",
        positions_after_pad=True,
        fusion_gap="no Attention pattern for MPNet: its relative position bias sits between QK and the mask",
    ),
    "deberta-v2": _encoder(
        "deberta-v2",
        "DeBERTa-v2",
        "DebertaV2",
        _UNFUSED_ATTENTION,
        token_types="config",
        fusion_gap="no Attention pattern for DeBERTa's disentangled (content ↔ position) attention",
    ),
    "modernbert": _encoder(
        "modernbert",
        "ModernBERT",
        "ModernBert",
        _UNFUSED_ATTENTION,
        token_types="no",
        fusion_gap="no Attention pattern for ModernBERT's rotary embeddings and local/global attention",
    ),
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


def family_for_model_type(model_type: str) -> ModelSpec | None:
    for spec in MODELS.values():
        if model_type in spec.model_types:
            return spec
    return None


def supported_families() -> str:
    return ", ".join(f"{name} ({'/'.join(spec.tasks)})" for name, spec in MODELS.items())
