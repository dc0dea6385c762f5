"""Training one demo model from its recipe: GPT-2 on next tokens, BERT / ALBERT on masked tokens (short blocks,
then long ones), and a classifier fine-tuned from its base; each returns the model, tokenizer and what it learned."""

from __future__ import annotations

import functools
import platform
import time
from pathlib import Path

from ..presets import PRESETS
from ..runtime.errors import UserError
from .recipes import (
    BASES,
    CLASSIFY_EXAMPLE,
    EVAL_BLOCK,
    GENERATE_PROMPT,
    SOURCE,
    LMRecipe,
    Recipe,
    read_meta,
)


class Corpus:
    """The run's text, tokenizers and token streams, each computed on first use (a skip-only run needs none)."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    @functools.cached_property
    def texts(self) -> dict[str, list[str]]:
        """Encoders: every paragraph (code examples give MLM easy local patterns to learn attention from)."""
        from . import data

        return {split: data.split_texts(split, self.recipe.corpus_limit) for split in ("train", "heldout")}

    @functools.cached_property
    def prose(self) -> dict[str, list[str]]:
        """GPT-2: prose paragraphs only, so that what it writes reads like the documentation's English."""
        from . import data

        return {
            split: data.split_texts(split, self.recipe.corpus_limit, prose=True)
            for split in ("train", "heldout")
        }

    @functools.cached_property
    def gpt_tokenizer(self):
        from .vocabs import gpt2_tokenizer

        r = self.recipe.gpt
        return gpt2_tokenizer(r.vocab, self.prose["train"], r.positions)

    @functools.cached_property
    def encoder_tokenizer(self):
        from .vocabs import wordpiece_tokenizer

        r = self.recipe.encoder
        return wordpiece_tokenizer(r.vocab, self.texts["train"], r.positions)

    def stream(self, tokenizer, texts: list[str], separator: int):
        """Texts as a single token stream, documents separated by `separator` ([N] int64)."""
        import torch

        ids: list[int] = []
        for enc in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
            ids += enc.ids
            ids.append(separator)
        return torch.tensor(ids, dtype=torch.long)

    def info(self, texts: dict[str, list[str]], train_tokens: int, heldout_tokens: int) -> dict:
        from .. import corpus

        return {
            "source": SOURCE,
            "text": "prose paragraphs" if texts is self.prose else "all paragraphs (prose and code examples)",
            "python": platform.python_version(),
            "fingerprint": corpus.fingerprint(texts["train"] + texts["heldout"]),
            "split": "corpus.is_heldout(unit): sha1 of each topic paragraph / docstring, ~10 % held out",
            "train_tokens": train_tokens,
            "heldout_tokens": heldout_tokens,
        }


def parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one Parameter: counted once


def _progress_hook(bar, task_id, name: str):
    def on_step(step: int, loss: float) -> None:
        bar.update(task_id, advance=1, description=f"{name}  loss {loss:.3f}")

    return on_step


