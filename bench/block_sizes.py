"""The weight-only block `optimize` starts from (issue 20): int4 at block 32 against 128 and int8-wo at 32 against
256, side by side in one process on GPT-2 124M (random weights: speed only), and on the trained demo GPT-2 what the
gate's ladder writes from the old default (32) and from the new one (accuracy).

- the file of each variant (MiB);
- one in-place decode step of R rows (the cache filled with random values; blocks of 64 and more pair rows,
  `optimize/pair_rows.py`, so one row runs as two there), median ms, rounds interleaved;
- a prompt of 32 and of 512 tokens prefilled from an empty row (the in-place graph, one pass): TTFT without
  tokenizing or sampling;
- the demo GPT-2 (256 wide): `optimize` without --force from --block-size 32 and from the default, the rung each
  wrote (block, LM head) and its next-token top-1 against fp32 on held-out text (≥ 0.97 to pass).
Builds four hard-linked copies of the GPT-2 bundle in a scratch folder (≈ 3 min). Rewrites the `block-sizes`
section of docs/benchmarks.md.

    python bench/block_sizes.py [--rounds 5] [--no-write]   # ≈ 6 min
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

REPEAT, CONTEXT, PROMPTS = 9, (30, 100), (32, 512)
OLD = 32  # optimize's block before this change, for both precisions


def copy_at(path: Path, scratch: str, precision: str, block: int | None, force: bool) -> tuple[Path, dict]:
    """`common.variant_copy` of bundle `path` with `precision` made at `block` (None: optimize's default)."""
    from common import variant_copy

    copy = Path(scratch) / f"{path.name}-{precision}-{block or 'default'}"
    return variant_copy(path, copy, precision, force=force, block_size=block)


def prefill_ms(runner, cache, ids: list[int]) -> float:
    from common import median_ms

    logits = np.empty((1, runner.vocab), np.float32)
    return median_ms(lambda: runner.prefill_row(ids, cache, 0, 0, logits), 3)


def speed_rows(path: Path, scratch: str, args) -> list[str]:
    from common import span, step_ms
    from kv_cache import filled

    from trtpipe.optimize.weight_only import DEFAULT_BLOCK
    from trtpipe.runtime import Generator

    built = {}
    for precision in ("int4", "int8-wo"):
        for block in (OLD, DEFAULT_BLOCK[precision]):
            built[(precision, block)] = copy_at(path, scratch, precision, block, force=True)
    rng = np.random.default_rng(0)
    top = max(args.rows)
    lengths, tokens = rng.integers(*CONTEXT, top), rng.integers(0, 50257, top)
    prompt = [int(t) for t in rng.integers(0, 50257, max(PROMPTS))]
    runners = {
        key: Generator(copy, variant=key[0], threads=args.threads).runner for key, (copy, _) in built.items()
    }
    caches = {key: filled(runner, top, 640, rng) for key, runner in runners.items()}
    steps = {(key, r): [] for key in runners for r in args.rows}
    prefills = {(key, n): [] for key in runners for n in PROMPTS}
    for _ in range(args.rounds):  # each shape on every copy in turn: a ratio compares neighbours in time
        for rows in args.rows:
            for key, runner in runners.items():
                steps[(key, rows)].append(step_ms(runner, tokens[:rows], lengths[:rows], caches[key], REPEAT))
        for n in PROMPTS:
            for key, runner in runners.items():
                prefills[(key, n)].append(prefill_ms(runner, caches[key], prompt[:n]))
    lines = [
        f"GPT-2 124M (random weights: speed only), {args.threads} threads, {args.rounds} interleaved rounds "
        f"(low–high). **One decode step** (in place) of R rows at {CONTEXT[0]}–{CONTEXT[1]} cached tokens, median ms "
        f"of {REPEAT}; **prefill**: a prompt of N tokens into an empty row, median ms of 3.\n",
        "| variant | block | file MiB | "
        + " | ".join(f"{r} rows ms" for r in args.rows)
        + " | "
        + " | ".join(f"prefill {n} ms" for n in PROMPTS)
        + " |",
        "|---|---|---|" + "---|" * (len(args.rows) + len(PROMPTS)),
    ]
    for key, (_, entry) in built.items():
        cells = [span(steps[(key, r)], 2) for r in args.rows] + [span(prefills[(key, n)], 1) for n in PROMPTS]
        lines.append(f"| {key[0]} | {key[1]} | {entry['bytes'] / 2**20:.0f} | " + " | ".join(cells) + " |")
    for precision in ("int4", "int8-wo"):
        new, old = (precision, DEFAULT_BLOCK[precision]), (precision, OLD)

        def ratio(a: list[float], b: list[float]) -> str:
            ratios = [x / y for x, y in zip(a, b)]
            return f"{np.median(ratios):.2f}× ({span(ratios, 2)})"

        cells = [ratio(steps[(new, r)], steps[(old, r)]) for r in args.rows]
        cells += [ratio(prefills[(new, n)], prefills[(old, n)]) for n in PROMPTS]
        lines.append(
            f"| {precision}: block {new[1]} ÷ block {OLD}, median of rounds (low–high) | | | "
            + " | ".join(cells)
            + " |"
        )
    return lines


def gate_rows(scratch: str) -> list[str]:
    from common import ensure_bundle

    from trtpipe.runtime import CheckFailed

    demo = ensure_bundle("demo-gpt2", "generate")
    lines = [
        "\n**The trained demo GPT-2** (256 wide, 4 layers): `optimize` without --force, from --block-size 32 (the "
        "old default) and from the default (at most the narrowest weight, 256 here); the rung its ladder wrote and "
        "its gate (next-token top-1 against fp32 on held-out text, ≥ 0.97).\n",
        "| variant | started from | rungs tried | written | top-1 | gate |",
        "|---|---|---|---|---|---|",
    ]
    for precision in ("int4", "int8-wo"):
        for block in (OLD, None):
            start = "block 32" if block else "the default"
            try:
                _, entry = copy_at(demo, scratch, precision, block, force=False)
            except CheckFailed as exc:
                lines.append(f"| {precision} | {start} | | refused | | {str(exc)[:120]} |")
                continue
            report = entry["report"]
            tried = len(report["plans_tried"])
            head = "int" if report["lm_head"] else "fp32"
            top1 = entry["gate"]["metrics"]["next_token_top1"]
            lines.append(
                f"| {precision} | {start} | {tried} | block {report['block_size']}, LM head {head} | {top1:.4f} "
                f"| {entry['gate']['verdict']} |"
            )
    return lines


def main() -> None:
    from common import ensure_bundle, load_line, write_section

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    with tempfile.TemporaryDirectory(dir=path.parent) as scratch:  # hard links need the same file system
        lines = speed_rows(path, scratch, args)
        lines += gate_rows(scratch)
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("block-sizes", body)


if __name__ == "__main__":
    main()
