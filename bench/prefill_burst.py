"""A burst of prompts at an idle BatchEngine: the step's prefill budget and the batched OpenVINO pass, side by side.

A step takes at most `chunk` prompt tokens, so a prompt never stalls the decoding rows for long; with none decoding,
every prompt that one piece finishes takes it too (`runtime/chunks.py` `step_pieces`), and with the OpenVINO
prefill the step's pieces run as batched passes (`runtime/prefill.py` `prefill_rows`). Three policies, one
process, rounds interleaved, GPT-2 124M int4 (random weights: speed only), 2 threads:
- before: every step `chunk` prompt tokens in all, one pass a prompt (the engine before this change);
- short prompts at once: with none decoding, every prompt one piece finishes takes it; one pass a prompt;
- the same, the step's pieces in batched OpenVINO passes (the default with `prefill_backend="ov"`).
Two bursts: 8 real-text prompts of 32 tokens with 64 new tokens each, greedy (openvino_peers' batch of 8), and the
first 16 requests of the serve_load mix at once (their own lengths, sampling settings and seeds). ONNX Runtime alone
(its fused step) runs the first two policies too. Writes the `prefill-burst` section of docs/benchmarks.md.

    python bench/prefill_burst.py          # ≈ 4 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

warnings.filterwarnings("ignore")

POLICIES = ("before", "short prompts at once", "short prompts at once, batched passes")


class Before:
    """The budget before: `chunk` prompt tokens a step in all, decoding or not."""

    def __init__(self, engine):
        chunk, prefill = engine.chunk, engine._prefill
        engine._prefill = lambda budget=None, runner=None: prefill(
            chunk if budget is None else budget, runner
        )


def engine_for(path, policy: str, prefill_backend, threads: int, slots: int):
    from trtpipe.runtime import BatchEngine

    engine = BatchEngine(
        path, variant="int4", threads=threads, slots=slots, prefill_backend=prefill_backend,
        fused=False if prefill_backend else None,
    )  # fmt: skip
    if policy == "before":
        Before(engine)
    if policy != POLICIES[2]:
        engine.runner.prefill_batches = False
    return engine


def burst(engine, requests: list[dict]) -> dict:
    """Every request submitted at once; wall time to the last token, TTFT of each, the engine's counters."""
    from trtpipe.benchmark.vllm_peer import stats_delta
    from trtpipe.runtime import Sampling

    time.sleep(0.2)
    before = dict(engine.stats)
    started = time.perf_counter()
    submitted = [
        engine.submit(
            r["ids"], r["new_tokens"], Sampling(temperature=r["temperature"], seed=r["seed"]), ignore_eos=True
        )
        for r in requests
    ]
    engine.run()
    wall = time.perf_counter() - started
    done = [s.result() for s in submitted]
    ttft = [s.ttft_s for s in submitted]
    return {
        "wall": wall,
        "tokens": sum(len(c.ids) for c in done),
        "ttft_mean": sum(ttft) / len(ttft),
        "ttft_max": max(ttft),
        "ids": [c.ids for c in done],
        "stats": stats_delta(engine.stats, before),
    }


def bursts(bundle, path) -> dict:
    import sys

    from trtpipe.benchmark.vllm_peer import mix_requests

    sys.path.insert(0, os.path.dirname(__file__))
    from openvino_peers import batch_prompts

    eight = [
        {"ids": ids, "new_tokens": 64, "temperature": 0.0, "seed": 0} for ids in batch_prompts(bundle, 8, 32)
    ]
    return {
        "8 prompts of 32 tokens, 64 new tokens each, greedy": eight,
        "16 requests of the serve_load mix at once": mix_requests(bundle, 16),
    }


def main() -> int:
    import numpy as np
    from common import ensure_bundle, ensure_kv_fused, ensure_variant, load_line, targets_table, write_section

    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    ensure_kv_fused(path)
    bundle = Bundle.load(path)
    lines = [
        "**A burst of prompts at an idle BatchEngine** (GPT-2 124M int4, random weights: speed only, "
        f"{args.threads} threads, chunk 64, every request submitted at once, {args.rounds} interleaved rounds after "
        "a warm-up, each after a 0.2 s pause). tokens/s = new tokens ÷ the median round's wall time; TTFT from "
        "submission to each request's first token (means and maxima, medians over rounds); tokens equal: requests "
        "whose tokens are those of the first policy of the same engine.",
        "",
        "| burst | engine | policy | wall s | tokens/s | × before | TTFT mean / max ms | prefill s | decode s "
        "| steps | tokens equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    targets = []
    for name, requests in bursts(bundle, path).items():
        slots = len(requests)
        kinds = {"ONNX Runtime (fused step)": (None, POLICIES[:2]), "OpenVINO prefill": ("ov", POLICIES)}
        engines = {
            (kind, policy): engine_for(path, policy, backend, args.threads, slots)
            for kind, (backend, policies) in kinds.items()
            for policy in policies
        }
        runs: dict = {key: [] for key in engines}
        for round_index in range(args.rounds + 1):
            for key, engine in engines.items():
                run = burst(engine, requests)
                if round_index:
                    runs[key].append(run)
        for engine in engines.values():
            engine.close()
        for kind in kinds:
            keys = [k for k in runs if k[0] == kind]
            base = float(np.median([r["wall"] for r in runs[keys[0]]]))
            first_ids = runs[keys[0]][0]["ids"]
            for key in keys:
                got = runs[key]
                med = {f: float(np.median([r[f] for r in got])) for f in ("wall", "ttft_mean", "ttft_max")}
                stats = {f: float(np.median([r["stats"][f] for r in got])) for f in ("prefill_s", "decode_s")}
                steps = int(np.median([r["stats"]["steps"] for r in got]))
                equal = sum(a == b for a, b in zip(got[0]["ids"], first_ids))
                tokens = got[0]["tokens"]
                lines.append(
                    f"| {name} | {kind} | {key[1]} | {med['wall']:.2f} | {tokens / med['wall']:.1f} | "
                    f"{base / med['wall']:.2f}× | {med['ttft_mean'] * 1e3:.0f} / {med['ttft_max'] * 1e3:.0f} | "
                    f"{stats['prefill_s']:.3f} | {stats['decode_s']:.3f} | {steps} | {equal} of {len(requests)} |"
                )
            ratio = base / float(np.median([r["wall"] for r in runs[keys[-1]]]))
            # 8 short prompts: the new rule is the point (faster); the mix's long prompts keep the budget (a tie)
            short = all(len(r["ids"]) <= 64 for r in requests)
            what = "the default faster than before" if short else "the default no slower than 0.95× before"
            targets.append(
                (f"{name}, {kind}: {what}", f"{ratio:.2f}×", ratio > 1.0 if short else ratio >= 0.95)
            )
    body = "\n".join([*lines, "", *targets_table(targets, "check"), "", load_line(load)])
    print(body)
    if not args.no_write:
        write_section("prefill-burst", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
