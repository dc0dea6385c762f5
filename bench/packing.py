"""BatchEngine with its running rows packed into slots [0, R) against the engine as it was before (issue 20, item 3):
one decode step over slots [0, highest running slot], idle and prefilling slots riding along. The serve_load mix
(the vLLM peer's 32 requests) at 16 in flight, fp32 and int4, rounds interleaved in one process; both without the
fused step (its passes pack the rows themselves). Rewrites the `packing` section of docs/benchmarks.md.

    python bench/packing.py [--variants fp32 int4] [--rounds 2] [--no-write]   # ≈ 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def unpacked_engine():
    """BatchEngine's scheduling before `packing.py`: admit into the lowest free slot, decode every slot up to the
    highest running one (a slot that does not run rides along with a placeholder token, whose K/V the in-place graph
    writes where that row's next real write goes: ort-cpu only, as this script runs it)."""
    from trtpipe.runtime import BatchEngine
    from trtpipe.runtime.packing import cached
    from trtpipe.runtime.request import PREFILL, RUNNING

    class Unpacked(BatchEngine):
        def _admit(self) -> None:
            with self.lock:
                for slot in range(self.slots):
                    if self.waiting and self.table[slot] is None:
                        request = self.waiting.popleft()
                        request.slot, request.state = slot, PREFILL
                        self.table[slot] = request

        def _decode(self) -> None:
            running = [r for r in self.table if r is not None and r.state == RUNNING]
            if not running:
                return
            started = time.perf_counter()
            rows = self.table[: max(r.slot for r in running) + 1]
            tokens = np.array([r.pending if r in running else 0 for r in rows], dtype=np.int64)
            lengths = np.array([cached(r) for r in rows], dtype=np.int64)
            logits, _ = self.runner.decode(tokens, lengths, self.cache, None)
            self.stats["decode_rows"] += len(running)
            self.stats["computed_rows"] = self.stats.get("computed_rows", 0) + len(rows)
            self.stats["decode_s"] += time.perf_counter() - started
            for request in running:
                self._emit(request, logits[request.slot])

    return Unpacked


def main() -> None:
    from common import ensure_bundle, ensure_variant, load_line, mix_rounds, span, warmed, write_section

    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import BatchEngine, Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    for variant in args.variants:
        if variant != "fp32":
            ensure_variant(path, variant)
    requests = mix_requests(Bundle.load(path), 32)
    kinds = {"packed (now)": BatchEngine, "unpacked (before)": unpacked_engine()}
    engines = {
        (variant, kind): warmed(
            cls(
                path,
                variant=None if variant == "fp32" else variant,
                threads=args.threads,
                slots=16,
                fused=False,
            ),
            requests,
            args.clients,
        )
        for variant in args.variants
        for kind, cls in kinds.items()
    }
    rows: dict = {key: [] for key in engines}
    for key, rounds in mix_rounds(engines, requests, args.clients, args.rounds).items():
        for got in rounds:
            delta = got["stats"]
            decodes = max(1, delta["steps"])
            computed = delta.get("computed_rows", delta["decode_rows"])
            rows[key].append(
                (
                    got["tokens_per_s"],
                    computed / decodes,
                    delta["decode_rows"] / decodes,
                    delta["decode_s"] * 1e3 / decodes,
                    got["tpot_p50_ms"],
                    got["tpot_p99_ms"],
                    delta["moves"],
                )
            )

    lines = [
        f"The serve_load mix ({len(requests)} requests) at {args.clients} in flight, BatchEngine 16 slots, chunk 64, "
        f"{args.threads} threads, {args.rounds} interleaved rounds in one process (low–high over rounds). Rows a step: "
        "rows the decode step computed, and how many of them were running.\n",
        "| variant | engine | tokens/s | rows computed a step | running a step | decode ms a step | TPOT p50 ms "
        "| TPOT p99 ms | rows moved |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (variant, kind), got in rows.items():
        c = list(zip(*got))
        lines.append(
            f"| {variant} | {kind} | {span(c[0])} | {span(c[1], 1)} | {span(c[2], 1)} | {span(c[3], 1)} "
            f"| {span(c[4], 1)} | {span(c[5])} | {span(c[6])} |"
        )
    lines.append("")
    for variant in args.variants:
        new, old = rows[(variant, "packed (now)")], rows[(variant, "unpacked (before)")]
        ratios = [a[0] / b[0] for a, b in zip(new, old)]
        lines.append(f"- {variant}: packed ÷ unpacked tokens/s, round by round: {span(ratios, 2)}×.")
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("packing", body)


if __name__ == "__main__":
    main()
