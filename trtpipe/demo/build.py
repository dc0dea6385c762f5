"""`make demo-models`: train the demo models into models/<name>, each an ordinary Hugging Face checkpoint.

demo-gpt2 (causal LM), demo-bert and demo-albert (MLM, same hidden size; ALBERT shares one layer's weights across
depth and factorises the embeddings), then demo-bert-classify / demo-albert-classify fine-tuned from them. Each
directory is written in a temp dir and renamed into place, with trtpipe-demo.json (recipe, seed, corpus
fingerprint, seconds, metrics); a model whose directory has that file for the same recipe is skipped unless forced,
and a classifier whose base model changed since it was fine-tuned is trained again.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from ..console import info, progress, warn
from ..presets import PRESETS
from ..runtime.errors import UserError
from ..runtime.paths import sha256_file
from ..runtime.store import staged_bundle, write_json_atomic
from .fit import Corpus, parameters, train_classifier, train_gpt2, train_mlm
from .recipes import BASES, DEMO_MODELS, META, METRICS, RECIPES, THREADS, read_meta

# ------------------------------------------------------------------------------------------------ bookkeeping


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


# --------------------------------------------------------------------------------------------------- models


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
                model, tok, meta = train_mlm(PRESETS[name].family, spec, corpus, bar)
            meta = {
                "name": name,
                "family": PRESETS[name].family,
                "recipe": recipe,
                "seed": spec.seed,
                "threads": THREADS,
                "parameters": parameters(model),
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
