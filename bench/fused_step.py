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


def main() -> None:
    import onnx
    import onnxruntime as ort
    from common import ensure_bundle, ensure_variant, load_line, span, write_section

    from trtpipe.optimize.kv_fused import fused_feeds, rewrite_kv_fused, run_fused
    from trtpipe.runtime import Bundle, Generator

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
    bundle = Bundle.load(path)
    model = bundle.model
    rng = np.random.default_rng(0)
    slots = max(args.rows) + 1
    lengths_all = rng.integers(100, 300, slots - 1)
    tokens_all = rng.integers(0, model["vocab_size"], slots - 1)
    chunk = [int(t) for t in rng.integers(0, model["vocab_size"], CHUNK)]
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
            if variant != "fp32":
                ensure_variant(path, variant)
            inplace = "kv-inplace" if variant == "fp32" else f"{variant}.kv-inplace"
            fused_path = Path(tmp) / f"{variant}.kv-fused.onnx"
            graph = rewrite_kv_fused(
                onnx.load(bundle.model_path(inplace)),
                model["num_layers"],
                model["num_heads"],
                model["head_dim"],
            )
            onnx.save(graph, fused_path)
            del graph
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.log_severity_level = 3
            fused = ort.InferenceSession(str(fused_path), options, providers=["CPUExecutionProvider"])
            runner = Generator(
                path, variant=None if variant == "fp32" else variant, threads=args.threads
            ).runner
            cache = runner.new_cache(slots, 512)
            last = np.empty((1, runner.vocab), np.float32)
            timings: dict = {}
            for rows in args.rows:
                tokens, lengths = tokens_all[:rows], lengths_all[:rows]
                feeds = fused_feeds(tokens, lengths, chunk, CHUNK_PAST)

                runner.decode(tokens, lengths, cache, None)  # both write the same K/V at the same places
                step, _ = runner.decode(tokens, lengths, cache, None)
                runner.prefill_row(chunk, cache, rows, CHUNK_PAST, last)
                two = np.concatenate([step[:rows], last])
                diff = float(np.abs(two - run_fused(fused, cache, feeds, rows)).max())
                timings[rows] = (diff, [], [])
            for _ in range(args.rounds):
                for rows in args.rows:
                    tokens, lengths = tokens_all[:rows], lengths_all[:rows]
                    feeds = fused_feeds(tokens, lengths, chunk, CHUNK_PAST)
                    for index in (1, 2):
                        spent = []
                        for _ in range(REPEAT):
                            started = time.perf_counter()
                            if index == 1:
                                runner.decode(tokens, lengths, cache, None)
                                runner.prefill_row(chunk, cache, rows, CHUNK_PAST, last)
                            else:
                                run_fused(fused, cache, feeds, rows)
                            spent.append(time.perf_counter() - started)
                        timings[rows][index].append(float(np.median(spent)) * 1e3)
            for rows, (diff, two_ms, one_ms) in timings.items():
                saved = [a - b for a, b in zip(two_ms, one_ms)]
                ratio = [b / a for a, b in zip(two_ms, one_ms)]
                lines.append(
                    f"| {variant} | {rows} | {span(two_ms, 1)} | {span(one_ms, 1)} | {span(saved, 1)} "
                    f"| {span(ratio, 2)}× | {diff:.1e} |"
                )
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("fused-step", body)


if __name__ == "__main__":
    main()