def train_gpt2(recipe: Recipe, corpus: Corpus, bar) -> tuple:
    import torch
    import transformers

    from . import evaluate, train

    r = recipe.gpt
    tok = corpus.gpt_tokenizer
    eos = tok.eos_token_id
    train_ids = corpus.stream(tok, corpus.prose["train"], eos)
    heldout_ids = corpus.stream(tok, corpus.prose["heldout"], eos)
    config = transformers.GPT2Config(
        vocab_size=len(tok),
        n_positions=r.positions,
        n_embd=r.dim,
        n_layer=r.layers,
        n_head=r.heads,
        bos_token_id=eos,
        eos_token_id=eos,
        resid_pdrop=0.0,  # ~1-2 epochs of data: no dropout (nanoGPT's pretraining default)
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(recipe.seed)
    model = transformers.GPT2LMHeadModel(config)
    task_id = bar.add_task("demo-gpt2", total=r.steps)
    started = time.perf_counter()
    short = train.lm_batches(train_ids, r.block, r.batch, recipe.seed)
    long = train.lm_batches(train_ids, r.positions, _long_batch(r), recipe.seed + 1)
    losses = train.train_loop(
        model,
        _phases(r, short, long),
        train.lm_loss,
        r.steps,
        r.lr,
        r.warmup,
        _progress_hook(bar, task_id, "demo-gpt2"),
    )
    seconds = time.perf_counter() - started
    bar.update(task_id, description="demo-gpt2  evaluating")
    metrics = evaluate.perplexity(model, heldout_ids, r.positions)
    metrics["unigram_perplexity"] = evaluate.unigram_perplexity(train_ids, heldout_ids, len(tok))
    prompt = tok(GENERATE_PROMPT, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**prompt, max_new_tokens=40, do_sample=False, pad_token_id=eos)
    sample = tok.decode(generated[0], skip_special_tokens=True)
    meta = {
        "train": _train_info(r, losses, seconds),
        "metrics": metrics,
        "sample": {"prompt": GENERATE_PROMPT, "greedy": sample},
        "corpus": corpus.info(corpus.prose, len(train_ids), len(heldout_ids)),
    }
    return model, tok, meta


def train_mlm(family: str, recipe: Recipe, corpus: Corpus, bar) -> tuple:
    import torch
    import transformers

    from . import evaluate, train

    r = recipe.encoder
    tok = corpus.encoder_tokenizer
    special = len(tok.all_special_ids)  # [PAD] [UNK] [CLS] [SEP] [MASK] are ids 0..4
    sep, cls, mask = tok.sep_token_id, tok.cls_token_id, tok.mask_token_id
    train_ids = corpus.stream(tok, corpus.texts["train"], sep)
    heldout_ids = corpus.stream(tok, corpus.texts["heldout"], sep)
    common = dict(
        vocab_size=len(tok),
        hidden_size=r.dim,
        num_hidden_layers=r.layers,
        num_attention_heads=r.heads,
        intermediate_size=4 * r.dim,
        max_position_embeddings=r.positions,
        type_vocab_size=2,
        pad_token_id=tok.pad_token_id,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if family == "bert":
        config, cls_model = transformers.BertConfig(**common), transformers.BertForMaskedLM
    else:
        config = transformers.AlbertConfig(
            embedding_size=recipe.albert_embedding,  # factorised embeddings: V×E + E×H instead of V×H
            num_hidden_groups=1,  # one set of layer weights shared by every layer
            inner_group_num=1,
            bos_token_id=cls,
            eos_token_id=sep,
            **common,
        )
        cls_model = transformers.AlbertForMaskedLM
    name = f"demo-{family}"
    torch.manual_seed(recipe.seed)
    model = cls_model(config)
    task_id = bar.add_task(name, total=r.steps)
    hook = _progress_hook(bar, task_id, name)
    ids = dict(cls_id=cls, sep_id=sep, mask_id=mask, special=special, vocab=len(tok), rate=r.mask_rate)
    started = time.perf_counter()
    short = train.mlm_batches(train_ids, r.block, r.batch, recipe.seed, **ids)
    long = train.mlm_batches(train_ids, r.positions, _long_batch(r), recipe.seed + 1, **ids)
    losses = train.train_loop(model, _phases(r, short, long), train.mlm_loss, r.steps, r.lr, r.warmup, hook)
    seconds = time.perf_counter() - started
    bar.update(task_id, description=f"{name}  evaluating")
    block = min(EVAL_BLOCK, r.positions)
    inputs, labels = evaluate.fixed_masks(heldout_ids, block, special, mask, cls, sep, seed=1234)
    metrics = evaluate.mlm_accuracy(model, inputs, labels)
    metrics["most_frequent_token_top1"] = evaluate.frequent_token_accuracy(train_ids, labels, special)
    meta = {
        "train": _train_info(r, losses, seconds),
        "metrics": metrics,
        "corpus": corpus.info(corpus.texts, len(train_ids), len(heldout_ids)),
    }
    return model, tok, meta


def train_classifier(name: str, out: Path, recipe: Recipe, bar) -> tuple:
    import torch
    import transformers

    from . import data, evaluate, train

    r = recipe.classify
    base = BASES[name]
    base_dir = out / base
    base_meta = read_meta(base_dir)
    if base_meta is None:
        raise UserError(f"{name} is fine-tuned from {base}, which is not in {out}; run `trtpipe demo-models`")
    labels = list(data.CLASSES)
    dataset = data.classification_data(r.per_class_cap)
    tok = transformers.AutoTokenizer.from_pretrained(base_dir, local_files_only=True)
    max_length = min(r.max_length, tok.model_max_length)

    def encode(examples):
        return tok([e.text for e in examples], truncation=True, max_length=max_length)["input_ids"]

    train_x, train_y = encode(dataset["train"]), [e.label for e in dataset["train"]]
    held_x, held_y = encode(dataset["heldout"]), [e.label for e in dataset["heldout"]]
    torch.manual_seed(recipe.seed)
    transformers.logging.set_verbosity_error()
    dropout = (
        {"hidden_dropout_prob": 0.1} if PRESETS[name].family == "bert" else {"classifier_dropout_prob": 0.1}
    )
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        base_dir,
        local_files_only=True,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        problem_type="single_label_classification",
        **dropout,
    )
    steps = r.epochs * -(-len(train_x) // r.batch)
    task_id = bar.add_task(name, total=steps)
    started = time.perf_counter()
    batches = train.classify_batches(train_x, train_y, r.batch, recipe.seed, tok.pad_token_id)
    losses = train.train_loop(
        model,
        batches,
        train.classify_loss,
        steps,
        r.lr,
        max(1, steps // 10),
        _progress_hook(bar, task_id, name),
    )
    seconds = time.perf_counter() - started
    bar.update(task_id, description=f"{name}  evaluating")
    metrics = evaluate.classify_accuracy(model, held_x, held_y, tok.pad_token_id)
    with torch.no_grad():
        probs = model(**tok([CLASSIFY_EXAMPLE], return_tensors="pt")).logits.softmax(-1)[0]
    best = int(probs.argmax())
    meta = {
        "train": {
            "epochs": r.epochs,
            "batch": r.batch,
            "max_length": max_length,
            "steps": steps,
            "lr": r.lr,
            "precision": train.precision_label(),
            "seconds": round(seconds, 1),
            "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4),
        },
        "metrics": metrics,
        "task_data": {
            "task": "which part of the standard library a docstring is from",
            "classes": {label: list(mods) for label, mods in data.CLASSES.items()},
            "train_examples": len(train_x),
            "heldout_examples": len(held_x),
            "balanced": True,
        },
        "example": {"text": CLASSIFY_EXAMPLE, "label": labels[best], "score": round(float(probs[best]), 4)},
        "base": {"name": base, "weights_sha256": base_meta.get("weights_sha256")},
        "corpus": base_meta.get("corpus"),
    }
    return model, tok, meta


def _long_batch(r: LMRecipe) -> int:
    return max(1, r.batch * r.block // r.positions)  # same tokens per step in the long phase


def _phases(r: LMRecipe, short, long):
    """`steps - long_steps` batches of `block` tokens, then `long_steps` of `positions` (every position trained)."""
    for _ in range(r.steps - r.long_steps):
        yield next(short)
    for _ in range(r.long_steps):
        yield next(long)


def _train_info(r: LMRecipe, losses: list[float], seconds: float) -> dict:
    from . import train

    tail = losses[-20:]
    return {
        "steps": r.steps,
        "batch": r.batch,
        "block": r.block,
        "long_phase": {"steps": r.long_steps, "block": r.positions, "batch": _long_batch(r)},
        "lr": r.lr,
        "warmup": r.warmup,
        "schedule": "AdamW (0.9, 0.98), weight decay 0.01 on matrices, linear warmup, cosine to lr/10, clip 1.0",
        "precision": train.precision_label(),
        "seconds": round(seconds, 1),
        "final_loss": round(sum(tail) / len(tail), 4),
    }
