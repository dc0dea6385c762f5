"""Demo tokenizers, trained on the train split and saved in standard Hugging Face form (tokenizer.json).

GPT-2: a byte-level BPE (trtpipe.export.vocab.train_bpe). Encoders: a cased WordPiece with BERT's special tokens,
`[CLS] A [SEP] (B [SEP])` from the post-processor (token_type_ids 1 on B) and character offsets for NER and QA.
"""

from __future__ import annotations

from ..export.vocab import EOS, train_bpe

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4


def gpt2_tokenizer(vocab_size: int, texts: list[str], max_length: int):
    """A PreTrainedTokenizerFast over a byte-level BPE; <|endoftext|> (id 0) is bos, eos and unk."""
    from transformers import PreTrainedTokenizerFast

    tok = train_bpe(vocab_size, texts)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        model_input_names=["input_ids", "attention_mask"],  # GPT-2 would add token_type_ids as embeddings
    )
    fast.model_max_length = max_length
    return fast


def wordpiece_tokenizer(vocab_size: int, texts: list[str], max_length: int):
    """A cased BERT-style WordPiece as a PreTrainedTokenizerFast with [PAD] [UNK] [CLS] [SEP] [MASK] = ids 0..4."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL),
        continuing_subword_prefix="##",
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.model_max_length = max_length
    return fast
