"""OpenVINO's PagedAttention on trtpipe's own GPT-2 bundle: one engine call a step, the KV cache in place.

bench/weight_kernels.py found OpenVINO's int4 kernel the faster one from four rows on; bench/split_step.py found
that reaching it through 25 engine calls a step gives the gain back. This probe asks OpenVINO for the whole step. It
runs the runtime's `PagedDecoder` (trtpipe/runtime/paged.py, what `BatchEngine(backend="ov", paged=True)` runs).
From the bundle's int4 interop graph (`model.int4.onnx`) it builds, with OpenVINO's API, the model openvino-genai's
ContinuousBatchingPipeline runs: tokens of every sequence in one flat batch, the cache in blocks the caller owns and
OpenVINO writes in place, prefill and decoding in the same call.

Measured, GPT-2 124M int4 (random weights: speed only), in one process:
- one decode step at R rows (context 64) against ONNX Runtime's in-place graph on its own cache;
- a burst of 8 prompts of 32 tokens in one call;
- whether a row's logits depend on the rows beside it (decoded alone against among R);
- the logits against ONNX Runtime's;
- the same step on OpenVINO's u8 cache (`kv_cache="int8"`), at context 64 and as the context grows to 512;
- the serve_load mix through BatchEngine at 1 and 16 in flight, in place against `backend="ov", paged=True` on the
  f32 and the u8 cache.

Not part of `make bench` (a probe). Writes the `paged-step` section of
docs/benchmarks.md.

    python bench/paged_step.py          # ≈ 5 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROWS = (1, 4, 8, 16)
CONTEXT = 64


class Paged:
    """The runtime's `PagedDecoder` (what `BatchEngine(backend="ov", paged=True)` runs) on a cache of `sequences`
    slots; `run(pieces)` is one call of every piece (ids, sequence, past) and returns each one's last logits."""

    def __init__(self, bundle, variant: str, threads: int, sequences: int, capacity: int, cache: str = "f32"):
        from trtpipe.runtime.paged import PagedDecoder

        self.decoder = PagedDecoder(bundle, variant, threads, cache=cache)
        self.cache = self.decoder.new_cache(sequences, capacity)
        self.block = self.cache.block
        self.logits = np.empty((sequences, self.decoder.vocab), np.float32)

    def run(self, pieces: list[tuple[list[int], int, int]]) -> np.ndarray:
        self.decoder.prefill_rows(pieces, self.cache, self.logits)
        return self.logits[: len(pieces)].copy()


