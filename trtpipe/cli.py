"""The command line: parse → call one library function → print. No logic lives here.

Errors: a UserError becomes one red line naming the fix and exit code 2; a failed parity check or accuracy gate
exits 1; usage errors (unknown option, bad value) are one line and exit 2 too.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from .console import QUIET, err, info, out, warn
from .runtime.errors import CheckFailed, UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="trtpipe: export → optimize → build → run → check, for BERT, ALBERT and GPT-2.",
)

BundleArg = Annotated[
    Path, typer.Argument(help="bundle directory (written by `trtpipe export`)", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
BackendOpt = Annotated[str, typer.Option("--backend", help="ort-cpu | ort-cuda | ort-trt | trt")]
VariantOpt = Annotated[
    str | None, typer.Option("--variant", help="fp32 (default), fused, fp16, int8, int8-qdq, int8-wo, int4")
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="intra-op threads (default: ONNX Runtime's choice)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="only results, no progress or notes")]


def command(*args, **kwargs):
    """app.command that turns UserError into one red line + exit 2 and CheckFailed into exit 1."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            QUIET["on"] = bool(kw.get("quiet")) or bool(os.environ.get("TRTPIPE_QUIET"))
            try:
                return fn(*a, **kw)
            except UserError as exc:
                err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
                raise typer.Exit(2) from None
            except CheckFailed as exc:
                err.print(f"[bold red]check failed:[/] {escape(str(exc))}", highlight=False)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("[red]interrupted[/]")
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def _read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"input file {path} does not exist")
    if not path.is_file():
        raise UserError(f"input {path} is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {path}`"
        ) from None
    return [line for line in text.splitlines() if line.strip()]


def _read_text(path: Path) -> str:
    return "\n".join(_read_lines(path))


# ------------------------------------------------------------------------------------------------ stage 1


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
    from .export import export_bundle
    from .models import ALL_TASKS, PRESETS

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
    from .runtime.bundle import Bundle

    bundle = Bundle.load(path)
    if as_json:
        _print_json({"bundle": str(path), "manifest": bundle.manifest})
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
    from .defaults import export_defaults

    export_defaults(out_dir, overwrite=overwrite)


@command("inspect")
def inspect_cmd(bundle: BundleArg, as_json: JsonOpt = False):
    """Print a bundle's manifest summary, I/O table, variants and engines."""
    from .report import print_inspect
    from .runtime.bundle import Bundle

    loaded = Bundle.load(bundle)
    if as_json:
        _print_json(loaded.manifest)
        return
    print_inspect(loaded)


# ------------------------------------------------------------------------------------------------ running


@command("run")
def run_cmd(
    bundle: BundleArg,
    texts: Annotated[
        list[str] | None, typer.Argument(help="input texts (fill-mask: include [MASK])", show_default=False)
    ] = None,
    file: Annotated[Path | None, typer.Option("--file", help="UTF-8 file, one text per line")] = None,
    text_pair: Annotated[
        list[str] | None,
        typer.Option("--text-pair", help="second segment for sentence-pair classification (one per text)"),
    ] = None,
    question: Annotated[str | None, typer.Option("--question", help="QA: the question")] = None,
    context: Annotated[str | None, typer.Option("--context", help="QA: the context")] = None,
    context_file: Annotated[
        Path | None, typer.Option("--context-file", help="QA: read the context from a UTF-8 file")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="labels (classify) or fills (fill-mask) to show")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", help="texts per batch (length-bucketed)")] = 32,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="cut texts longer than the model's limit (with a warning)")
    ] = False,
    check_finite: Annotated[
        bool, typer.Option("--check-finite", help="fail if any output is NaN/Inf, naming it")
    ] = False,
    backend: BackendOpt = "ort-cpu",
    variant: VariantOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Answer the bundle's task for some text: labels, entities, answers, mask fills or embeddings."""
    from .report import print_task_result
    from .runtime import load_pipeline
    from .runtime.bundle import Bundle

    loaded = Bundle.load(bundle)
    if loaded.is_decoder:
        raise UserError(f'{bundle} is a GPT-2 bundle; use `trtpipe generate {bundle} "prompt"`')
    items = list(texts or [])
    if file is not None:
        items += _read_lines(file)
    if context_file is not None:
        context = _read_text(context_file)
    if loaded.task == "qa":
        question = question or (items[0] if items else None)
        if not question or not context:
            raise UserError("qa needs --question Q and --context C (or --context-file F)")
    elif not items:
        raise UserError("no input text: pass TEXT arguments or --file FILE")
    if top_k < 1:
        raise UserError(f"--top-k must be ≥ 1 (got {top_k})")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline(
            loaded, backend=backend, variant=variant, threads=threads, check_outputs=check_finite
        )
    if truncate:
        _warn_truncation(pipe, items)
    task = loaded.task
    if task == "qa":
        result = pipe.qa(question=question, context=context)
    elif task == "classify":
        result = pipe.classify(items, text_pair, top_k=top_k, batch_size=batch_size, truncate=truncate)
    elif task == "ner":
        result = pipe.ner(items, batch_size=batch_size, truncate=truncate)
    elif task == "fill-mask":
        result = pipe.fill_mask(
            items, top_k=max(top_k, 5) if top_k == 1 else top_k, batch_size=batch_size, truncate=truncate
        )
    else:
        result = pipe.embed(items, batch_size=batch_size, truncate=truncate)
    if as_json:
        _print_json(
            {
                "bundle": str(bundle),
                "task": task,
                "random_weights": loaded.random_weights,
                "random_head": loaded.random_head,
                "inputs": items if task != "qa" else {"question": question, "context": context},
                "result": result,
            }
        )
        return
    if loaded.random_weights:
        warn(f"{loaded.name} has random weights: these outputs are meaningless")
    elif loaded.random_head:
        warn(
            f"{loaded.name}: the {task} head is randomly initialised (the checkpoint has none): these answers are "
            "meaningless until the model is fine-tuned for the task"
        )
    print_task_result(task, items, result, question=question)


