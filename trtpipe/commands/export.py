"""CLI, stage 1: `export` a checkpoint or preset, `export-defaults` (what `make export` runs), `inspect` a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import info, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError
from ._common import BundleArg, JsonOpt, QuietOpt, command, print_json


@command("export")
def export_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="checkpoint directory or preset (minilm, bert-base, albert-base, gpt2, tiny-*, demo-*)"
        ),
    ],
    task: Annotated[
        str | None, typer.Option("--task", help="embed | classify | ner | qa | fill-mask | generate")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="bundle directory to write (default bundles/<model>-<task>)")
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset (17-21)")] = 17,
    max_length: Annotated[
        int | None, typer.Option("--max-length", help="longest input the bundle accepts (tokens)")
    ] = None,
    logits: Annotated[
        str, typer.Option("--logits", help="GPT-2: last (model.onnx) or all (adds model.all-logits.onnx)")
    ] = "last",
    seed: Annotated[int, typer.Option("--seed", help="seed for presets with random weights")] = 0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing bundle")] = False,
    skip_parity: Annotated[
        bool, typer.Option("--skip-parity", help="do not check parity against PyTorch")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Export a Hugging Face checkpoint or preset to an ONNX bundle, then check parity against PyTorch."""
    from ..export import export_bundle
    from ..models import ALL_TASKS
    from ..presets import PRESETS

    if task is not None and task not in ALL_TASKS:
        raise UserError(f"unknown task {task!r}; choose one of: {', '.join(ALL_TASKS)}")
    name = Path(model).name if Path(model).exists() else model
    resolved_task = task or (PRESETS[model].default_task if model in PRESETS else None)
    target = out_dir or Path("bundles") / (f"{name}-{resolved_task}" if resolved_task else name)
    path = export_bundle(
        model,
        task,
        target,
        opset=opset,
        max_length=max_length,
        overwrite=overwrite,
        seed=seed,
        logits=logits,
        check=not skip_parity,
    )
    _report_bundle(path, as_json)


def _report_bundle(path: Path, as_json: bool) -> None:

    bundle = Bundle.load(path)
    if as_json:
        print_json({"bundle": str(path), "manifest": bundle.manifest})
        return
    parity = bundle.variants["fp32"].get("parity", {}).get("ort-cpu")
    verdict = parity["verdict"] if parity else "not checked"
    info(f"  parity vs PyTorch (ort-cpu, fp32): [bold]{verdict}[/]")
    if bundle.random_weights:
        warn(f"{bundle.name} has random weights: outputs are meaningless (speed and parity only)")
    elif bundle.random_head:
        warn(
            f"{bundle.name}: randomly initialised {bundle.task} head (the checkpoint has none); fine-tune it first"
        )
    hint = f'trtpipe generate {path} "Hello"' if bundle.is_decoder else f'trtpipe run {path} "some text"'
    info(f"  next: {hint}")


@command("export-defaults")
def export_defaults_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="where the bundles go")] = Path("bundles"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="re-export bundles that already exist")
    ] = False,
    quiet: QuietOpt = False,
):
    """Export and parity-check the default bundles (what `make export` runs)."""
    from ..export.defaults import export_defaults

    export_defaults(out_dir, overwrite=overwrite)


@command("inspect")
def inspect_cmd(
    bundle: BundleArg,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify", help="also check every file's sha256 (reads every byte; sizes are always checked)"
        ),
    ] = False,
    as_json: JsonOpt = False,
):
    """Print a bundle's manifest summary, I/O table, variants and engines. A variant or engine whose file is
    missing or no longer has the size the manifest records (or, with --verify, its sha256) fails: exit 1."""
    from .render import print_inspect

    loaded = Bundle.load(bundle)
    problems = loaded.file_problems(sha256=verify)
    if as_json:
        print_json(loaded.manifest)
    else:
        print_inspect(loaded, problems, sha256=verify)
    if problems:
        found = "; ".join(f"{kind} {name}: {problem}" for (kind, name), problem in problems.items())
        fixes = sorted({_fix(loaded, kind, name) for kind, name in problems})
        raise CheckFailed(f"bundle {bundle}: {found}; {'; '.join(fixes)}")


def _fix(bundle: Bundle, kind: str, name: str) -> str:
    """The command that rewrites a file that no longer matches the manifest."""
    from ..runtime.trt.compat import rebuild_command

    if kind == "engine":
        return f"rebuild it: `{rebuild_command(bundle.path, bundle.engines[name])}`"
    precision = bundle.variants[name].get("precision", "fp32") if kind == "variant" else "fp32"
    if precision != "fp32":  # optimize wrote it (and its .kv-inplace twin); export wrote the fp32 graphs
        return f"recreate it: `trtpipe optimize {bundle.path} --precision {precision} --overwrite`"
    return "re-export the bundle (`trtpipe export ... --overwrite`)"
