"""Accuracy figures printed beside benchmark rows: one stable key per row, derived from the spec (kind, variant,
backend) that built the row — never from its display label — and a figure that may be missing, which prints as
"not measured (why)", never as a number. The reference row prints "reference": a row compared with itself is not a
measurement."""

from __future__ import annotations

import math

REFERENCE = "reference"


def spec_key(kind: str, variant: str | None, backend: str) -> str:
    """The key of a row built from the spec (kind, variant, backend), as `run_encode` takes specs."""
    return f"{kind}/{backend}/{variant or 'fp32'}"


def mean_min(measured: dict, key: str, mean: str, minimum: str) -> str:
    """`measured` maps a row key to its metrics (a dict), to REFERENCE, or to the reason it was not measured (a
    string). Returns "mean / min" to 4 places, "reference", or "not measured (reason)"."""
    entry = measured.get(key)
    if entry is None:
        return "not measured (no accuracy run for this row)"
    if entry == REFERENCE:
        return "reference"
    if isinstance(entry, str):
        return f"not measured ({entry})"
    values = [entry.get(mean), entry.get(minimum)]
    missing = [name for name, v in zip((mean, minimum), values) if not _number(v)]
    if missing:
        return f"not measured ({', '.join(missing)} missing)"
    return f"{values[0]:.4f} / {values[1]:.4f}"


def metric(measured: dict, key: str, name: str) -> float | None:
    """One measured number of a row, or None when the row has none (reference, not measured, missing)."""
    entry = measured.get(key)
    value = entry.get(name) if isinstance(entry, dict) else None
    return float(value) if _number(value) else None


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
