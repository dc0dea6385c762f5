"""CLI, stage 3: `build` a TensorRT engine, `build-defaults` (what `make engines` runs), `lint` a variant for
TensorRT, `advise` profile shapes from real text."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import info, out, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError
from ._common import BundleArg, JsonOpt, QuietOpt, command, mib, print_json, read_lines

FlavourOpt = Annotated[
    str | None,
    typer.Option(
        "--flavour",
        help="trt10 (TensorRT 10, needs a GPU) or rtx (TensorRT-RTX, builds on a CPU-only machine)",
    ),
]


EngineVariantOpt = Annotated[
    str, typer.Option("--variant", help="fp32 | fp16 | int8-qdq (the ONNX variant to build)")
]


@command("build")
def build_cmd(
    bundle: BundleArg,
    variant: EngineVariantOpt = "fp32",
    flavour: FlavourOpt = None,
    min_shapes: Annotated[
        str | None, typer.Option("--min-shapes", help='trtexec syntax: "input_ids:1x1,attention_mask:1x1"')
    ] = None,
    opt_shapes: Annotated[
        str | None, typer.Option("--opt-shapes", help="shapes TensorRT tunes kernels for")
    ] = None,
    max_shapes: Annotated[
        str | None,
        typer.Option(
            "--max-shapes", help="largest shapes; GPT-2: input_ids (prefill B×S), attention_mask (decode B×T)"
        ),
    ] = None,
    profile_from: Annotated[
        Path | None, typer.Option("--profile-from", help="profile file written by `trtpipe advise --out`")
    ] = None,
    workspace: Annotated[
        float | None, typer.Option("--workspace", help="workspace memory pool limit, GB")
    ] = None,
    builder_level: Annotated[
        int | None, typer.Option("--builder-level", help="builder optimization level 0-5 (default 3)")
    ] = None,
    timing_cache: Annotated[
        Path | None,
        typer.Option("--timing-cache", help="TensorRT 10 timing cache (default BUNDLE/engines/timing.cache)"),
    ] = None,
    version_compatible: Annotated[
        bool,
        typer.Option("--version-compatible", help="TensorRT 10: plan loads on later TensorRT 10 runtimes"),
    ] = False,
    hardware_compatible: Annotated[
        bool, typer.Option("--hardware-compatible", help="TensorRT 10: plan runs on any Ampere-or-newer GPU")
    ] = False,
    compute_capabilities: Annotated[
        str | None,
        typer.Option(
            "--compute-capabilities",
            help="TensorRT-RTX targets, e.g. 8.6,8.9 (default: 8.0, 8.6, 8.9, 12.0 and later)",
        ),
    ] = None,
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="allow TF32 for fp32 math")] = True,
    gpu_memory: Annotated[
        float | None,
        typer.Option("--gpu-memory", help="target GPU memory (GB) for the pre-build memory check"),
    ] = None,
    print_trtexec: Annotated[
        bool,
        typer.Option("--print-trtexec", help="print the equivalent trtexec command line and build nothing"),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="rebuild even if the engine is up to date")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Build a TensorRT engine from a bundle's ONNX variant (skipped when up to date)."""
    from ..engines.builder import build_engine
    from ..engines.plan import BuildOptions, plan_build
    from ..engines.profiles import describe

    options = BuildOptions(
        variant=variant,
        flavour=flavour,
        min_shapes=min_shapes,
        opt_shapes=opt_shapes,
        max_shapes=max_shapes,
        profile_from=profile_from,
        workspace_gb=workspace,
        builder_level=builder_level,
        timing_cache=timing_cache,
        version_compatible=version_compatible,
        hardware_compatible=hardware_compatible,
        compute_capabilities=compute_capabilities,
        tf32=tf32,
        gpu_memory_gb=gpu_memory,
        overwrite=overwrite,
    )
    if print_trtexec:
        plan = plan_build(bundle, options, need_library=False)
        if as_json:
            print_json({"trtexec": plan.trtexec, "profiles": plan.profiles, "engine": plan.file})
        else:
            out.print(plan.trtexec, markup=False, highlight=False, soft_wrap=True)
        return
    result = build_engine(bundle, options)
    if as_json:
        print_json(result.to_dict())
        return
    entry = result.entry
    if result.skipped:
        out.print(
            f"{result.bundle}/{result.file}: {result.reason}; pass --overwrite to rebuild", markup=False
        )
        return
    out.print(
        f"built {result.bundle}/{result.file} ({mib(entry['bytes'])}) in {entry['build_seconds']:.1f}s · "
        f"{entry['flavour']} {entry['tensorrt_version']} · target {entry['target']} "
        f"(compute capability {', '.join(entry['compute_capabilities']) or '?'})",
        markup=False,
    )
    info(f"[dim]{describe(entry['profiles'])}; memory estimate {result.plan.estimate.summary()}[/]")
    if entry["flavour"] == "rtx":
        info("[dim]TensorRT-RTX plans JIT-compile on first load, on an RTX-class GPU (not A100/H100)[/]")


