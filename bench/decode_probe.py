"""Is a slow decode step ours or the machine's? Runs our GPT-2 decode loop round after round and prints, for every
step slower than 1.5× its round's median, what else happened during it: involuntary context switches of the main
thread and of the whole process (another task took a core: ONNX Runtime's parallel loops wait for the preempted
thread), minor page faults (memory touched for the first time), and Python GC collections. A stall of ours recurs
at the same step in every round, or comes with faults or collections; the machine's comes with context switches,
anywhere. Not part of `make bench`; writes nothing.

    python bench/decode_probe.py --prompt 32 --rounds 5 [--peers]     # --peers: torch + genai rows in between
"""

from __future__ import annotations

import argparse
import gc
import resource
import time

import numpy as np
from common import ensure_bundle


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompt", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=129)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--peers", action="store_true", help="run PyTorch and genai rows between ours, as bench does"
    )
    args = parser.parse_args()

    from trtpipe.benchmark.decode import make_rows, prompt_ids
    from trtpipe.runtime import Bundle, Generator

    bundle = Bundle.load(ensure_bundle("gpt2", "generate"))
    peers = (
        [factory() for _, factory in make_rows(bundle, [], ["torch", "genai"], args.threads)]
        if args.peers
        else []
    )
    generator = Generator(bundle, threads=args.threads)
    prompt = prompt_ids(bundle, args.prompt)
    collections: list[float] = []
    gc.callbacks.append(
        lambda phase, info: collections.append(time.perf_counter()) if phase == "start" else None
    )
    print(
        f"tracked objects {len(gc.get_objects())}; step, × round median, main-thread / process involuntary "
        "context switches, minor faults, GC collections"
    )
    slow_steps: list[set[int]] = []
    for round_index in range(args.rounds + 1):  # round 0 warms up
        for peer in peers:
            peer.run(prompt, args.new_tokens)
        marks = []
        collections.clear()
        for _ in generator.stream([prompt], args.new_tokens, ignore_eos=True):
            thread, process = (
                resource.getrusage(resource.RUSAGE_THREAD),
                resource.getrusage(resource.RUSAGE_SELF),
            )
            marks.append((time.perf_counter(), thread.ru_nivcsw, process.ru_nivcsw, process.ru_minflt))
        if round_index == 0:
            continue
        values = np.array(marks)
        ms = np.diff(values[:, 0]) * 1e3
        counts = np.diff(values[:, 1:], axis=0).astype(int)
        stamps = values[1:, 0]
        median = float(np.median(ms))
        slow = [int(i) for i in np.flatnonzero(ms > 1.5 * median)]
        slow_steps.append(set(slow))
        typical = counts[ms <= 1.2 * median].mean(axis=0)
        print(
            f"round {round_index}: p50 {median:.2f} ms, p99/p50 {np.percentile(ms, 99) / median:.2f}, "
            f"{len(collections)} GC collections; typical step: {typical[0]:.2f} / {typical[1]:.2f} switches, "
            f"{typical[2]:.2f} faults"
        )
        for i in slow:
            in_step = sum(1 for t in collections if stamps[i] - ms[i] / 1e3 <= t <= stamps[i])
            print(
                f"  step {i:3d}: {ms[i] / median:.1f}×  switches {counts[i, 0]} / {counts[i, 1]}  "
                f"faults {counts[i, 2]}  GC {in_step}"
            )
    recurring = set.intersection(*slow_steps) if slow_steps else set()
    print(f"slow in every round: {sorted(recurring) or 'no step'}")


if __name__ == "__main__":
    main()