def serving(path, count: int, threads: int) -> list[str]:
    """The serve_load mix (the vLLM peer's requests) through BatchEngine int4 at 1 and 16 in flight: in place on ONNX
    Runtime (its defaults) and `backend="ov", paged=True`, two interleaved rounds, a fresh engine each (the other one
    closed, though both engines' libraries stay loaded in this one process)."""
    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop, summarize
    from trtpipe.runtime import BatchEngine, Bundle

    requests = mix_requests(Bundle.load(path), count)
    made = {
        "in place (ONNX Runtime)": lambda: BatchEngine(path, variant="int4", threads=threads, slots=16),
        "paged (OpenVINO)": lambda: BatchEngine(
            path, variant="int4", threads=threads, slots=16, backend="ov", paged=True
        ),
        "paged, u8 cache (OpenVINO)": lambda: BatchEngine(
            path, variant="int4", threads=threads, slots=16, backend="ov", paged=True, kv_cache="int8"
        ),
    }
    runs: dict = {}
    for _ in range(2):
        for name, make in made.items():
            engine = make()
            try:
                for clients in (1, 16):
                    runs.setdefault((name, clients), []).append(
                        summarize(ours_closed_loop(engine, requests, clients))
                    )
            finally:
                engine.close()
    lines = [
        "",
        f"**The serve_load mix** ({count} requests, the vLLM peer's), BatchEngine int4, 16 slots, a closed loop at 1 "
        "and 16 in flight, 2 rounds (low–high), each round a fresh engine:",
        "",
        "| engine | 1 in flight tokens/s | 16 in flight tokens/s | 16 × 1 | TPOT p50 at 16 ms | TTFT p50 at 16 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in made:
        one = [r["tokens_per_s"] for r in runs[(name, 1)]]
        many = [r["tokens_per_s"] for r in runs[(name, 16)]]
        tpot = [r["tpot_p50_ms"] for r in runs[(name, 16)]]
        ttft = [r["ttft_p50_ms"] for r in runs[(name, 16)]]
        lines.append(
            f"| {name} | {min(one):.0f}–{max(one):.0f} | {min(many):.0f}–{max(many):.0f} | "
            f"{np.median(many) / np.median(one):.2f}× | {min(tpot):.1f}–{max(tpot):.1f} | "
            f"{min(ttft):.0f}–{max(ttft):.0f} |"
        )
    return lines


def main() -> int:
    from common import ensure_bundle, ensure_kv8, ensure_variant, load_line, without_openvino, write_section

    from trtpipe.benchmark.decode import settle
    from trtpipe.runtime import Generator

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if without_openvino("paged-step", not args.no_write):
        return 0
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    ensure_kv8(path, force=True)  # the u8 cache's gate (random weights: recorded, forced)
    generator = Generator(path, variant="int4", threads=args.threads)
    runner, bundle = generator.runner, generator.bundle
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(100, 20000, CONTEXT)] for _ in range(max(ROWS) + 1)]
    capacity, token = 600, 318  # 600: the u8 table's contexts to 512

    def timed(call) -> float:
        spent = []
        for _ in range(args.rounds):
            settle()
            call()
            for _ in range(10):
                t0 = time.perf_counter()
                call()
                spent.append(time.perf_counter() - t0)
        return float(np.median(spent)) * 1e3

    # ONNX Runtime first, before OpenVINO compiles anything in this process, and again after (its threads share
    # the cores with OpenVINO's)
    caches, ort = {}, {}
    for rows in ROWS:
        cache = caches[rows] = runner.new_cache(rows, capacity)
        out = np.empty((1, runner.vocab), np.float32)
        for row in range(rows):
            runner.prefill_row(prompts[row], cache, row, 0, out)
        tokens, lengths = np.full(rows, token), np.full(rows, CONTEXT)
        ort[rows] = timed(lambda t=tokens, n=lengths, c=cache: runner.decode(t, n, c, None))
    started = time.perf_counter()
    paged = Paged(bundle, "int4", args.threads, max(ROWS) + 1, capacity)
    built = time.perf_counter() - started
    u8 = Paged(bundle, "int4", args.threads, max(ROWS) + 1, capacity, cache="u8")
    lines = [
        f"**One int4 decode step on OpenVINO's PagedAttention** (GPT-2 124M, random weights, context {CONTEXT}, "
        f"{args.threads} threads, median of {args.rounds} rounds of 10 steps after a pause), against ONNX Runtime's "
        "in-place graph on its own cache, timed before OpenVINO compiled anything in the process (and once more "
        f"after, in brackets). The paged model was built from `model.int4.onnx` and compiled in {built:.1f} s "
        f"(blocks of {paged.block} tokens, f32 cache). Alone: the largest |difference| between a row's logits "
        "decoded among R rows and decoded alone (0: a row's numbers do not depend on the rows beside it).",
        "",
        "| rows | ONNX Runtime ms (after) | paged ms | × ONNX Runtime | alone vs among R | logits vs ONNX Runtime "
        "(max / top-1) | u8 cache ms | u8 × f32 cache | u8 alone vs among R |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    # every sequence's prompt in one call (the last sequence: row 0's prompt again, to be decoded alone)
    alone_seq = max(ROWS)
    for engine in (paged, u8):
        engine.run([(p, s, 0) for s, p in enumerate(prompts)])
        engine.run([(prompts[0], alone_seq, 0)])
    ratios = {}
    for rows in ROWS:
        tokens, lengths = np.full(rows, token), np.full(rows, CONTEXT)
        pieces = [([token], s, CONTEXT) for s in range(rows)]
        want = runner.decode(tokens, lengths, caches[rows], None)[0]
        got = paged.run(pieces)
        alone = paged.run([([token], alone_seq, CONTEXT)])[0]
        drift = float(np.abs(got[0] - alone).max())
        off = float(np.abs(got - want).max())
        top1 = float((got.argmax(-1) == want.argmax(-1)).mean())
        ms = timed(lambda p=pieces: paged.run(p))  # rewrites position 64 each time, as ONNX Runtime does
        got8 = u8.run(pieces)
        drift8 = float(np.abs(got8[0] - u8.run([([token], alone_seq, CONTEXT)])[0]).max())
        ms8 = timed(lambda p=pieces: u8.run(p))
        after = timed(lambda t=tokens, n=lengths, c=caches[rows]: runner.decode(t, n, c, None))
        ratios[rows] = ort[rows] / ms
        lines.append(
            f"| {rows} | {ort[rows]:.2f} ({after:.2f}) | {ms:.2f} | {ratios[rows]:.2f}× | {drift:.1e} | "
            f"{off:.2e} / {top1:.3f} | {ms8:.2f} | {ms / ms8:.2f}× | {drift8:.1e} |"
        )
    burst = [(p[:32], s, 0) for s, p in enumerate(prompts[:8])]
    paged.run(burst)
    spent = []
    for _ in range(args.rounds):
        settle()
        t0 = time.perf_counter()
        paged.run(burst)
        spent.append(time.perf_counter() - t0)
    lines += [
        "",
        f"A burst of 8 prompts of 32 tokens in one call: {float(np.median(spent)) * 1e3:.1f} ms (median of "
        f"{args.rounds}).",
    ]
    # the u8 cache against the f32 cache as the context grows: the attention reads the cache, a quarter the bytes
    lines += [
        "",
        'The u8 cache (`kv_cache="int8"`, keys by token) against the f32 cache, one int4 decode step as the context '
        "grows (ms, median as above):",
        "",
        "| rows | context | f32 cache ms | u8 cache ms | u8 × f32 |",
        "|---|---|---|---|---|",
    ]
    long = [[int(t) for t in rng.integers(100, 20000, 512)] for _ in range(max(ROWS))]
    for context in (256, 512):
        for engine in (paged, u8):
            engine.run([(p[:context], s, 0) for s, p in enumerate(long)])
        for rows in (8, 16):
            pieces = [([token], s, context) for s in range(rows)]
            f32_ms, u8_ms = (timed(lambda e=e, p=pieces: e.run(p)) for e in (paged, u8))
            lines.append(f"| {rows} | {context} | {f32_ms:.2f} | {u8_ms:.2f} | {f32_ms / u8_ms:.2f}× |")
    lines += serving(path, args.requests, args.threads)
    lines += ["", load_line(load)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("paged-step", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
