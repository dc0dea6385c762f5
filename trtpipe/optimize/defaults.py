"""What `make optimize` adds: the default variants per task, gated on real weights, recorded as forced on random
weights; a variant refused before (same fp32 model) is not retried unless asked."""

from __future__ import annotations

from pathlib import Path

from ..console import info, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed
from .variants import optimize_bundle, refusal_is_current

# What `make optimize` adds: fused + dynamic int8 for encoders (CPU), fp16 + int8-qdq for TensorRT, and
# weight-only int4 / int8 for GPT-2 decoding.
OPTIMIZE = {
    "embed": ["fused", "int8", "fp16", "int8-qdq"],
    "classify": ["fused", "int8", "fp16", "int8-qdq"],
    "fill-mask": ["int8", "fp16"],
    "generate": ["int4", "int8-wo", "int8", "fp16"],
}


def optimize_defaults(out_dir: Path, retry_refused: bool = False) -> dict[str, list[str]]:
    """What `make optimize` runs: the OPTIMIZE variants each bundle lacks. On real weights (MiniLM, the demo models)
    every gate is enforced: a variant that fails is not written, reported, and the run goes on (the gate did its
    job). Random-weight bundles exist for speed, size and parity, and their near-uniform outputs make any gate
    meaningless, so their variants are written with the gate measured and recorded as forced (`gate.forced`).
    A variant refused before (manifest `refused`, same fp32 model) is skipped unless `retry_refused`."""
    plan, skipped = [], []
    for path in sorted(Path(out_dir).iterdir()):
        if (path / "manifest.json").is_file():
            bundle = Bundle.load(path)
            for precision in OPTIMIZE.get(bundle.task, []):
                if precision in bundle.variants:
                    continue
                if not retry_refused and refusal_is_current(bundle, precision):
                    skipped.append(f"{path.name} {precision}")
                    continue
                plan.append((path, precision, bundle.random_weights))
    if skipped:
        info(
            f"[dim]refused before (same fp32 model), not retried: {', '.join(skipped)}; "
            "`trtpipe optimize-defaults --retry-refused` tries again[/]"
        )
    result: dict[str, list[str]] = {"written": [], "refused": [], "skipped": skipped}
    for path, precision, random_weights in plan:
        note = " [dim](random weights: gate recorded, not enforced)[/]" if random_weights else ""
        info(f"[bold]{path.name}[/]: {precision}{note}")
        try:
            optimize_bundle(path, precision, force=random_weights)
        except CheckFailed as exc:
            warn(str(exc))
            result["refused"].append(f"{path.name} {precision}")
        else:
            result["written"].append(f"{path.name} {precision}")
    if result["refused"]:
        warn(
            f"not written, failed their accuracy gate: {', '.join(result['refused'])}; "
            "`trtpipe optimize BUNDLE --precision P --force` keeps one anyway"
        )
    return result
