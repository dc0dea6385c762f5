"""The searches behind the lossy variants: a calibration gate that judges a candidate on calibration text (the
recorded gate uses held-out text), and the weight-only ladder from the requested settings to the safest."""

from __future__ import annotations

from pathlib import Path

import onnx

from ..console import status
from ..export import graph
from ..runtime.bundle import Bundle
from ..runtime.store import temp_name
from . import gate
from .weight_only import SMALLEST_BLOCK, default_block, quantize_weight_only


def _evaluate(bundle: Bundle, precision: str, candidate: onnx.ModelProto, texts, search: bool, backend: str):
    """gate.evaluate on a candidate still in memory: written beside the bundle for the run, then removed."""
    path = temp_name(
        bundle.path / f"model.{precision}.onnx"
    )  # a killed run leaves a .tmp- file the next writer removes
    try:
        graph.save_onnx(candidate, path)
        return gate.evaluate(bundle, path, precision, texts, search=search, backend=backend)
    finally:
        path.unlink(missing_ok=True)


class HeldOutGate:
    """The held-out gate a variant is recorded with, as a search's judge (calibration_gate(held_out=...)). It keeps
    its last verdict with the candidate it judged, so the plan a search returns is not measured a second time
    (`result_for`)."""

    def __init__(self, bundle: Bundle, precision: str, texts: list[str], backend: str = "ort-cpu"):
        self.bundle, self.precision, self.texts, self.backend = bundle, precision, texts, backend
        self.last: tuple[onnx.ModelProto, gate.GateResult] | None = None

    def __call__(self, candidate: onnx.ModelProto) -> gate.GateResult:
        result = _evaluate(self.bundle, self.precision, candidate, self.texts, False, self.backend)
        self.last = (candidate, result)
        return result

    def result_for(self, model: onnx.ModelProto) -> gate.GateResult | None:
        """The verdict on `model` itself (the same object, unchanged since), None if it was not the last judged."""
        return self.last[1] if self.last is not None and self.last[0] is model else None


def calibration_gate(
    bundle: Bundle,
    precision: str,
    calib_texts: list[str],
    headroom: float = 0.0,
    backend: str = "ort-cpu",
    held_out: HeldOutGate | None = None,
):
    """The accuracy gate on calibration text (the search's guide; the recorded gate uses held-out text), by
    gate.search_thresholds, with `headroom` (GateResult.passed_with_headroom) for searches whose rungs are coarse.

    With `held_out`, a candidate calibration lets through must also pass the held-out gate the variant is recorded
    with, so the search does not stop at a plan that gate refuses: it goes on up its ladder. (On the trained demo
    ALBERT, int8 with every weight per-tensor keeps all 32 calibration texts, expected agreement 0.9998, and flips
    2 of the 167 held-out labels.) The verdicts of the last call are in `passes.last` for the search's report."""
    texts = calib_texts[: bundle.kind.qdq_calibration_texts]

    def passes(candidate: onnx.ModelProto) -> bool:
        result = _evaluate(bundle, precision, candidate, texts, True, backend)
        passes.last = {"passed_calibration": result.passed_with_headroom(headroom)}
        if passes.last["passed_calibration"] and held_out is not None:
            passes.last["passed_held_out"] = held_out(candidate).passed
        return all(passes.last.values())

    passes.last = {}
    return passes


def weight_only_rungs(block_size: int, lm_head: bool) -> list[tuple[int, bool]]:
    """Weight-only settings from the requested (smallest file, fastest) to the safest: half the block, down to 32,
    with the LM head as asked; then the LM head back in fp32 (GPT-2's tied head is the one matrix whose error
    reaches every logit directly; in fp32 it is more bytes a token than all int4 layers), from the requested block
    halving down to 16. From 32 that is 32, 32 with the head in fp32, 16 (the ladder before the default grew)."""
    quantised = [(block, lm_head) for block in _halves(block_size, min(block_size, 32))]
    rungs = quantised + [(block, False) for block in _halves(block_size, SMALLEST_BLOCK)]
    return list(dict.fromkeys(rungs))


def _halves(block: int, last: int) -> list[int]:
    return [block >> i for i in range(8) if block >> i >= last]


def weight_only_gated(
    bundle: Bundle,
    source: Path,
    precision: str,
    calib_texts: list[str],
    block_size: int | None,
    lm_head: bool,
    accuracy_level: int,
    force: bool,
):
    """MatMulNBits at the requested settings (block None: `default_block`); when the calibration gate refuses them
    (and not `force`, which keeps exactly what was asked for), the next rung of `weight_only_rungs`. The held-out
    gate has the last word: where no rung passes calibration, the last (safest) is what it judges."""
    bits = 4 if precision == "int4" else 8
    source_model = onnx.load(str(source))
    block_size = default_block(source_model, precision) if block_size is None else block_size
    rungs = weight_only_rungs(block_size, lm_head)[: 1 if force else None]
    passes = None if len(rungs) == 1 else calibration_gate(bundle, precision, calib_texts, headroom=1 / 2)
    tried = []
    for block, head in rungs:
        with status(f"{precision}: MatMulNBits (block {block}, LM head {'quantised' if head else 'fp32'})"):
            model, report = quantize_weight_only(
                source_model, bits, block, lm_head=head, accuracy_level=accuracy_level
            )
        ok = passes(model) if passes else None
        tried.append({"block_size": block, "lm_head": head, "passed_calibration": ok})
        if ok is not False:
            break
    report["plans_tried"] = tried
    return model, report, None
