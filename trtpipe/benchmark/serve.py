"""Serving under load (bench/serve_load.py): the mixed real-text workloads sent to Triton, and the tables and plot
that report them — requests/s, generated tokens/s, latency p50/p90/p99, TTFT and TPOT, per model and concurrency,
batching on against batching off."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import corpus
from ..runtime.bundle import Bundle
from ..runtime.text import TextEncoder


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    prompt_tokens: int
    max_new_tokens: int
    temperature: float
    seed: int


def encoder_texts(bundle: Bundle, count: int = 256, seed: int = 0) -> list[str]:
    """Real text of mixed lengths that fits the bundle: held-out sentences and paragraphs of the offline docs,
    shuffled (deterministic for a seed)."""
    encoder = TextEncoder(bundle)
    paragraphs = [p for text in corpus.topics().values() for p in text.split("\n\n") if len(p.split()) >= 4]
    pool = list(corpus.sentences("heldout")) + paragraphs[:: max(1, len(paragraphs) // 400)]
    fits = [
        text
        for text, enc in zip(pool, encoder.plain.encode_batch(pool))
        if text.strip() and len(enc.ids) <= bundle.max_length
    ]
    order = np.random.default_rng(seed).permutation(len(fits))
    return [fits[i] for i in order[:count]]


def generation_requests(
    bundle: Bundle,
    count: int = 64,
    prompt_tokens: tuple[int, int] = (8, 256),
    new_tokens: tuple[int, int] = (16, 128),
    sampled: float = 0.5,
    seed: int = 0,
) -> list[GenerationRequest]:
    """Prompts cut from the offline docs at uniform lengths in `prompt_tokens`, each with max_new_tokens uniform in
    `new_tokens`; a fraction `sampled` of them sample (temperature 0.8, own seed), the rest are greedy. Lengths are
    clipped so prompt + new tokens fit the model."""
    encoder = TextEncoder(bundle)
    ids = encoder.encode_prompt(" ".join(corpus.topics().values())[:400_000])
    rng = np.random.default_rng(seed)
    positions = bundle.limits["max_positions"]
    requests = []
    for _ in range(count):
        new = int(rng.integers(new_tokens[0], new_tokens[1] + 1))
        length = int(rng.integers(prompt_tokens[0], prompt_tokens[1] + 1))
        length = max(1, min(length, positions - new - 8))  # the text is re-tokenized: leave a little room
        start = int(rng.integers(0, len(ids) - length))
        text = encoder.decode(ids[start : start + length])
        temperature = 0.8 if rng.random() < sampled else 0.0
        count_now = len(encoder.encode_prompt(text))
        requests.append(GenerationRequest(text, count_now, new, temperature, int(rng.integers(0, 2**31))))
    return requests


def cell(value, digits: int = 1, why: str = "not measured") -> str:
    """A table cell: the number, or what says it was not measured (never a made-up figure)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return why
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def load_table(rows: list[dict], generation: bool) -> list[str]:
    """Markdown rows: one per (mode, concurrency) of one model."""
    if generation:
        head = (
            "| batching | concurrency | requests/s | tokens/s | latency p50 / p90 / p99 ms | TTFT p50 / p99 ms | "
            "TPOT p50 / p99 ms | errors |"
        )
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(
                f"| {r['mode']} | {r['clients']} | {cell(r.get('throughput_rps'), 2)} | {cell(r.get('tokens_per_s'))} | "
                f"{cell(r.get('p50_ms'), 0)} / {cell(r.get('p90_ms'), 0)} / {cell(r.get('p99_ms'), 0)} | "
                f"{cell(r.get('ttft_p50_ms'), 0)} / {cell(r.get('ttft_p99_ms'), 0)} | "
                f"{cell(r.get('tpot_p50_ms'))} / {cell(r.get('tpot_p99_ms'))} | {r.get('errors', 0)} |"
            )
        return lines
    lines = [
        "| batching | concurrency | requests/s | latency p50 / p90 / p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['clients']} | {cell(r.get('throughput_rps'))} | {cell(r.get('p50_ms'))} / "
            f"{cell(r.get('p90_ms'))} / {cell(r.get('p99_ms'))} | {r.get('errors', 0)} |"
        )
    return lines


def ratio(rows: list[dict], key: str, top: tuple[str, int], bottom: tuple[str, int]) -> float | None:
    """rows[mode, clients][key] of `top` over `bottom` (None when either was not measured)."""
    by = {(r["mode"], r["clients"]): r.get(key) for r in rows}
    a, b = by.get(top), by.get(bottom)
    return a / b if a and b else None


def plot(results: dict[str, list[dict]], path: Path) -> Path:
    """Throughput and p99 latency against concurrency, one panel pair per model, batching on vs off."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results)
    fig, axes = plt.subplots(2, len(models), figsize=(3.6 * len(models), 5.6), squeeze=False)
    for column, model in enumerate(models):
        rows = results[model]
        generation = any(r.get("tokens_per_s") is not None for r in rows)
        metric, label = ("tokens_per_s", "tokens/s") if generation else ("throughput_rps", "requests/s")
        for mode in dict.fromkeys(r["mode"] for r in rows):
            mine = [r for r in rows if r["mode"] == mode and r.get(metric)]
            x = [r["clients"] for r in mine]
            axes[0][column].plot(x, [r[metric] for r in mine], marker="o", label=mode)
            axes[1][column].plot(x, [r["p99_ms"] for r in mine], marker="o", label=mode)
        axes[0][column].set_title(model, fontsize=9)
        axes[0][column].set_ylabel(label)
        axes[1][column].set_ylabel("p99 latency ms")
        axes[1][column].set_xlabel("concurrency")
        for row in axes:
            row[column].set_xscale("log", base=2)
            row[column].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
