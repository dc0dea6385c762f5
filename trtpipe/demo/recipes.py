"""The demo models and their training recipes (full: the models `make demo-models` trains; tiny: seconds, for
smoke tests), with the names, families and bases they are trained from."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

DEMO_MODELS = ("demo-gpt2", "demo-bert", "demo-albert", "demo-bert-classify", "demo-albert-classify")
BASES = {"demo-bert-classify": "demo-bert", "demo-albert-classify": "demo-albert"}
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
    # ≈ 7 minutes on 2 CPU cores with native bf16 (autocast; measured: 436 s in all), sized by measured throughput;
    # in fp32 on a CPU without bf16 (AVX2) each step costs more (measured below in docs/benchmarks.md "Demo models").
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


def read_meta(path: Path) -> dict | None:
    try:
        meta = json.loads((Path(path) / META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and (Path(path) / "config.json").is_file() else None
