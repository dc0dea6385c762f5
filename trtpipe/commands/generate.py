"""CLI: `generate` text with a GPT-2 bundle (streamed, KV-cached) and `score` a text file's perplexity."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ..console import info, out, warn
from ..runtime.errors import UserError
from ._common import (
    BackendOpt,
    BundleArg,
    JsonOpt,
    QuietOpt,
    ThreadsOpt,
    VariantOpt,
    command,
    print_json,
    read_text,
)


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
        bool, typer.Option("--truncate", help="keep the tail of a prompt that is too long (with a warning)")
    ] = False,
    kv: Annotated[str, typer.Option("--kv", help="auto | inplace | pingpong (KV cache strategy)")] = "auto",
    kv_cache: Annotated[
        str,
        typer.Option(
            "--kv-cache", help="fp32 | int8 (in place on ort-cpu: `optimize --precision kv8` first)"
        ),
    ] = "fp32",
    backend: BackendOpt = "ort-cpu",
    prefill_backend: Annotated[
        str | None,
        typer.Option(
            "--prefill-backend",
            help="ov: run the prompt on OpenVINO, decode on ONNX Runtime's in-place cache (--backend ort-cpu)",
        ),
    ] = None,
    variant: VariantOpt = None,
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Generate text with a GPT-2 bundle (KV-cached; greedy or sampled; streamed)."""
    import time

    from ..runtime.generate import Generator
    from ..runtime.sampling import Sampling

    sampling = Sampling(
        temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty, seed=seed
    )
    if max_new_tokens <= 0:
        raise UserError(f"--max-new-tokens must be ≥ 1 (got {max_new_tokens})")
    generator = Generator(
        bundle,
        backend=backend,
        variant=variant,
        threads=threads,
        kv=kv,
        prefill_backend=prefill_backend,
        kv_cache=kv_cache,
    )
    prepared = generator.check(prompts, max_new_tokens, truncate)
    for message in prepared.messages:
        warn(message)
    if generator.bundle.random_weights and not as_json:
        warn(f"{generator.bundle.name} has random weights: the text is meaningless (speed and parity only)")
    started = time.perf_counter()
    if stream and not as_json and len(prompts) == 1:
        stats: dict = {}
        out.print(prepared.texts[0], end="", style="bold", markup=False, highlight=False)
        count = 0
        for token in generator.stream(prepared, max_new_tokens, sampling, stop, stats=stats):
            sys.stdout.write(token.text)
            sys.stdout.flush()
            count += 1
        sys.stdout.write("\n")
        _generation_stats(count, time.perf_counter() - started, stats)
        return
    completions = generator.generate(prepared, max_new_tokens, sampling, stop)
    if as_json:
        print_json(
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
                        "prompt_tokens_dropped": c.prompt_tokens_dropped,
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
    from ..runtime.score import perplexity

    result = perplexity(
        bundle, read_text(file), backend=backend, window=window, stride=stride, threads=threads
    )
    if as_json:
        print_json(result)
        return
    out.print(
        f"perplexity {result['perplexity']:.2f} (mean NLL {result['nll']:.4f}) over {result['scored']} tokens; "
        f"{result['method']}; window {result['window']}, stride {result['stride']}"
    )
