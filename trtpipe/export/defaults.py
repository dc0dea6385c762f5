"""What `make export` produces: the default bundles, exported offline and parity-checked, with a summary."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from ..console import info, out, progress, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError

# (preset, task): real MiniLM for embeddings, the published architectures for speed/size comparisons,
# and the in-project demo models for outputs that mean something (trained by `make demo-models`).
DEFAULTS = [
    ("minilm", "embed"),
    ("bert-base", "classify"),
    ("albert-base", "classify"),
    ("gpt2", "generate"),
]
DEMO_DEFAULTS = [
    ("demo-gpt2", "generate"),
    ("demo-bert-classify", "classify"),
    ("demo-albert-classify", "classify"),
    ("demo-bert", "fill-mask"),
    ("demo-albert", "fill-mask"),
]


def bundle_name(preset: str, task: str) -> str:
    return f"{preset}-{task}"


def _up_to_date(path: Path) -> bool:
    try:
        bundle = Bundle.load(path)
        bundle.model_path("fp32")
    except UserError:
        return False
    verdict = bundle.variants["fp32"].get("parity", {}).get("ort-cpu", {}).get("verdict")
    return verdict == "pass"


def default_plan(include_demo: bool = True) -> list[tuple[str, str]]:
    from .inputs import models_dir

    plan = list(DEFAULTS)
    if include_demo:
        plan += [(p, t) for p, t in DEMO_DEFAULTS if (models_dir() / p / "config.json").is_file()]
    return plan


def export_defaults(
    out_dir: Path, overwrite: bool = False, plan: list[tuple[str, str]] | None = None
) -> list[Path]:
    from .writer import export_bundle

    out_dir = Path(out_dir)
    plan = plan or default_plan()
    written: list[Path] = []
    failures: list[str] = []
    with progress(transient=False) as bar:
        task_id = bar.add_task("exporting default bundles", total=len(plan))
        for preset, task in plan:
            path = out_dir / bundle_name(preset, task)
            bar.update(task_id, description=f"{preset} ({task})")
            if not overwrite and path.exists() and _up_to_date(path):
                info(f"[dim]up to date:[/] {path}")
            else:
                try:
                    export_bundle(preset, task, path, overwrite=True)
                except CheckFailed as exc:
                    failures.append(str(exc))
            written.append(path)
            bar.advance(task_id)
    summarize(written)
    if failures:
        raise CheckFailed("\n".join(failures))
    return written


def summarize(paths: list[Path]) -> None:
    table = Table(title="bundles", show_edge=False)
    for col in ("bundle", "family", "task", "parameters", "model.onnx", "onnx / params", "parity", "weights"):
        table.add_column(col)
    for path in paths:
        bundle = Bundle.load(path)
        model = bundle.model
        fp32 = bundle.variants["fp32"]
        parity = fp32.get("parity", {}).get("ort-cpu", {}).get("verdict", "-")
        ratio = fp32["bytes"] / max(1, model.get("parameter_bytes", 1))
        table.add_row(
            str(path),
            bundle.family,
            bundle.task,
            f"{model.get('parameters', 0) / 1e6:.1f} M",
            f"{fp32['bytes'] / 2**20:.1f} MiB",
            f"{ratio:.3f}",
            parity,
            "random" if bundle.random_weights else "real",
        )
    out.print(table)
    if any(Bundle.load(p).random_weights for p in paths):
        warn("bundles with random weights are for speed, size and parity; their outputs are meaningless")
    encoders = [p for p in paths if not Bundle.load(p).is_decoder]
    decoders = [p for p in paths if Bundle.load(p).is_decoder]
    if encoders:
        embed = next((p for p in encoders if Bundle.load(p).task == "embed"), encoders[0])
        info(f'next: python cli.py run {embed} "A sentence to embed" "Another sentence"')
    if decoders:
        info(f'      python cli.py generate {decoders[-1]} "The list" --max-new-tokens 32')
    if paths:
        info(f"      python cli.py benchmark --engine {paths[0]}")
