"""Choosing the next token: greedy, or sampled with repetition penalty, temperature, top-k and top-p (in
transformers' order), from a request's own seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserError


@dataclass(frozen=True)
class Sampling:
    """temperature 0 = greedy. top_k 0 = off. top_p 1 = off. Applied in transformers' order:
    repetition penalty → temperature → top-k → top-p."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not np.isfinite(self.temperature) or self.temperature < 0:
            raise UserError(
                f"temperature must be ≥ 0 (0 = greedy), got {self.temperature}", fields="temperature"
            )
        if self.top_k < 0:
            raise UserError(f"top_k must be ≥ 0 (0 = off), got {self.top_k}", fields="top_k")
        if not (0 < self.top_p <= 1):
            raise UserError(f"top_p must be in (0, 1], got {self.top_p}", fields="top_p")
        if not np.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise UserError(
                f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}",
                fields="repetition_penalty",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def apply_repetition_penalty(logits: np.ndarray, history: list[np.ndarray], penalty: float) -> None:
    """transformers' rule, in place: seen tokens' logits are divided by the penalty if positive, else multiplied."""
    if penalty == 1.0:
        return
    for row, seen in enumerate(history):
        ids = np.unique(seen)
        values = logits[row, ids]
        logits[row, ids] = np.where(values > 0, values / penalty, values * penalty)


def sample_next(
    logits: np.ndarray, sampling: Sampling, rng: np.random.Generator, history: list[np.ndarray] | None = None
) -> np.ndarray:
    """logits [B, V] → next ids [B]. Sorting 50k logits costs milliseconds, so top-p first narrows the
    candidates with a linear-time partition and widens only if they do not cover top_p. Greedy without a penalty
    reads the logits as they are; everything else works on a copy (the caller's logits are never changed)."""
    if sampling.greedy and (history is None or sampling.repetition_penalty == 1.0):
        return np.asarray(logits).argmax(axis=-1)
    logits = np.array(logits, dtype=np.float32, copy=True)
    if history is not None:
        apply_repetition_penalty(logits, history, sampling.repetition_penalty)
    scale = 1.0 / sampling.temperature if not sampling.greedy else np.inf
    # a temperature below float32's range is greedy: the softmax is one-hot
    if not scale < np.finfo(np.float32).max:
        return logits.argmax(axis=-1)
    # shift first: (logits - max) / T is ≤ 0, so a tiny temperature sends the rest to -inf (probability 0) instead of
    # overflowing to inf and making inf - inf = NaN
    logits -= logits.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):
        logits *= np.float32(scale)
    rows, vocab = logits.shape
    out = np.empty(rows, dtype=np.int64)
    for row in range(rows):
        scores = logits[row]
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        top_k = sampling.top_k if 0 < sampling.top_k < vocab else vocab
        if top_k == vocab and sampling.top_p >= 1.0:
            out[row] = min(int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum())), vocab - 1)
            continue
        width = top_k if top_k < vocab else min(vocab, 256)
        while True:
            cand = np.argpartition(-scores, width - 1)[:width] if width < vocab else np.arange(vocab)
            if top_k < vocab or width == vocab or probs[cand].sum() >= sampling.top_p:
                break
            width = min(vocab, width * 4)
        cand = cand[np.argsort(-probs[cand], kind="stable")]
        kept = probs[cand] / probs[cand].sum()
        if sampling.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(kept), sampling.top_p)) + 1
            cand, kept = cand[:keep], kept[:keep] / kept[:keep].sum()
        cumulative = np.cumsum(kept)
        out[row] = cand[min(int(np.searchsorted(cumulative, rng.random() * cumulative[-1])), len(cand) - 1)]
    return out
