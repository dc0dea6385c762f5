"""Pair rows (`optimize/pair_rows.py`) on GPT-2 124M int4 at block 128, openvino-genai's group size (issue 20, item
3), side by side in one process with the same int4 built without them (the graph as it was before) and with our
block 32 (the default until block_sizes.py):
- one decode step of R rows (in place, the cache filled with random values), median ms, rounds interleaved: what a
  row paired with a zero row costs;
- 8 streams of 32-token prompts at once, 64 new tokens each (the openvino-genai batch shape), BatchEngine with its
  defaults on the fp32 and the int8 KV cache: tokens/s, whether the fused step twin passed its check, and how many
  of the 8 requests got exactly the tokens they get decoded alone; the same for 16 requests of the serve_load mix
  at once.
Builds both block-128 copies in a scratch folder (hard links; ≈ 2 min). Rewrites the `pair-rows` section of
docs/benchmarks.md.

    python bench/pair_rows.py [--rounds 3] [--no-write]   # ≈ 5 min
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from unittest import mock

import numpy as np

REPEAT, CONTEXT = 7, (100, 300)
PAIRED = "block 128, paired rows"


def copies(path, scratch: str) -> dict:
    """{label: bundle}: block 128 with pairs, block 128 without (`needs_pairs` patched off, as before), block 32."""
    from openvino_peers import block128_copy

    paired = block128_copy(path, os.path.join(scratch, "paired"))
    with mock.patch("trtpipe.optimize.twins.needs_pairs", lambda model: False):
        unpaired = block128_copy(path, os.path.join(scratch, "unpaired"))
    return {
        PAIRED: paired,
        "block 128, unpaired (before)": unpaired,
        "block 32": block128_copy(path, os.path.join(scratch, "block32"), block=32),
    }


def step_rows(bundles: dict, args) -> list[str]:
    from common import span, step_ms
    from kv_cache import filled

    from trtpipe.runtime import Generator

    rng = np.random.default_rng(0)
    top = max(args.rows)
    lengths, tokens = rng.integers(*CONTEXT, top), rng.integers(0, 50257, top)
    runners = {
        label: Generator(path, variant="int4", threads=args.threads).runner for label, path in bundles.items()
    }
    caches = {label: filled(runner, top, 512, rng) for label, runner in runners.items()}
    timings: dict = {(label, r): [] for label in runners for r in args.rows}
    for _ in range(args.rounds):
        for rows in args.rows:
            for label, runner in runners.items():
                step = step_ms(runner, tokens[:rows], lengths[:rows], caches[label], REPEAT)
                timings[(label, rows)].append(step)
    lines = [
        f"GPT-2 124M int4 (random weights: speed only), {args.threads} threads. **One decode step** (in place) of R "
        f"rows at {CONTEXT[0]}–{CONTEXT[1]} cached tokens, median ms of {REPEAT} steps, {args.rounds} interleaved "
        "rounds (low–high); × unpaired: the paired step's time over the unpaired one's, round by round.\n",
        "| int4 | " + " | ".join(f"{r} rows ms" for r in args.rows) + " |",
        "|---|" + "---|" * len(args.rows),
    ]
    for label in runners:
        lines.append(f"| {label} | " + " | ".join(span(timings[(label, r)], 2) for r in args.rows) + " |")
    paired, unpaired = list(runners)[:2]
    ratios = [
        span([a / b for a, b in zip(timings[(paired, r)], timings[(unpaired, r)])], 2) + "×"
        for r in args.rows
    ]
    lines.append("| × unpaired | " + " | ".join(ratios) + " |")
    return lines


def mix_identical(path, cache: str, fused, alone, requests: list[dict], threads: int) -> int:
    """How many of the mix `requests`, all at once in 16 slots, get exactly the tokens they get alone."""
    from trtpipe.runtime import BatchEngine
    from trtpipe.runtime.sampling import Sampling

    engine = BatchEngine(path, variant="int4", threads=threads, slots=16, kv_cache=cache, fused=fused)
    settings = [Sampling(temperature=r["temperature"], seed=r["seed"]) for r in requests]
    submitted = [engine.submit(r["ids"], r["new_tokens"], s) for r, s in zip(requests, settings)]
    engine.run()
    return sum(
        alone.generate([r["ids"]], r["new_tokens"], s)[0].ids == q.result().ids
        for r, s, q in zip(requests, settings, submitted)
    )


def stream_rows(bundles: dict, args, prompts, requests) -> list[str]:
    from common import span

    from trtpipe.runtime import BatchEngine, Bundle, Generator
    from trtpipe.runtime.fused import fused_name

    engines, same, mixed = {}, {}, {}
    for (label, path), cache in itertools.product(bundles.items(), ("fp32", "int8")):
        # the paired copy also in two passes: what the fused step itself does to this shape
        for fused in (None, False) if label == PAIRED else (None,):
            engine = BatchEngine(
                path, variant="int4", threads=args.threads, slots=len(prompts), kv_cache=cache, fused=fused
            )
            batched = engine.generate(prompts, 64)  # both stop at an end-of-text token alike
            alone = Generator(path, variant="int4", threads=args.threads, kv_cache=cache)
            key = (label, cache, fused)
            same[key] = sum(alone.generate([p], 64)[0].ids == b.ids for p, b in zip(prompts, batched))
            engines[key] = engine
            mixed[key] = mix_identical(path, cache, fused, alone, requests, args.threads)
    speed: dict = {key: [] for key in engines}
    for _ in range(args.rounds):
        for key, engine in engines.items():
            time.sleep(0.2)
            started = time.perf_counter()
            done = engine.generate(prompts, 64, ignore_eos=True)
            speed[key].append(sum(len(c.ids) for c in done) / (time.perf_counter() - started))
    lines = [
        f"\n**{len(prompts)} streams at once** ({len(prompts[0])}-token prompts, 64 new tokens each, greedy), "
        f"BatchEngine {len(prompts)} slots, its defaults, {args.rounds} interleaved rounds (low–high); identical: "
        "requests whose tokens equal those it gets decoded alone (Generator, the same variant and cache); on the "
        f"mix: the first {len(requests)} serve_load mix requests at once (16 slots, chunk 64, their own temperatures "
        "and seeds).\n",
        "| int4 | KV cache | the fused step | tokens/s | identical to alone | the mix: identical to alone |",
        "|---|---|---|---|---|---|",
    ]
    for (label, cache, asked), engine in engines.items():
        has = fused_name("int4", cache)
        why = (
            "its twin failed the check"
            if has not in Bundle.load(bundles[label]).variants
            else "its twin is stale"
        )
        fused = "yes" if engine.fused is not None else f"no ({why}: two passes)"
        fused = "no (`fused=False`: two passes)" if asked is False else fused
        key = (label, cache, asked)
        lines.append(
            f"| {label} | {cache} | {fused} | {span(speed[key])} | {same[key]} of {len(prompts)} "
            f"| {mixed[key]} of {len(requests)} |"
        )
    return lines


def main() -> None:
    from common import ensure_bundle, ensure_kv8, ensure_kv_fused, ensure_variant, load_line, write_section
    from openvino_peers import batch_prompts

    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 7, 8, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    ensure_kv8(path, force=True)  # random weights: the gate is recorded, not met
    ensure_kv_fused(path)  # BatchEngine's default where a bundle has it: the fused step
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # hard links need the same file system
        bundles = copies(path, scratch)
        lines = step_rows(bundles, args)
        bundle = Bundle.load(path)
        lines += stream_rows(bundles, args, batch_prompts(bundle, 8, 32), mix_requests(bundle, 16))
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("pair-rows", body)


if __name__ == "__main__":
    main()
