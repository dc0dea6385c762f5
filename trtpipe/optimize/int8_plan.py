"""The dynamic-int8 plan search: which scheme each weight gets — per-tensor (fastest), per-channel, or fp32.

Nodes that read the same weight (ALBERT's layers) always share its scheme (int8.consistent_per_weight). Weights climb
the ladder in order of their quantisation error, most sensitive first, in two phases like the schemes' costs: first
to per-channel (about as fast as per-tensor on ONNX Runtime), then, everything per-channel, to fp32 (which gives up
that weight's int8 speed; at most half the weights). Steps move 1, 2, 4, … weights, so the most sensitive are tried
one at a time and a model with many weights still takes a handful of steps. The first plan that passes the
calibration gate is kept; the held-out gate has the last word.

A weight's error is measured where layers share weights (the spec's `shared_layers`): it is quantised alone, and the
drift of the model's outputs on calibration text is its error — a shared weight's error compounds over every layer
that reuses it, which a per-node estimate cannot see, and there are few weights to measure. Elsewhere it is
estimated (int8.node_scores: weight rounding + dynamic activation error of the one node that reads it).

A plan can also be carried to another bundle of the same architecture by each weight's role: the name of the first
node that reads it (`roles`), e.g. the plan a trained model's search chose, applied to a random-weight model of the
published size to measure its speed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from ..console import progress
from ..runtime.errors import UserError
from .gate import verdicts
from .int8 import apply_dynamic, node_scores, weight_matmuls

SCHEMES = ("per-tensor", "per-channel", "fp32")
EVERY_WEIGHT = "*"  # a plan role that stands for every weight (`--plan-from per-channel`)


def weight_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """weight initializer → the MatMul nodes that read it, in graph order."""
    groups: dict[str, list[str]] = {}
    for node in weight_matmuls(model):
        groups.setdefault(node.input[1], []).append(node.name)
    return groups


def roles(model: onnx.ModelProto) -> dict[str, str]:
    """weight → its role: the name of the first node that reads it (the same module path in any export of the same
    architecture, whatever the initializer is called)."""
    return {weight: nodes[0] for weight, nodes in weight_groups(model).items()}


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _outputs(model: onnx.ModelProto, feeds: list[dict]) -> list[list[np.ndarray]]:
    session = _session(model)
    names = {i.name for i in session.get_inputs()}
    runs = [session.run(None, {k: v for k, v in feed.items() if k in names}) for feed in feeds]
    return [[np.asarray(o, dtype=np.float64) for o in run if np.asarray(o).dtype.kind == "f"] for run in runs]


def drift(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]]) -> float:
    """Relative RMS error of every float output over all feeds, averaged over the outputs."""
    per_output = []
    for index in range(len(reference[0])):
        err = sum(float(np.sum((r[index] - c[index]) ** 2)) for r, c in zip(reference, candidate))
        size = sum(float(np.sum(r[index] ** 2)) for r in reference)
        per_output.append(np.sqrt(err / max(size, 1e-30)))
    return float(np.mean(per_output)) if per_output else 0.0


def measured_errors(model: onnx.ModelProto, feeds: list[dict]) -> dict[str, dict[str, float]]:
    """weight → {scheme: output drift with only this weight quantised, every other weight fp32}."""
    groups = weight_groups(model)
    reference = _outputs(model, feeds)
    errors: dict[str, dict[str, float]] = {}
    with progress() as bar:
        task = bar.add_task("int8: measuring each weight's sensitivity", total=2 * len(groups))
        for weight, nodes in groups.items():
            errors[weight] = {}
            for scheme in SCHEMES[:2]:
                quantized = apply_dynamic(model, {n: scheme for n in nodes})
                errors[weight][scheme] = drift(reference, _outputs(quantized, feeds))
                bar.advance(task)
    return errors


def estimated_errors(model: onnx.ModelProto, feeds: list[dict]) -> dict[str, dict[str, float]]:
    """weight → {scheme: the largest estimated error of the nodes that read it} (int8.node_scores)."""
    scores = node_scores(model, feeds)
    return {
        weight: {s: max(scores[n][s] for n in nodes) for s in SCHEMES[:2]}
        for weight, nodes in weight_groups(model).items()
    }


def _batches(count: int) -> list[int]:
    """How many weights have moved after each step: 1, 2, 4, … up to count."""
    marks, n = [], 1
    while n < count:
        marks.append(n)
        n *= 2
    return marks + [count] if count else []


def climb(errors: dict[str, dict[str, float]], fp32_share: float = 0.5) -> list[dict[str, str]]:
    """Plans (weight → scheme) from fastest to safest: all per-tensor; then the weights with the largest per-tensor
    error per-channel (1, 2, 4, … of them, until all are); then, the rest per-channel, the weights with the largest
    per-channel error fp32 (1, 2, 4, … of them, up to `fp32_share` of the weights)."""
    weights = list(errors)
    plans = [{w: "per-tensor" for w in weights}]
    by_tensor = sorted(weights, key=lambda w: (-errors[w]["per-tensor"], weights.index(w)))
    for moved in _batches(len(weights)):
        plans.append({w: "per-channel" if w in by_tensor[:moved] else "per-tensor" for w in weights})
    by_channel = sorted(weights, key=lambda w: (-errors[w]["per-channel"], weights.index(w)))
    chosen = by_channel[: int(fp32_share * len(weights))]
    for moved in _batches(len(chosen)):
        plans.append({w: "fp32" if w in chosen[:moved] else "per-channel" for w in weights})
    unique: list[dict[str, str]] = []
    for plan in plans:
        if plan not in unique:
            unique.append(plan)
    return unique


def _counts(plan: dict[str, str]) -> dict[str, int]:
    return {s: sum(1 for v in plan.values() if v == s) for s in SCHEMES}


def _report(model, plan: dict[str, str], tried: list[dict], errors: dict | None, source: str) -> dict:
    names = roles(model)
    report = {
        "plans_tried": tried,
        "scheme": {s: sorted(n for n, v in plan.items() if v == s) for s in SCHEMES[1:]},
        "counts": _counts(plan),
        "roles": {names[w]: plan[nodes[0]] for w, nodes in weight_groups(model).items()},
        "errors_from": source,
    }
    if errors:
        top = sorted(errors, key=lambda w: -errors[w]["per-tensor"])[:8]
        report["errors_top"] = [
            [names[w], round(errors[w]["per-tensor"], 5), round(errors[w]["per-channel"], 5)] for w in top
        ]
    return report


def quantize_dynamic_gated(
    model: onnx.ModelProto,
    calib_feeds: list[dict],
    passes: Callable[[onnx.ModelProto], bool],
    measure: bool = False,
):
    """The first plan of `climb` that passes the calibration gate (`passes`), or the safest one tried (the held-out
    gate then reports the failure). measure=True measures each weight's error instead of estimating it; the
    all-per-tensor plan is tried before any error is measured or estimated. Returns (model, node plan, report)."""
    groups = weight_groups(model)
    tried: list[dict] = []
    errors = None

    def attempt(by_weight: dict[str, str]):
        plan = {n: by_weight[w] for w, nodes in groups.items() for n in nodes}
        quantized = apply_dynamic(model, plan)
        ok = passes(quantized)
        tried.append({**_counts(plan), **verdicts(passes, ok)})
        return quantized, plan, ok

    quantized, plan, ok = attempt({w: "per-tensor" for w in groups})
    if not ok:
        errors = measured_errors(model, calib_feeds) if measure else estimated_errors(model, calib_feeds)
        plans = climb(errors)[1:]
        with progress() as bar:
            task = bar.add_task("int8: searching per-weight precision", total=len(plans))
            for by_weight in plans:
                quantized, plan, ok = attempt(by_weight)
                bar.advance(task)
                if ok:
                    break
    source = "measured" if measure else "estimated"
    return quantized, plan, _report(model, plan, tried, errors, source)


def plan_from_roles(model: onnx.ModelProto, by_role: dict[str, str], origin: str) -> dict[str, str]:
    """A node plan for `model` from another bundle's recorded plan (report["roles"]): each weight takes the scheme of
    the weight with the same role there. Every weight must have one."""
    groups, names = weight_groups(model), roles(model)
    if set(by_role) == {EVERY_WEIGHT}:
        by_role = {names[w]: by_role[EVERY_WEIGHT] for w in groups}
    missing = sorted(names[w] for w in groups if names[w] not in by_role)
    if missing:
        raise UserError(
            f"the int8 plan of {origin} has no scheme for {len(missing)} of this model's {len(groups)} weights "
            f"(first: {missing[0]}); a plan carries over only between exports of the same architecture and task"
        )
    bad = sorted({s for s in by_role.values() if s not in SCHEMES})
    if bad:
        raise UserError(f"the int8 plan of {origin} names unknown schemes: {', '.join(bad)}")
    return {n: by_role[names[w]] for w, nodes in groups.items() for n in nodes}


def quantize_with_plan(model: onnx.ModelProto, by_role: dict[str, str], origin: str):
    """Quantise by a plan carried over from `origin` (no search). Returns (model, node plan, report)."""
    plan = plan_from_roles(model, by_role, origin)
    report = _report(model, plan, [{**_counts(plan), "passed_calibration": None}], None, "carried over")
    report["plan_from"] = origin
    return apply_dynamic(model, plan), plan, report
