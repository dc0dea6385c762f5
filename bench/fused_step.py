"""The fused step (`trtpipe/runtime/fused.py`: R decoding rows and one prompt chunk in one pass, on the bundle's
`kv-fused` twins) against BatchEngine's two passes on GPT-2 124M (issue 20, item 3), in two tables:
- one step: the fused pass against a decode step then a 64-token chunk, on the same buffers (logits checked);
- serving: the serve_load mix (32 requests) at 16 in flight through BatchEngine with the fused step (the default on
  a bundle that has it) and with `fused=False`, rounds interleaved in one process, and the memory each engine adds.
Makes the twins first if the bundle has none (`trtpipe optimize --precision kv-fused`). Rewrites the `fused-step`
section of docs/benchmarks.md.

    python bench/fused_step.py [--variants fp32 int4] [--rows 1 4 9 16] [--rounds 3] [--no-write]   # ≈ 4 min
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

CHUNK, CHUNK_PAST, REPEAT = 64, 64, 5


def step_rows(path, variant: str, args, tokens_all, lengths_all, chunk) -> list[str]:
    """One variant's rows of the step table: the fused pass checked against the two passes at each R, then both
    timed, rounds interleaved."""
    from common import span

    from trtpipe.optimize.fused_twin import two_passes
    from trtpipe.runtime import Bundle, Generator
    from trtpipe.runtime.fused import fused_name, open_fused

    bundle = Bundle.load(path)
    base = "fp32" if variant is None else variant
    fused = open_fused(bundle, base, True, "ort-cpu", None, args.threads, None)
    runner = Generator(path, variant=variant, threads=args.threads).runner
    cache = runner.new_cache(len(tokens_all) + 1, 512)
    inputs = {r: (tokens_all[:r], lengths_all[:r]) for r in args.rows}
    calls = {
        "two": lambda r: two_passes(runner, cache, *inputs[r], chunk, CHUNK_PAST, r),
        "one": lambda r: fused.run(cache, *inputs[r], chunk, CHUNK_PAST, r).copy(),
    }
    # both write the same K/V at the same places, so one cache serves the check and the timing
    diffs = {r: float(np.abs(calls["two"](r) - calls["one"](r)).max()) for r in args.rows}
    timings: dict = {(r, which): [] for r in args.rows for which in calls}
    for _ in range(args.rounds):
        for rows in args.rows:
            for which, call in calls.items():
                spent = []
                for _ in range(REPEAT):
                    started = time.perf_counter()
                    call(rows)
                    spent.append(time.perf_counter() - started)
                timings[(rows, which)].append(float(np.median(spent)) * 1e3)
    lines = []
    for rows in args.rows:
        two_ms, one_ms = timings[(rows, "two")], timings[(rows, "one")]
        saved = [a - b for a, b in zip(two_ms, one_ms)]
        ratio = [b / a for a, b in zip(two_ms, one_ms)]
        lines.append(
            f"| {fused_name(base)} | {rows} | {span(two_ms, 1)} | {span(one_ms, 1)} | {span(saved, 1)} "
            f"| {span(ratio, 2)}× | {diffs[rows]:.1e} |"
        )
    return lines


def serving_rows(path, variants: list, args, requests) -> list[str]:
    """The serving table: BatchEngine with and without the fused step, every engine open at once, rounds
    interleaved; the RSS each engine added when it opened."""
    import psutil
    from common import mix_rounds, span, warmed

    from trtpipe.runtime import BatchEngine

    process = psutil.Process()
    engines, added = {}, {}
    for variant in variants:
        for fused in (True, False):
            before = process.memory_info().rss
            engine = BatchEngine(path, variant=variant, threads=args.threads, slots=16, fused=fused)
            engines[(variant, fused)] = warmed(engine, requests, args.clients)
            added[(variant, fused)] = process.memory_info().rss - before

    def row(run: dict) -> tuple:
        stats, steps = run["stats"], max(1, run["stats"]["steps"])
        graph_ms = (stats["decode_s"] + stats["prefill_s"]) * 1e3 / steps
        return (
            run["tokens_per_s"], run["tpot_p50_ms"], run["tpot_p99_ms"], run["ttft_p50_ms"], stats["fused_steps"],
            steps, graph_ms,
        )  # fmt: skip

    got = {
        key: [row(run) for run in rounds]
        for key, rounds in mix_rounds(engines, requests, args.clients, args.serve_rounds).items()
    }
    lines = [
        f"\n**Serving**: the serve_load mix ({len(requests)} requests) at {args.clients} in flight, BatchEngine 16 "
        f"slots, chunk {CHUNK}, {args.threads} threads, {args.serve_rounds} interleaved rounds in one process "
        "(low–high over rounds). Memory: the RSS the engine added when it opened and warmed up.\n",
        "| variant | fused step | tokens/s | TPOT p50 ms | TPOT p99 ms | TTFT p50 ms | fused steps / steps "
        "| graph ms a step | memory added MiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, fused), rows in got.items():
        c = list(zip(*rows))
        lines.append(
            f"| {variant or 'fp32'} | {'yes' if fused else 'no (fused=False)'} | {span(c[0])} | {span(c[1], 1)} "
            f"| {span(c[2])} | {span(c[3])} | {span(c[4])} / {span(c[5])} | {span(c[6], 1)} "
            f"| {added[(variant, fused)] / 2**20:.0f} |"
        )
    lines.append("")
    for variant in variants:
        ratios = [a[0] / b[0] for a, b in zip(got[(variant, True)], got[(variant, False)])]
        lines.append(
            f"- {variant or 'fp32'}: fused ÷ two passes tokens/s, round by round: {span(ratios, 2)}×."
        )
    return lines


def main() -> None:
    from common import ensure_kv_fused, gpt2_with, load_line, write_section

    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 9, 16])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the step table")
    parser.add_argument("--serve-rounds", type=int, default=2, help="rounds of the serving table")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path, variants = gpt2_with(args.variants)
    ensure_kv_fused(path)
    bundle = Bundle.load(path)
    vocab = bundle.model["vocab_size"]
    rng = np.random.default_rng(0)
    lengths_all = rng.integers(100, 300, max(args.rows))
    tokens_all = rng.integers(0, vocab, max(args.rows))
    chunk = [int(t) for t in rng.integers(0, vocab, CHUNK)]
    lines = [
        f"GPT-2 124M, {args.threads} threads. **One step**: random weights and cached K/V; R decoding rows at 100–300 "
        f"cached tokens, and one {CHUNK}-token prompt chunk after {CHUNK_PAST} of its own, in slot R. Two passes: "
        "BatchEngine's decode step over the R rows, then the chunk (`prefill_row`). One pass: the fused step "
        f"(`runtime/fused.py`) on the bundle's twin. Median ms of {REPEAT} calls, {args.rounds} interleaved rounds "
        "(low–high over rounds).\n",
        "| twin | R | two passes ms | one fused pass ms | saved ms | one ÷ two | logits max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for variant in variants:
        lines += step_rows(path, variant, args, tokens_all, lengths_all, chunk)
    lines += serving_rows(path, variants, args, mix_requests(bundle, 32))
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("fused-step", body)


if __name__ == "__main__":
    main()
