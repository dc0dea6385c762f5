"""Where BatchEngine's decode time goes on OpenVINO (issue 20, item 3): the serve_load mix at 16 in flight, int4,
on both backends; for `backend="ov"`, each decode call's shape (rows × shared width) and how much of the time is
first calls at a new shape. Prints; the numbers are quoted in docs/benchmarks.md (in-flight batching by precision).

    python bench/ov_batch_shapes.py          # ≈ 1 min on 2 cores, after bench/batch_scaling.py built int4
"""

from __future__ import annotations

import collections
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def main() -> int:
    from common import ensure_bundle, ensure_variant

    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop, summarize
    from trtpipe.runtime import BatchEngine, Bundle

    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    requests = mix_requests(Bundle.load(path), 32)
    for backend in ("ort-cpu", "ov"):
        engine = BatchEngine(path, variant="int4", threads=2, slots=16, backend=backend)
        calls: list[tuple[tuple[int, int], float]] = []
        if backend == "ov":
            run = engine.runner._run

            def timed(feeds, keep, run=run, calls=calls):
                started = time.perf_counter()
                out = run(feeds, keep)
                past = feeds.get("past_key_values.0.key")
                if feeds["input_ids"].shape[1] == 1 and past is not None and past.shape[0] > 0:
                    calls.append(((past.shape[0], past.shape[2]), time.perf_counter() - started))
                return out

            engine.runner._run = timed
        ours_closed_loop(engine, requests[:2], 16)  # warm
        calls.clear()
        engine.stats.update({k: 0 for k in engine.stats})
        result = summarize(ours_closed_loop(engine, requests, 16))
        stats = engine.stats
        print(
            f"{backend}: {result['tokens_per_s']:.0f} tokens/s; prefill {stats['prefill_s']:.1f} s "
            f"({stats['prefill_tokens']} tokens), decode {stats['decode_s']:.1f} s ({stats['steps']} steps, "
            f"{stats['decode_rows'] / max(stats['steps'], 1):.1f} rows a step)"
        )
        if calls:
            by_shape = collections.defaultdict(list)
            for shape, seconds in calls:
                by_shape[shape].append(seconds)
            first = sum(v[0] for v in by_shape.values())
            rest = sum(sum(v[1:]) for v in by_shape.values())
            print(f"  {len(by_shape)} shapes (rows, width): first calls {first:.1f} s, repeats {rest:.1f} s")
            print("  " + ", ".join(f"{s}×{len(v)}" for s, v in sorted(by_shape.items())))
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
