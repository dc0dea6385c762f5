"""Parity against PyTorch at every stage (DESIGN §7): tensors (`tensors.py`), and for GPT-2 top-k agreement,
greedy sequences, cached vs uncached logits and batching (`decoder.py`), compared and reported by `compare.py`
against the reference in `torch_ref.py`; `check.py` runs them and stores the verdict."""

from .check import check_parity, check_parity_source
from .compare import TOLERANCES, OutputStats, ParityReport, compare_arrays, raise_if_failed
from .torch_ref import TorchSession

__all__ = [
    "TOLERANCES",
    "OutputStats",
    "ParityReport",
    "TorchSession",
    "check_parity",
    "check_parity_source",
    "compare_arrays",
    "raise_if_failed",
]