def _warn_truncation(pipe, items: list[str]) -> None:
    limit = pipe.bundle.max_length
    for index, enc in enumerate(pipe.encoder.plain.encode_batch(items)):
        if len(enc.ids) > limit:
            warn(f"text {index + 1} has {len(enc.ids)} tokens; truncated to {limit}")


@command("parity")
def parity_cmd(
    bundle: BundleArg,
    backend: BackendOpt = "ort-cpu",
    variant: VariantOpt = None,
    samples: Annotated[int, typer.Option("--samples", help="real sentences to compare on")] = 16,
    atol: Annotated[float | None, typer.Option("--atol", help="override the absolute tolerance")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="override the relative tolerance")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Compare a backend against PyTorch on real text; store the verdict in the manifest; exit 1 on failure."""
    from .parity import check_parity, raise_if_failed
    from .report import print_parity

    if samples < 1:
        raise UserError(f"--samples must be ≥ 1 (got {samples})")
    report = check_parity(bundle, backend=backend, variant=variant, samples=samples, atol=atol, rtol=rtol)
    if as_json:
        _print_json(report.to_dict())
    else:
        print_parity(report)
    raise_if_failed(report, str(bundle))


# ------------------------------------------------------------------------------------------------ stage 2


@command("optimize")
def optimize_cmd(
    bundle: BundleArg,
    precision: Annotated[
        str, typer.Option("--precision", help="fused | fp16 | int8 | int8-qdq | int8-wo | int4")
    ],
    calibration: Annotated[
        Path | None, typer.Option("--calibration", help="UTF-8 file, one calibration text per line")
    ] = None,
    method: Annotated[
        str, typer.Option("--method", help="int8-qdq calibration: minmax | entropy | percentile")
    ] = "minmax",
    block_size: Annotated[int, typer.Option("--block-size", help="int4 / int8-wo block size")] = 32,
    lm_head: Annotated[
        bool, typer.Option("--lm-head/--no-lm-head", help="GPT-2: quantise the LM head too")
    ] = True,
    accuracy_level: Annotated[
        int, typer.Option("--accuracy-level", help="MatMulNBits accuracy level (4 = int8 compute)")
    ] = 4,
    gate_texts: Annotated[
        Path | None, typer.Option("--gate-texts", help="held-out texts for the accuracy gate (one per line)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="write the variant even if it fails its gate (recorded)")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="rebuild a variant that exists")] = False,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Add an optimised variant to a bundle: fusion, fp16 with fp32 islands, int8, weight-only int4/int8 (gated)."""
    from .optimize.variants import optimize_bundle

    entry = optimize_bundle(
        bundle,
        precision,
        calibration=calibration,
        force=force,
        overwrite=overwrite,
        method=method,
        block_size=block_size,
        lm_head=lm_head,
        accuracy_level=accuracy_level,
        gate_texts=gate_texts,
    )
    if as_json:
        _print_json(entry)


@command("optimize-defaults")
def optimize_defaults_cmd(
    out_dir: Annotated[Path, typer.Option("--out", help="the bundles directory")] = Path("bundles"),
    retry_refused: Annotated[
        bool, typer.Option("--retry-refused", help="try again the variants whose gate refused them before")
    ] = False,
    quiet: QuietOpt = False,
):
    """Add the default optimised variants to the default bundles (what `make optimize` runs)."""
    from .defaults import optimize_defaults

    optimize_defaults(out_dir, retry_refused=retry_refused)


# ------------------------------------------------------------------------------------------------ benchmarks


def _ints(value: str, option: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, e.g. 1,8 (got {value!r})") from None
    if not items or any(v < 1 for v in items):
        raise UserError(f"{option} values must be ≥ 1 (got {value!r})")
    return items


def _names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@command("benchmark")
def benchmark_cmd(
    engine: Annotated[Path, typer.Option("--engine", help="the bundle to benchmark (directory)")],
    backend: Annotated[
        str, typer.Option("--backend", help="ort-cpu | ort-cuda | ort-trt | trt | torch | all (comma list)")
    ] = "ort-cpu",
    variant: Annotated[str, typer.Option("--variant", help="variant name(s), comma list, or all")] = "fp32",
    batch: Annotated[str, typer.Option("--batch", help="encoder batch sizes, e.g. 1,8")] = "1,8",
    seq: Annotated[int, typer.Option("--seq", help="encoder sequence length (tokens)")] = 128,
    prompt_len: Annotated[
        str, typer.Option("--prompt-len", help="decoder prompt lengths, e.g. 32,512")
    ] = "32,512",
    new_tokens: Annotated[int, typer.Option("--new-tokens", help="decoder tokens to generate")] = 64,
    threads: ThreadsOpt = 2,
    warmup: Annotated[int, typer.Option("--warmup", help="warm-up runs per row")] = 2,
    iters: Annotated[int, typer.Option("--iters", help="runs per row per round")] = 4,
    rounds: Annotated[int, typer.Option("--rounds", help="interleaved rounds")] = 5,
    seconds: Annotated[
        float | None, typer.Option("--seconds", help="time per row instead of --iters")
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
    out_dir: Annotated[
        Path, typer.Option("--out", help="report directory (JSON, CSV, Markdown, PNG)")
    ] = Path("reports"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Benchmark a bundle on every backend / variant / shape asked, with peers side by side, on identical inputs."""
    if workload is not None:
        from .benchmark.workload import run_workload

        report = run_workload(
            engine,
            _read_lines(workload),
            batch_size=workload_batch,
            threads=threads,
            baselines=_names(baseline) or ["optimum"],
            out_dir=out_dir,
            rounds=rounds,
        )
    else:
        from .benchmark.run import benchmark

        report = benchmark(
            engine,
            _names(backend),
            _names(variant),
            _ints(batch, "--batch"),
            seq,
            _ints(prompt_len, "--prompt-len"),
            new_tokens,
            threads,
            warmup,
            iters,
            seconds,
            _names(baseline),
            out_dir,
            rounds=rounds,
            memory=memory,
        )
    if as_json:
        _print_json(report)


@command("compare")
def compare_cmd(
    bundles: Annotated[list[Path], typer.Argument(help="bundles to compare (e.g. BERT, ALBERT and GPT-2)")],
    threads: ThreadsOpt = 2,
    seq: Annotated[
        int, typer.Option("--seq", help="tokens per forward pass (encoders) / prompt (GPT-2)")
    ] = 128,
    memory: Annotated[
        bool, typer.Option("--memory/--no-memory", help="peak RSS per model (a fresh process each)")
    ] = True,
    out_dir: Annotated[Path, typer.Option("--out", help="report directory")] = Path("reports"),
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """BERT vs ALBERT vs GPT-2, measured: parameters, unique weight bytes, bundle size per variant, latency, memory."""
    from .benchmark.compare import compare

    report = compare(bundles, threads=threads, seq=seq, memory=memory, out_dir=out_dir)
    if as_json:
        _print_json(report)


# --------------------------------------------------------------------------------------------- generation


@command("generate")
def generate_cmd(
    bundle: BundleArg,
    prompts: Annotated[
        list[str], typer.Argument(help="prompt text(s); several prompts run as one left-padded batch")
    ],
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", help="tokens to generate")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", help="keep the k most likely tokens (0 = off)")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", help="nucleus sampling mass in (0, 1] (1 = off)")] = 1.0,
    repetition_penalty: Annotated[
        float, typer.Option("--repetition-penalty", help="> 1 discourages repeats (1 = off)")
    ] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", help="sampling seed")] = None,
    stop: Annotated[list[str] | None, typer.Option("--stop", help="stop string (repeatable)")] = None,
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="print tokens as they come")] = True,
    truncate: Annotated[
        bool, typer.Option("--truncate", help="keep the tail of a prompt that is too long")
    ] = False,
    kv: Annotated[str, typer.Option("--kv", help="auto | inplace | pingpong (KV cache strategy)")] = "auto",
    backend: BackendOpt = "ort-cpu",
    variant: VariantOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Generate text with a GPT-2 bundle (KV-cached; greedy or sampled; streamed)."""
    import time

    from .runtime.generate import Generator, Sampling

    sampling = Sampling(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed
    )
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be ≥ 1 (got {max_new_tokens})")
    generator = Generator(bundle, backend=backend, variant=variant, threads=threads, kv=kv)
    generator.check(prompts, max_new_tokens, truncate)
    if generator.bundle.random_weights and not as_json:
        warn(f"{generator.bundle.name} has random weights: the text is meaningless (speed and parity only)")
    started = time.perf_counter()
    if stream and not as_json and len(prompts) == 1:
        stats: dict = {}
        out.print(prompts[0], end="", style="bold", markup=False, highlight=False)
        count = 0
        for token in generator.stream(
            prompts, max_new_tokens, sampling, stop, truncate=truncate, stats=stats
        ):
            sys.stdout.write(token.text)
            sys.stdout.flush()
            count += 1
        sys.stdout.write("\n")
        _generation_stats(count, time.perf_counter() - started, stats)
        return
    completions = generator.generate(prompts, max_new_tokens, sampling, stop, truncate=truncate)
    if as_json:
        _print_json(
            {
                "bundle": str(bundle),
                "random_weights": generator.bundle.random_weights,
                "completions": [
                    {
                        "prompt": c.prompt,
                        "text": c.text,
                        "ids": c.ids,
                        "finish": c.finish,
                        "prompt_tokens": c.prompt_tokens,
                    }
                    for c in completions
                ],
                "stats": {k: v for k, v in completions[0].stats.items() if k != "step_s"},
            }
        )
        return
    for completion in completions:
        out.print(completion.prompt or "", end="", style="bold", markup=False, highlight=False)
        out.print(completion.text, markup=False, highlight=False)
        info(f"[dim]finish: {completion.finish}[/]")
    _generation_stats(
        sum(len(c.ids) for c in completions), time.perf_counter() - started, completions[0].stats
    )


def _generation_stats(tokens: int, seconds: float, stats: dict) -> None:
    import statistics

    steps = stats.get("step_s") or []
    tpot = f" · {statistics.median(steps) * 1e3:.1f} ms/token" if steps else ""
    info(
        f"[dim]{tokens} tokens in {seconds:.2f}s · TTFT {stats.get('ttft_s', 0) * 1e3:.0f} ms{tpot} · "
        f"KV {stats.get('kv', '?')} ({stats.get('kv_bytes', 0) / 2**20:.1f} MiB, {stats.get('variant', '')})[/]"
    )


@command("score")
def score_cmd(
    bundle: BundleArg,
    file: Annotated[Path, typer.Argument(help="UTF-8 text file to score")],
    stride: Annotated[
        int | None, typer.Option("--stride", help="tokens between window starts (default: half a window)")
    ] = None,
    window: Annotated[
        int | None, typer.Option("--window", help="tokens per window (default: the model's positions)")
    ] = None,
    backend: BackendOpt = "ort-cpu",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Perplexity of a text file under a GPT-2 bundle."""
    from .runtime.score import perplexity

    result = perplexity(
        bundle, _read_text(file), backend=backend, window=window, stride=stride, threads=threads
    )
    if as_json:
        _print_json(result)
        return
    out.print(
        f"perplexity {result['perplexity']:.2f} (mean NLL {result['nll']:.4f}) over {result['scored']} tokens; "
        f"{result['method']}; window {result['window']}, stride {result['stride']}"
    )


# Commands of the other stages live in trtpipe/commands/ (they import `app` and `command` from here).
from .commands import demo, engines, serving  # noqa: E402,F401

# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line + exit 2 (no usage box, no traceback)."""
    from typer._click import exceptions as click_exceptions
    from typer.exceptions import Abort
    from typer.main import get_command

    cmd = get_command(app)
    try:
        code = cmd.main(args=argv, prog_name="trtpipe", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        where = (
            f"trtpipe {exc.ctx.info_name} --help"
            if exc.ctx is not None and exc.ctx.info_name != "trtpipe"
            else "trtpipe --help"
        )
        if exc.ctx is not None and exc.ctx.command_path:
            where = f"{exc.ctx.command_path.replace('cli.py', 'trtpipe')} --help"
        err.print(f"[bold red]error:[/] {escape(exc.format_message())} (see `{where}`)", highlight=False)
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `trtpipe … | head`
        sys.stderr.close()
        sys.exit(0)
    except (Abort, KeyboardInterrupt):
        err.print("[red]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main", "out"]