@command("build-defaults")
def build_defaults_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="directory of bundles")] = Path("bundles"),
    flavour: Annotated[str, typer.Option("--flavour", help="rtx (default; no GPU needed) or trt10")] = "rtx",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="rebuild engines that are up to date")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Build engines for every bundle in a directory (what `make engines` runs); skips what is up to date."""
    from rich.table import Table

    from ..engines.defaults import build_defaults

    results = build_defaults(out_dir, flavour=flavour, overwrite=overwrite)
    if as_json:
        print_json([r.to_dict() for r in results])
        return
    table = Table(title="engines", show_edge=False)
    for col in ("bundle", "engine", "size", "profiles", "build"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.bundle.name,
            r.file,
            mib(r.entry.get("bytes", 0)),
            str(len(r.entry.get("profiles", []))),
            "up to date" if r.skipped else f"{r.seconds:.1f}s",
        )
    out.print(table)


@command("lint")
def lint_cmd(
    bundle: BundleArg,
    variant: EngineVariantOpt = "fp32",
    flavour: Annotated[
        str | None,
        typer.Option("--flavour", help="which TensorRT's parser to use (default: what is installed)"),
    ] = None,
    table: Annotated[
        bool, typer.Option("--table", help="check against the operator table instead of TensorRT's parser")
    ] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Will TensorRT parse this variant? Names each unsupported node and why; exits 1 if any."""
    from rich.markup import escape

    from ..engines.lint import lint_bundle

    report = lint_bundle(bundle, variant, flavour=flavour, table=table)
    if as_json:
        print_json(report.to_dict())
    else:
        out.print(
            f"{escape(report.bundle)} {report.variant} ({report.file}): {report.nodes or '?'} nodes · {report.method}"
        )
        for finding in report.findings:
            colour = "red" if finding.severity == "error" else "yellow"
            out.print(
                f"  [{colour}]{finding.severity}[/] {escape(finding.node)} ({escape(finding.op)}): {escape(finding.reason)}"
            )
        if report.passed:
            out.print("[green]TensorRT can parse every node[/]")
    if not report.passed:
        raise CheckFailed(
            f"{len(report.errors)} node(s) TensorRT cannot parse in {report.file}; first: "
            f"{report.errors[0].node} ({report.errors[0].op})"
        )


@command("advise")
def advise_cmd(
    bundle: BundleArg,
    texts: Annotated[
        Path | None,
        typer.Option("--texts", help="UTF-8 file, one text per line (default: the offline corpus)"),
    ] = None,
    max_batch: Annotated[int | None, typer.Option("--max-batch", help="largest batch to serve")] = None,
    opt_batch: Annotated[
        int | None, typer.Option("--opt-batch", help="typical batch (TensorRT tunes for it)")
    ] = None,
    out_file: Annotated[
        Path | None, typer.Option("--out", help="write a profile file for `trtpipe build --profile-from`")
    ] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Suggest TensorRT min/opt/max shapes from the token lengths of real text."""
    from rich.table import Table

    from ..engines.advise import advise
    from ..engines.profiles import write_profile_file

    if max_batch is not None and max_batch < 1:
        raise UserError(f"--max-batch must be ≥ 1 (got {max_batch})")
    if opt_batch is not None and opt_batch < 1:
        raise UserError(f"--opt-batch must be ≥ 1 (got {opt_batch})")
    loaded = Bundle.load(bundle)
    lines = read_lines(texts) if texts is not None else None
    advice = advise(
        loaded, lines, source=str(texts) if texts else None, max_batch=max_batch, opt_batch=opt_batch
    )
    if out_file is not None:
        write_profile_file(
            out_file, loaded, advice.profiles, {"percentiles": advice.percentiles, "texts": advice.texts}
        )
    if as_json:
        print_json({**advice.to_dict(), "written": str(out_file) if out_file else None})
        return
    p = advice.percentiles
    out.print(
        f"{advice.texts} texts from {advice.source}: tokens p50 {p['p50']} · p75 {p['p75']} · p90 {p['p90']} · "
        f"p99 {p['p99']} · max {p['max']} (model limit {loaded.max_length})",
        markup=False,
    )
    peak = max(c for _, _, c in advice.histogram)
    for low, high, count in advice.histogram:
        bar = "█" * max(1, round(30 * count / peak))
        out.print(f"  {low:>5}-{high:<5} {count:>6}  {bar}", markup=False)
    table = Table(title="suggested profile(s)", show_edge=False)
    for col in ("profile", "input", "min", "opt", "max"):
        table.add_column(col)
    for profile in advice.profiles:
        for name, bounds in profile["shapes"].items():
            if name.startswith("past_key_values.") and not name.endswith("0.key"):
                continue
            table.add_row(
                profile["name"], name, *("x".join(map(str, bounds[s])) for s in ("min", "opt", "max"))
            )
    out.print(table)
    out.print(f"memory at the maximum: about {advice.memory['total'] / 2**20:,.0f} MiB", markup=False)
    for message in advice.warnings:
        warn(message)
    if out_file is not None:
        info(f"wrote {out_file}; build with: trtpipe build {bundle} --profile-from {out_file}")
