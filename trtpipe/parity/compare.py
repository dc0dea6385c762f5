"""Comparing a backend's outputs with the reference: per-output statistics (max abs/rel, cosine, first mismatch,
NaN/Inf), the tolerances per backend (DESIGN §7) and the report that collects them."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from ..runtime.errors import CheckFailed

# (atol, rtol) for fp32 variants, per backend (DESIGN §7). TensorRT and CUDA may use TF32.
TOLERANCES = {
    "ort-cpu": (1e-4, 1e-4),
    "ort-cuda": (1e-3, 1e-3),
    "ort-trt": (1e-3, 1e-3),
    "trt": (1e-3, 1e-3),
    "ov": (1e-4, 1e-4),  # OpenVINO's CPU plugin at f32 (the session never lets it pick bf16)
}


@dataclass
class OutputStats:
    name: str
    shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    mean_abs: float = 0.0
    cosine: float = 1.0
    nan: int = 0
    inf: int = 0
    mismatches: int = 0
    first_mismatch: list[int] | None = None
    elements: int = 0
    passed: bool = True

    def merge(self, other: OutputStats) -> OutputStats:
        total = self.elements + other.elements
        return OutputStats(
            name=self.name,
            shape=other.shape,
            max_abs=max(self.max_abs, other.max_abs),
            max_rel=max(self.max_rel, other.max_rel),
            mean_abs=(self.mean_abs * self.elements + other.mean_abs * other.elements) / max(total, 1),
            cosine=min(self.cosine, other.cosine),
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            mismatches=self.mismatches + other.mismatches,
            first_mismatch=self.first_mismatch if self.first_mismatch is not None else other.first_mismatch,
            elements=total,
            passed=self.passed and other.passed,
        )


def compare_arrays(
    name: str, ref: np.ndarray, test: np.ndarray, atol: float, rtol: float, valid: np.ndarray | None = None
) -> OutputStats:
    """allclose-style check (|test - ref| ≤ atol + rtol·|ref|) with the numbers a human needs to debug a miss.
    `valid` (broadcastable bool) limits the check to meaningful elements (e.g. non-padding positions)."""
    if ref.shape != test.shape:
        return OutputStats(
            name,
            list(test.shape),
            max_abs=float("inf"),
            passed=False,
            first_mismatch=[],
            elements=int(test.size),
        )
    ref64 = ref.astype(np.float64)
    test64 = test.astype(np.float64)
    nan = int(np.isnan(test64).sum())
    inf = int(np.isinf(test64).sum())
    diff = np.abs(test64 - ref64)
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = diff > atol + rtol * np.abs(ref64)
    if valid is not None:
        valid = np.broadcast_to(valid, ref.shape)
        bad &= valid
        diff = np.where(valid, diff, 0.0)
    significant = np.abs(ref64) > atol
    rel = np.where(significant, diff / np.maximum(np.abs(ref64), 1e-30), 0.0)
    flat_ref, flat_test = ref64.ravel(), np.nan_to_num(test64.ravel())
    denom = np.linalg.norm(flat_ref) * np.linalg.norm(flat_test)
    cosine = float(flat_ref @ flat_test / denom) if denom > 0 else float(np.array_equal(flat_ref, flat_test))
    first = None
    if bad.any():
        first = [int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape)]
    return OutputStats(
        name=name,
        shape=list(test.shape),
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        nan=nan,
        inf=inf,
        mismatches=int(bad.sum()),
        first_mismatch=first,
        elements=int(test.size),
        passed=not bad.any() and nan == 0 and inf == 0,
    )


@dataclass
class ParityReport:
    backend: str
    variant: str
    atol: float
    rtol: float
    samples: int
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    levels: dict[str, dict] = field(default_factory=dict)  # decoder levels: topk, sequences, cache, batch
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.outputs.values()) and all(
            l.get("passed", True) for l in self.levels.values()
        )

    def add(self, stats: OutputStats) -> None:
        prev = self.outputs.get(stats.name)
        self.outputs[stats.name] = prev.merge(stats) if prev else stats

    def to_dict(self) -> dict:
        return {
            "verdict": "pass" if self.passed else "fail",
            "backend": self.backend,
            "variant": self.variant,
            "atol": self.atol,
            "rtol": self.rtol,
            "samples": self.samples,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "levels": self.levels,
            "seconds": round(self.seconds, 2),
            "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def failures(self) -> list[str]:
        lines = []
        for s in self.outputs.values():
            if not s.passed:
                lines.append(
                    f"{s.name}: max abs {s.max_abs:.3g} (atol {self.atol:g}), {s.mismatches} of {s.elements} "
                    f"elements off, first at {s.first_mismatch}, NaN {s.nan}, Inf {s.inf}"
                )
        for name, level in self.levels.items():
            if not level.get("passed", True):
                lines.append(f"{name}: {level.get('summary', level)}")
        return lines


def raise_if_failed(report: ParityReport, what: str) -> None:
    if not report.passed:
        raise CheckFailed(
            f"{what}: parity FAILED on {report.backend}/{report.variant}:\n  "
            + "\n  ".join(report.failures())
        )
