"""One fused pass (R decoding rows and one 64-token prompt chunk, `trtpipe/optimize/kv_fused.py`) against
BatchEngine's two passes (the decode step, then the chunk) on GPT-2 124M: the measurement behind the vLLM-CPU
section's "its step shape" line (issue 20, item 3). The fused graph is built from the bundle's in-place variant in a
temp dir; logits and K/V are checked against the two passes. Rewrites the `fused-step` section of
docs/benchmarks.md.

    python bench/fused_step.py [--variants fp32 int4] [--rows 1 4 9 16] [--rounds 3] [--no-write]   # ≈ 3 min
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNK, CHUNK_PAST, REPEAT = 64, 64, 5


def two_passes(runner, cache, tokens, lengths, chunk: list[int], last: np.ndarray) -> np.ndarray:
    """BatchEngine's step: the R rows' decode, then the chunk in slot R; the logits of both, [R + 1, V]."""
    rows = len(tokens)
    step, _ = runner.decode(tokens, lengths, cache, None)
    runner.prefill_row(chunk, cache, rows, CHUNK_PAST, last)
    return np.concatenate([step[:rows], last])


def variant_rows(path: Path, variant: str, folder: Path, args, tokens_all, lengths_all, chunk) -> list[str]:
    """The table rows of one variant: its fused graph built in `folder`, checked against the two passes at each R,
    then both timed, rounds interleaved."""
    import onnx
    import onnxruntime as ort
    from common import ensure_variant, span

    from trtpipe.optimize.kv_fused import fused_feeds, rewrite_kv_fused, run_fused
    from trtpipe.runtime import Bundle, Generator

    if variant != "fp32":
        ensure_variant(path, variant)
    bundle = Bundle.load(path)
    model = bundle.model
    inplace = "kv-inplace" if variant == "fp32" else f"{variant}.kv-inplace"
    fused_path = folder / f"{variant}.kv-fused.onnx"
    graph = rewrite_kv_fused(
        onnx.load(bundle.model_path(inplace)), model["num_layers"], model["num_heads"], model["head_dim"]
    )
    onnx.save(graph, fused_path)
    del graph
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.log_severity_level = 3
    fused = ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
    runner = Generator(path, variant=None if variant == "fp32" else variant, threads=args.threads).runner
    cache = runner.new_cache(len(tokens_all) + 1, 512)
    last = np.empty((1, runner.vocab), np.float32)
    inputs = {r: (tokens_all[:r], lengths_all[:r]) for r in args.rows}
    feeds = {r: fused_feeds(*inputs[r], chunk, CHUNK_PAST) for r in args.rows}
    calls = {
        "two": lambda r: two_passes(runner, cache, *inputs[r], chunk, last),
        "one": lambda r: run_fused(fused, cache, feeds[r], r),
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
            f"| {variant} | {rows} | {span(two_ms, 1)} | {span(one_ms, 1)} | {span(saved, 1)} "
            f"| {span(ratio, 2)}× | {diffs[rows]:.1e} |"
        )
    return lines


def main() -> None:
    from common import ensure_bundle, load_line, write_section

    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 9, 16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    vocab = Bundle.load(path).model["vocab_size"]
    rng = np.random.default_rng(0)
    lengths_all = rng.integers(100, 300, max(args.rows))
    tokens_all = rng.integers(0, vocab, max(args.rows))
    chunk = [int(t) for t in rng.integers(0, vocab, CHUNK)]
    lines = [
        f"GPT-2 124M, {args.threads} threads, random weights and cached K/V; R decoding rows at 100–300 cached tokens, "
        f"and one {CHUNK}-token prompt chunk after {CHUNK_PAST} of its own, in slot R. Two passes: BatchEngine's "
        "decode step over the R rows, then the chunk (`prefill_row`). One pass: the fused graph. Median ms of "
        f"{REPEAT} calls, {args.rounds} interleaved rounds (low–high over rounds).\n",
        "| variant | R | two passes ms | one fused pass ms | saved ms | one ÷ two | logits max diff |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            lines += variant_rows(path, variant, Path(tmp), args, tokens_all, lengths_all, chunk)
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("fused-step", body)


if __name__ == "__main__":
    main()
