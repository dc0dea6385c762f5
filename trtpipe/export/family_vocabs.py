"""Offline tokenizers of the encoder families, of the type each family ships: byte-level BPE (RoBERTa, ModernBERT),
SentencePiece-style Unigram (XLM-RoBERTa, DeBERTa-v3), WordPiece with <s> </s> (MPNet). Trained here on the
offline corpus in seconds, cached like the GPT-2 BPE, saved in standard Hugging Face form."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from .vocab import bpe_corpus, cache_dir, minilm_dir

# special tokens in id order, and the transformers class each family's tokenizer is
_ROBERTA = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
_DEBERTA = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
_MODERNBERT = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")


def _roberta_like(tok, specials, cls_name: str, pair_sep: str):
    import transformers
    from tokenizers import processors

    bos, pad, eos, unk, mask = specials
    ids = {t: tok.token_to_id(t) for t in specials}
    if pair_sep == "roberta":
        tok.post_processor = processors.RobertaProcessing((eos, ids[eos]), (bos, ids[bos]), trim_offsets=True)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A {eos}",
            pair=f"{bos} $A {eos} {eos} $B {eos}",
            special_tokens=[(bos, ids[bos]), (eos, ids[eos])],
        )
    return getattr(transformers, cls_name)(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        sep_token=eos,
        cls_token=bos,
        unk_token=unk,
        pad_token=pad,
        mask_token=mask,
    )


def _byte_bpe(vocab_size: int, specials: tuple[str, ...], texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _unigram(vocab_size: int, specials: tuple[str, ...], unk: str, texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    # SentencePiece's nmt_nfkc normalisation; tokenizers keeps offsets into the original text through it
    tok.normalizer = normalizers.Sequence(
        [normalizers.Nmt(), normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    # split on whitespace first (as DeBERTa-v3 ships it): "▁word" then spans the word, not the space before it
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=list(specials), unk_token=unk, show_progress=False
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def roberta_tokenizer(vocab_size: int, texts: list[str]):
    return _roberta_like(_byte_bpe(vocab_size, _ROBERTA, texts), _ROBERTA, "RobertaTokenizerFast", "roberta")


def xlmr_tokenizer(vocab_size: int, texts: list[str]):
    tok = _unigram(vocab_size, _ROBERTA, "<unk>", texts)
    return _roberta_like(tok, _ROBERTA, "XLMRobertaTokenizerFast", "template")


def deberta_tokenizer(vocab_size: int, texts: list[str]):
    import transformers
    from tokenizers import processors

    tok = _unigram(vocab_size, _DEBERTA, "[UNK]", texts)
    pad, cls, sep, unk, mask = _DEBERTA
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    return transformers.DebertaV2TokenizerFast(
        tokenizer_object=tok,
        bos_token=cls,
        eos_token=sep,
        cls_token=cls,
        sep_token=sep,
        unk_token=unk,
        pad_token=pad,
        mask_token=mask,
    )


def modernbert_tokenizer(vocab_size: int, texts: list[str]):
    import transformers
    from tokenizers import processors

    tok = _byte_bpe(vocab_size, _MODERNBERT, texts)
    unk, cls, sep, pad, mask = _MODERNBERT
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=True),  # offsets cover the word, not the space before it
            processors.TemplateProcessing(
                single=f"{cls} $A {sep}",
                pair=f"{cls} $A {sep} $B {sep}",
                special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
            ),
        ]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        cls_token=cls,
        sep_token=sep,
        unk_token=unk,
        pad_token=pad,
        mask_token=mask,
        model_input_names=["input_ids", "attention_mask"],
    )


def mpnet_tokenizer(_vocab_size: int, _texts: list[str]):
    """MiniLM's WordPiece vocabulary with MPNet's special tokens in the same slots (ids unchanged)."""
    import tempfile

    import transformers

    rename = {"[PAD]": "<pad>", "[CLS]": "<s>", "[SEP]": "</s>", "[MASK]": "<mask>"}
    words = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp) / "vocab.txt"
        vocab.write_text("\n".join(rename.get(w, w) for w in words) + "\n", encoding="utf-8")
        return transformers.MPNetTokenizerFast(vocab_file=str(vocab), do_lower_case=True)


BUILDERS = {
    "roberta-bpe": roberta_tokenizer,
    "xlmr-unigram": xlmr_tokenizer,
    "deberta-unigram": deberta_tokenizer,
    "modernbert-bpe": modernbert_tokenizer,
    "mpnet-wordpiece": mpnet_tokenizer,
}


def is_family_tokenizer(name: str) -> bool:
    return name.rsplit("-", 1)[0] in BUILDERS or name in BUILDERS


def family_tokenizer_dir(name: str) -> Path:
    """A saved HF tokenizer directory for NAME ("roberta-bpe-2048", "mpnet-wordpiece", ...), built once and cached."""
    from .. import corpus

    kind, _, size = name.rpartition("-") if name not in BUILDERS else (name, "", "0")
    texts = bpe_corpus()
    key = hashlib.sha256(f"{name}:{corpus.fingerprint(texts)}:2".encode()).hexdigest()[:12]
    target = cache_dir() / f"{name}-{key}"
    if (target / "tokenizer.json").is_file():
        return target
    fast = BUILDERS[kind](int(size), texts)
    fast.model_max_length = 512
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    fast.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, target)
    return target
