"""GPT-2's weight products on each CPU engine at M rows: which engine's kernel is the roof of a batched decode step.

Two GPT-2 layers' four weight matrices and the LM head (768 × 50257), in fp32 and quantised as `optimize` quantises
them at its default blocks (int4 128, int8-wo 256, int8 with s8 weights per channel), timed at M = 1 … 64 rows (64: a prefill chunk) on
ONNX Runtime's kernels and on OpenVINO's compile of the same files (the runtime's `ov` settings: f32 hint,
activations quantized per weight block; int4 once more at OpenVINO's own default group). Kernels interleave round by
round, each run after a pause. Writes the `weight-kernels` section of docs/benchmarks.md
(trtpipe/benchmark/weight_kernels.py).

    python bench/weight_kernels.py          # ≈ 3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROWS = (1, 2, 4, 8, 16, 32, 64)  # 64: a prefill chunk (BatchEngine's default chunk)


def main() -> int:
    from common import load_line, write_section

    from trtpipe.benchmark.weight_kernels import KERNELS, fastest, row_drift, runners, stack_files, time_rows

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as scratch:
        calls = runners(stack_files(Path(scratch)), args.threads)
        timings = time_rows(calls, ROWS, rounds=args.rounds)
        drift = row_drift(calls, ROWS)
    missing = [name for name in KERNELS if name not in timings]
    lines = [
        "**The weight products alone, by engine**: two GPT-2 layers' four weight matrices (768×2304, 768×768, "
        "768×3072, 3072×768) and the LM head (768×50257), one call at M rows, median ms of "
        f"{args.rounds} interleaved rounds, {args.threads} threads. OpenVINO compiles the same ONNX files as the "
        "runtime's `ov` backend does (f32 hint, activations quantized in groups of the weight block).",
        "",
        "Row drift: the largest |difference| of one row's outputs between a call of M rows (every M here) and "
        "that row alone; 0 where a row's numbers do not depend on the rows beside it.",
        "",
        "| kernel · engine | " + " | ".join(f"M={m} ms" for m in ROWS) + " | row drift |",
        "|---|" + "---|" * (len(ROWS) + 1),
    ]
    for name, per in timings.items():
        lines.append(f"| {name} | " + " | ".join(f"{per[m]:.2f}" for m in ROWS) + f" | {drift[name]:.1e} |")
    for name in missing:
        cells = " | ".join("–" for _ in ROWS)
        lines.append(
            f"| {name} | {cells} | not measured (openvino is not installed here: `pip install trtpipe[ov]`) |"
        )
    lines += [
        "",
        "| fastest at M | " + " | ".join(f"M={m}" for m in ROWS) + " |",
        "|---|" + "---|" * len(ROWS),
    ]
    for precision in ("fp32", "int8", "int8-wo", "int4"):
        cells = []
        for m in ROWS:
            rows = [n for n in timings if n.split()[0] == precision]
            if not rows:
                continue
            name, ms = fastest(timings, precision, m)
            cells.append(f"{name.split(' · ')[1]} {ms:.2f}")
        if cells:
            lines.append(f"| {precision} | " + " | ".join(cells) + " |")
    ort4 = "int4 MatMulNBits block 128 · ONNX Runtime"
    ov4 = "int4 · OpenVINO, group 128"
    if ov4 in timings:
        ratio = {m: timings[ort4][m] / timings[ov4][m] for m in ROWS}
        lines += [
            "",
            "ONNX Runtime's int4 ms ÷ OpenVINO's (group 128), by M: "
            + ", ".join(f"M={m} {ratio[m]:.2f}×" for m in ROWS)
            + " (above 1: OpenVINO's kernel is the faster one).",
        ]
    lines += ["", load_line(load)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("weight-kernels", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
