"""`make demo-models`: train the demo models into models/<name>, each an ordinary Hugging Face checkpoint.

demo-gpt2 (causal LM), demo-bert and demo-albert (MLM, same hidden size; ALBERT shares one layer's weights across
depth and factorises the embeddings), then demo-bert-classify / demo-albert-classify fine-tuned from them. Each
directory is written in a temp dir and renamed into place, with trtpipe-demo.json (recipe, seed, corpus
fingerprint, seconds, metrics); a model whose directory has that file for the same recipe is skipped unless forced,
and a classifier whose base model changed since it was fine-tuned is trained again.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from ..console import info, progress, warn
from ..runtime.bundle import sha256_file, staged_bundle, write_json_atomic
from ..runtime.errors import UserError

DEMO_MODELS = ("demo-gpt2", "demo-bert", "demo-albert", "demo-bert-classify", "demo-albert-classify")
BASES = {"demo-bert-classify": "demo-bert", "demo-albert-classify": "demo-albert"}
FAMILY = {
    "demo-gpt2": "gpt2",
    "demo-bert": "bert",
    "demo-albert": "albert",
    "demo-bert-classify": "bert",
    "demo-albert-classify": "albert",
}
META = "trtpipe-demo.json"
METRICS = "demo-metrics.json"
THREADS = 2
SOURCE = (
    "Python documentation shipped with CPython: pydoc_data.topics + standard-library docstrings (PSF license)"
)
CLASSIFY_EXAMPLE = "Return a new socket object."
GENERATE_PROMPT = "The list"
EVAL_BLOCK = 128  # held-out MLM windows: the same for every recipe phase


@dataclass(frozen=True)
class LMRecipe:
    """A language model and its pretraining: sizes, then the AdamW schedule (steps of batch × block tokens)."""

    vocab: int
    dim: int
    layers: int
    heads: int
    positions: int
    block: int
    batch: int
    steps: int
    lr: float
    warmup: int
    long_steps: int = 0  # the last steps use blocks of `positions` tokens (BERT: 90 % short, 10 % long)
    mask_rate: float = 0.15  # encoders: share of the tokens to predict


@dataclass(frozen=True)
class ClassifyRecipe:
    epochs: int
    batch: int
    lr: float
    max_length: int
    per_class_cap: int | None = None


@dataclass(frozen=True)
class Recipe:
    name: str
    gpt: LMRecipe
    encoder: LMRecipe
    albert_embedding: int
    classify: ClassifyRecipe
    corpus_limit: int | None = None  # documents of the corpus to use (None: all)
    seed: int = 0


RECIPES = {
    # ≈ 7 minutes on 2 CPU cores (bf16 autocast; measured: 436 s in all), sized by measured throughput.
    "full": Recipe(
        "full",
        gpt=LMRecipe(
            8192, 256, 4, 4, 256, block=128, batch=8, steps=640, lr=1.2e-3, warmup=40, long_steps=64
        ),
        # Post-LN encoders sit on a unigram plateau at a higher lr or a short warmup: 1e-3 after 1/3 warmup
        encoder=LMRecipe(
            8192, 256, 4, 4, 256, block=128, batch=16, steps=420, lr=1e-3, warmup=140, long_steps=42
        ),
        albert_embedding=128,
        classify=ClassifyRecipe(epochs=5, batch=32, lr=5e-4, max_length=64),
    ),
    # seconds: for tests and smoke runs
    "tiny": Recipe(
        "tiny",
        gpt=LMRecipe(512, 32, 2, 2, 64, block=32, batch=8, steps=12, lr=3e-3, warmup=2),
        encoder=LMRecipe(512, 32, 2, 2, 64, block=32, batch=8, steps=12, lr=3e-3, warmup=2, long_steps=2),
        albert_embedding=16,
        classify=ClassifyRecipe(epochs=1, batch=16, lr=1e-3, max_length=64, per_class_cap=6),
        corpus_limit=12,
    ),
}


# ------------------------------------------------------------------------------------------------ bookkeeping


def read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((Path(path) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and (Path(path) / "config.json").is_file() else None


def is_current(out: Path, name: str, recipe: str = "full") -> bool:
    """True when models/<name> holds a finished model of this recipe (and, for a classifier, of its current base)."""
    meta = read_meta(Path(out) / name)
    if meta is None or meta.get("recipe") != recipe:
        return False
    base = BASES.get(name)
    if base is None:
        return True
    base_meta = read_meta(Path(out) / base)
    return base_meta is not None and meta.get("base", {}).get("weights_sha256") == base_meta.get(
        "weights_sha256"
    )


def resolve_names(only: list[str] | None) -> list[str]:
    names = [n.strip() for item in (only or []) for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in DEMO_MODELS]
    if unknown:
        raise UserError(f"unknown demo model {', '.join(unknown)}; choose from: {', '.join(DEMO_MODELS)}")
    return names or list(DEMO_MODELS)


def _versions() -> dict:
    import tokenizers
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


# ---------------------------------------------------------------------------------------------------- corpus


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


# --------------------------------------------------------------------------------------------------- models


def _parameters(model) -> int:
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
    dropout = {"hidden_dropout_prob": 0.1} if FAMILY[name] == "bert" else {"classifier_dropout_prob": 0.1}
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
    tail = losses[-20:]
    return {
        "steps": r.steps,
        "batch": r.batch,
        "block": r.block,
        "long_phase": {"steps": r.long_steps, "block": r.positions, "batch": _long_batch(r)},
        "lr": r.lr,
        "warmup": r.warmup,
        "schedule": "AdamW (0.9, 0.98), weight decay 0.01 on matrices, linear warmup, cosine to lr/10, clip 1.0",
        "precision": "bf16 autocast (CPU), fp32 weights",
        "seconds": round(seconds, 1),
        "final_loss": round(sum(tail) / len(tail), 4),
    }


def save_model(out: Path, name: str, model, tokenizer, meta: dict) -> Path:
    """save_pretrained (safetensors) + tokenizer + trtpipe-demo.json in a temp dir, renamed into models/<name>."""
    target = out / name
    with staged_bundle(target, overwrite=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        meta["weights_sha256"] = sha256_file(staging / "model.safetensors")
        write_json_atomic(staging / META, meta)
    return target


# ------------------------------------------------------------------------------------------------------- run


def train_demo_models(
    out: str | Path | None = None, force: bool = False, only: list[str] | None = None, recipe: str = "full"
) -> dict:
    """Train the demo models that are missing (all named ones with force) into `out` (default models/).

    Returns {"trained": [...], "skipped": [...], "seconds": wall time, "metrics": the models/ metrics summary}.
    """
    from ..export.inputs import models_dir

    if recipe not in RECIPES:
        raise UserError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    spec = RECIPES[recipe]
    out = Path(out) if out is not None else models_dir()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a directory with --out")
    names = resolve_names(only)
    import transformers

    transformers.logging.set_verbosity_error()
    wanted = [n for n in DEMO_MODELS if n in names or n in {BASES.get(m) for m in names}]
    started = time.perf_counter()
    trained, skipped = [], []
    corpus = Corpus(spec)
    with _torch_threads(THREADS), progress(transient=False) as bar:
        for name in wanted:
            explicit = name in names
            if is_current(out, name, recipe) and not (force and explicit):
                skipped.append(name)
                info(f"[dim]up to date:[/] {out / name}")
                continue
            if not explicit:
                info(
                    f"{name} is needed by {', '.join(m for m in names if BASES.get(m) == name)}: training it first"
                )
            model_started = time.perf_counter()
            if name == "demo-gpt2":
                model, tok, meta = train_gpt2(spec, corpus, bar)
            elif name in BASES:
                model, tok, meta = train_classifier(name, out, spec, bar)
            else:
                model, tok, meta = train_mlm(FAMILY[name], spec, corpus, bar)
            meta = {
                "name": name,
                "family": FAMILY[name],
                "recipe": recipe,
                "seed": spec.seed,
                "threads": THREADS,
                "parameters": _parameters(model),
                "config": _config_summary(model.config),
                **meta,
                "total_seconds": round(time.perf_counter() - model_started, 1),
                "versions": _versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            save_model(out, name, model, tok, meta)
            trained.append(name)
            info(f"[green]trained[/] {name} → {out / name} in {meta['total_seconds']:.0f}s")
    for name in DEMO_MODELS:
        if name in BASES and read_meta(out / name) is not None and not is_current(out, name, recipe):
            base = BASES[name]
            if is_current(out, base, recipe):
                warn(f"{name} was fine-tuned from an older {base}; `trtpipe demo-models` will train it again")
    seconds = time.perf_counter() - started
    metrics = write_metrics(out, {"trained": trained, "skipped": skipped, "seconds": round(seconds, 1)})
    return {"trained": trained, "skipped": skipped, "seconds": seconds, "metrics": metrics, "out": str(out)}


class _torch_threads:
    """torch.set_num_threads for the duration of a run: results depend on the thread count (reduction order)."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.before)


