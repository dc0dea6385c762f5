"""Latency statistics: percentiles, mean ± sd, coefficient of variation, throughput."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

HIGH_COV = 0.10  # above this the machine was noisy: the row gets a warning


def timed_calls(fn: Callable[[], object], repeat: int) -> list[float]:
    """Seconds of each of `repeat` calls of `fn`, after one untimed warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def summarize(samples_s: list[float], items_per_sample: float = 1.0) -> dict:
    """Stats of latency samples (seconds) in milliseconds; qps = items per second at the mean latency."""
    values = np.asarray([s for s in samples_s if s is not None and math.isfinite(s)], dtype=np.float64)
    if values.size == 0:
        return {"n": 0}
    ms = values * 1e3
    mean = float(ms.mean())
    # one sample has no spread to measure: sd and CoV are None ("not measured"), never 0
    sd = float(ms.std(ddof=1)) if ms.size > 1 else None
    cov = sd / mean if sd is not None and mean > 0 else None
    return {
        "n": int(ms.size),
        "mean_ms": mean,
        "sd_ms": sd,
        "cov": cov,
        "min_ms": float(ms.min()),
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "max_ms": float(ms.max()),
        "qps": items_per_sample / (mean / 1e3) if mean > 0 else 0.0,
        "noisy": None if cov is None else cov > HIGH_COV,
    }


def per_round_p99(rounds_s: list[list[float]]) -> dict:
    """Tail latency that one bad moment of a shared machine cannot set: the p99 of each round's samples (seconds)
    and the median of those p99s (ms). A stall of ours recurs in every round and moves the median; a stall of the
    machine lands in one round and does not."""
    ms = [np.asarray(r, dtype=np.float64) * 1e3 for r in rounds_s if len(r)]
    p99s = [float(np.percentile(r, 99)) for r in ms]
    return {
        "rounds": len(p99s),
        "samples_per_round": min((len(r) for r in ms), default=0),
        "p50_ms_per_round": [float(np.percentile(r, 50)) for r in ms],
        "p99_ms_per_round": p99s,
        "p99_ms_round_median": float(np.median(p99s)) if p99s else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b
