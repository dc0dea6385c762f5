"""CLI, stage 2: `optimize` adds a gated variant to a bundle; `optimize-defaults` is what `make optimize` runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import BundleArg, JsonOpt, QuietOpt, command, print_json


@command("optimize")
def optimize_cmd(
    bundle: BundleArg,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            help="fused | fp16 | bf16 (OpenVINO, encoders) | int8 | int8-qdq | int8-nncf (OpenVINO, encoders) | "
            "int8-wo | int4 | kv-fused (GPT-2: BatchEngine's fused step, a twin of each in-place KV variant) | kv8 "
            "(GPT-2: an int8 KV cache twin of each, calibrated and gated)",
        ),
    ],
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="UTF-8 file, one calibration text per line")
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="int8-qdq calibration: minmax | entropy | percentile")
    ] = "minmax",
    block_size: Annotated[
        int | None,
        typer.Option(
            "--block-size",
            help="int4 / int8-wo block size: 16 | 32 | 64 | 128 | 256 (default: int4 128, int8-wo 256, at most the "
            "narrowest weight's input width; the gate's ladder halves it where accuracy needs)",
        ),
    ] = None,
    int8_weights: Annotated[
        str,
        typer.Option(
            "--int8-weights",
            help="int8: u8 (runs on every CPU) | s8 (VNNI's u8 × s8 kernels: faster there, refused on x86 CPUs "
            "without VNNI)",
        ),
    ] = "u8",
    lm_head: Annotated[
        bool, typer.Option("--lm-head/--no-lm-head", help="GPT-2: quantise the LM head too")
    ] = True,
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="MatMulNBits accuracy level (4 = int8 compute)")
    ] = 4,
    gate_texts: Annotated[
        Path | None, typer.Option("--gate-texts", help="held-out texts for the accuracy gate (one per line)")
    ] = None,
    plan_from: Annotated[
        Path | None,
        typer.Option(
            "--plan-from",
            help="int8: no search; the plan another bundle of the same architecture and task recorded, "
            "or per-tensor / per-channel for every weight (still gated)",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="write the variant even if it fails its gate (recorded)")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="rebuild a variant that exists")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Add an optimised variant to a bundle: fusion, fp16 with fp32 islands, int8, weight-only int4/int8 (gated)."""
    from ..optimize.variants import optimize_bundle

    entry = optimize_bundle(
        bundle,
        precision,
        calibration=calibration,
        force=force,
        overwrite=overwrite,
        method=method,
        block_size=block_size,
        int8_weights=int8_weights,
        lm_head=lm_head,
        accuracy_level=accuracy_level,
        gate_texts=gate_texts,
        plan_from=plan_from,
    )
    if as_json:
        print_json(entry)


@command("optimize-defaults")
def optimize_defaults_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="the bundles directory")] = Path("bundles"),
    retry_refused: Annotated[
        bool, typer.Option("--retry-refused", help="try again the variants whose gate refused them before")
    ] = False,
    quiet: QuietOpt = False,
):
    """Add the default optimised variants to the default bundles (what `make optimize` runs)."""
    from ..optimize.defaults import optimize_defaults

    optimize_defaults(out_dir, retry_refused=retry_refused)