def _config_summary(config) -> dict:
    keys = (
        "model_type",
        "vocab_size",
        "hidden_size",
        "n_embd",
        "embedding_size",
        "num_hidden_layers",
        "n_layer",
        "num_hidden_groups",
        "num_attention_heads",
        "n_head",
        "intermediate_size",
        "max_position_embeddings",
        "n_positions",
    )
    return {k: getattr(config, k) for k in keys if getattr(config, k, None) is not None}


def write_metrics(out: Path, run: dict) -> dict:
    """models/demo-metrics.json: every present model's metrics and the BERT vs ALBERT comparison."""
    models = {}
    for name in DEMO_MODELS:
        meta = read_meta(out / name)
        if meta is None:
            continue
        models[name] = {
            key: meta.get(key)
            for key in (
                "recipe",
                "seed",
                "parameters",
                "config",
                "metrics",
                "train",
                "total_seconds",
                "sample",
                "example",
            )
            if meta.get(key) is not None
        }
        models[name]["corpus_fingerprint"] = (meta.get("corpus") or {}).get("fingerprint")
    summary: dict = {"models": models, "last_run": run}
    bert, albert = models.get("demo-bert"), models.get("demo-albert")
    if bert and albert:
        summary["albert_vs_bert"] = {
            "parameters": {"demo-bert": bert["parameters"], "demo-albert": albert["parameters"]},
            "parameter_ratio": round(albert["parameters"] / bert["parameters"], 3),
            "mlm_top1": {"demo-bert": bert["metrics"]["top1"], "demo-albert": albert["metrics"]["top1"]},
            "mlm_top1_ratio": round(albert["metrics"]["top1"] / bert["metrics"]["top1"], 3),
        }
    if models:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / METRICS, summary)
    return summary


def summary_rows(metrics: dict) -> list[tuple[str, str, str, str, str]]:
    """(model, parameters, held-out metric, baseline, train seconds) for the CLI table and the docs."""
    rows = []
    for name, entry in metrics.get("models", {}).items():
        m = entry.get("metrics", {})
        if "perplexity" in m:
            metric = f"perplexity {m['perplexity']:.1f}"
            baseline = f"unigram {m['unigram_perplexity']:.0f}"
        elif "top1" in m:
            metric = f"MLM top-1 {m['top1']:.1%} (top-5 {m['top5']:.1%})"
            baseline = f"most frequent token {m['most_frequent_token_top1']:.1%}"
        else:
            metric = f"accuracy {m['accuracy']:.1%} ({m['examples']} docstrings)"
            baseline = f"chance {m['chance']:.1%}"
        seconds = (entry.get("train") or {}).get("seconds")
        rows.append(
            (
                name,
                f"{entry['parameters'] / 1e6:.2f} M",
                metric,
                baseline,
                f"{seconds:.0f}" if seconds else "-",
            )
        )
    return rows
