"""CLI: `benchmark --engine BUNDLE` (every backend / variant / shape, peers side by side) and `compare` (BERT vs
ALBERT vs GPT-2: size, latency, memory)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..runtime.errors import UserError
from ._common import (
    JsonOpt,
    QuietOpt,
    ThreadsOpt,
    command,
    parse_ints,
    parse_names,
    print_json,
    read_lines,
)


@command("benchmark")
def benchmark_cmd(
    engine: Annotated[Path, typer.Option("--engine", help="the bundle to benchmark (directory)")],
    backend: Annotated[
        str,
        typer.Option("--backend", help="ort-cpu | ort-cuda | ort-trt | trt | ov | torch | all (comma list)"),
    ] = "ort-cpu",
    variant: Annotated[str, typer.Option("--variant", help="variant name(s), comma list, or all")] = "fp32",
    batch: Annotated[
        str | None,
        typer.Option("--batch", help="encoder batch sizes [default: 1,8, those the bundle takes]"),
    ] = None,
    seq: Annotated[
        int | None,
        typer.Option("--seq", help="encoder sequence length in tokens [default: 128, or the bundle's max]"),
    ] = None,
    prompt_len: Annotated[
        str | None,
        typer.Option("--prompt-len", help="decoder prompt lengths [default: 32,512, those that fit]"),
    ] = None,
    new_tokens: Annotated[
        int | None,
        typer.Option("--new-tokens", help="decoder tokens to generate [default: 64, or what fits]"),
    ] = None,
    threads: ThreadsOpt = 2,
    warmup: Annotated[
        int | None,
        typer.Option("--warmup", help="warm-up runs per row [default: 2; GPT-2: 1 whole generation]"),
    ] = None,
    iters: Annotated[
        int | None,
        typer.Option(
            "--iters", help="runs per encoder row per round [default: 4]; a GPT-2 round is one generation"
        ),
    ] = None,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved rounds")] = 5,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="time per encoder row instead of --iters")
    ] = None,
    baseline: Annotated[
        str,
        typer.Option(
            "--baseline",
            help="peers in the same run: torch, optimum (encoders); torch, optimum, genai (GPT-2)",
        ),
    ] = "",
    workload: Annotated[
        Path | None, typer.Option("--workload", help="UTF-8 file of real texts: end-to-end task throughput")
    ] = None,
    workload_batch: Annotated[int, typer.Option("--workload-batch", help="batch size for --workload")] = 8,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="peak RSS per row (a fresh process each)")
    ] = True,
    prefill_backend: Annotated[
        str | None,
        typer.Option(
            "--prefill-backend",
            help="GPT-2: add ort-cpu rows whose prompts run on this engine (ov), beside ort-cpu's own",
        ),
    ] = None,
    kv_cache: Annotated[
        str | None,
        typer.Option(
            "--kv-cache",
            help="GPT-2: int8 adds ort-cpu rows on the variants' int8 KV cache twins (`optimize --precision kv8`)",
        ),
    ] = None,
    out_dir: Annotated[
        Path, typer.Option("--out", help="report directory (JSON, CSV, Markdown, PNG)")
    ] = Path("reports"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Benchmark a bundle on every backend / variant / shape asked, with peers side by side, on identical inputs."""
    if workload is not None:
        from ..benchmark.workload import run_workload

        if prefill_backend is not None or kv_cache is not None:
            raise UserError(
                "--prefill-backend and --kv-cache time GPT-2 generation; --workload runs encoder tasks"
            )

        report = run_workload(
            engine,
            read_lines(workload),
            batch_size=workload_batch,
            threads=threads,
            baselines=parse_names(baseline) or ["optimum"],
            out_dir=out_dir,
            rounds=rounds,
        )
    else:
        from ..benchmark.run import benchmark

        report = benchmark(
            engine,
            parse_names(backend),
            parse_names(variant),
            None if batch is None else parse_ints(batch, "--batch"),
            seq,
            None if prompt_len is None else parse_ints(prompt_len, "--prompt-len"),
            new_tokens,
            threads,
            warmup,
            iters,
            seconds,
            parse_names(baseline),
            out_dir,
            rounds=rounds,
            memory=memory,
            prefill_backend=prefill_backend,
            kv_cache=kv_cache,
        )
    if as_json:
        print_json(report)


@command("compare")
def compare_cmd(
    bundles: Annotated[list[Path], typer.Argument(help="bundles to compare (e.g. BERT, ALBERT and GPT-2)")],
    threads: ThreadsOpt = 2,
    seq: Annotated[
        int | None,
        typer.Option(
            "--seq",
            help="tokens per forward pass (encoders) / prompt (GPT-2) [default: 128, or what every bundle takes]",
        ),
    ] = None,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="peak RSS per model (a fresh process each)")
    ] = True,
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")] = Path("reports"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """BERT vs ALBERT vs GPT-2, measured: parameters, unique weight bytes, bundle size per variant, latency, memory."""
    from ..benchmark.compare import compare

    report = compare(bundles, threads=threads, seq=seq, memory=memory, out_dir=out_dir)
    if as_json:
        print_json(report)
