"""What a fused step does with the rest of its prompt budget (issue 20, item 3): BatchEngine now puts one prompt's
chunk in the fused pass and nothing else, where it used to prefill the next prompts with what was left of the step's
`chunk` tokens, each in a pass of its own (on the fused session, beside a one-token dummy row on a scratch slot).
Both run side by side on the serve_load mix (32 requests) at 16 in flight, GPT-2 124M, rounds interleaved; the old
policy is rebuilt here (`RestInOwnPasses`). Rewrites the `fused-budget` section of docs/benchmarks.md.

    python bench/fused_budget.py [--variants fp32 int4] [--rounds 3] [--no-write]   # ≈ 2 min
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from common import ensure_kv_fused, gpt2_with, load_line, mix_rounds, span, warmed, write_section

from trtpipe.runtime import BatchEngine
from trtpipe.runtime.request import PREFILL


class DummyRow:
    """A prefill runner that runs a prompt chunk on the fused session beside a dummy row on the cache's last row."""

    def __init__(self, fused):
        self.fused = fused

    def prefill_row(self, ids, cache, row, past, logits) -> None:
        dummy = np.zeros(1, dtype=np.int64)
        logits[0] = self.fused.run(cache, dummy, dummy, ids, past, row, base=cache.batch - 1)[1]


class RestInOwnPasses(BatchEngine):
    """BatchEngine as it was before: after a fused pass, what is left of the step's budget prefills the next
    prompts, a pass each (the cache has a scratch row for their dummy rows)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cache = self.runner.new_cache(self.slots + 1, self.capacity)

    def _fused(self) -> bool:
        waiting = sorted((r for r in self.table if r and r.state == PREFILL), key=lambda r: r.id)
        before = waiting[0].prefilled if waiting else 0
        if not super()._fused():
            return False
        self._prefill(self.chunk - (waiting[0].prefilled - before), DummyRow(self.fused))
        return True


def main() -> None:
    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path, variants = gpt2_with(args.variants)
    ensure_kv_fused(path)
    requests = mix_requests(Bundle.load(path), 32)
    engines = {}
    for variant in variants:
        for label, kind in (
            ("one chunk a step (now)", BatchEngine),
            ("the rest in passes of their own", RestInOwnPasses),
        ):
            engine = kind(path, variant=variant, threads=args.threads, slots=16, fused=True)
            engines[(variant, label)] = warmed(engine, requests, args.clients)
    got = mix_rounds(engines, requests, args.clients, args.rounds)
    lines = [
        f"The serve_load mix ({len(requests)} requests) at {args.clients} in flight, GPT-2 124M, BatchEngine 16 slots, "
        f"chunk 64, the fused step, {args.threads} threads, {args.rounds} interleaved rounds (low–high).\n",
        "| weights | prompt tokens of a fused step | tokens/s | TPOT p50 ms | TPOT p99 ms | TTFT p50 ms | steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for (variant, label), rounds in got.items():
        cells = [
            span([r[k] for r in rounds], places)
            for k, places in (("tokens_per_s", 0), ("tpot_p50_ms", 1), ("tpot_p99_ms", 0), ("ttft_p50_ms", 0))
        ]
        steps = span([r["stats"]["steps"] for r in rounds])
        lines.append(f"| {variant or 'fp32'} | {label} | {' | '.join(cells)} | {steps} |")
    lines.append("")
    for variant in variants:
        now, before = (
            got[(variant, "one chunk a step (now)")],
            got[(variant, "the rest in passes of their own")],
        )
        ratio = [a["tokens_per_s"] / b["tokens_per_s"] for a, b in zip(now, before)]
        p99 = [a["tpot_p99_ms"] / b["tpot_p99_ms"] for a, b in zip(now, before)]
        lines.append(
            f"- {variant or 'fp32'}: now ÷ before, round by round: tokens/s {span(ratio, 2)}×, "
            f"TPOT p99 {span(p99, 2)}×."
        )
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("fused-budget", body)


if __name__ == "__main__":
    main()
