"""The int8 KV cache (`optimize --precision kv8`, `BatchEngine(kv_cache="int8")`) against the fp32 cache on GPT-2
124M (issue 20, item 3), side by side in one process:
- one decode step at R rows over a cache filled with random values (an untouched np.zeros buffer reads the kernel's
  zero page and would flatter the fp32 cache), and where its time goes (ONNX Runtime's profiler at 16 rows);
- serving: the serve_load mix (32 requests) at 16 in flight, and 8 streams of 32-token prompts at once (the
  openvino-genai batch shape), BatchEngine with its defaults (the fused step where the bundle has it), rounds
  interleaved;
- accuracy on the trained demo GPT-2: each kv8 twin's gate (next-token agreement with fp32, and with the same
  weights on a float cache).
Makes the kv8 twins first where the bundles have none. Rewrites the `kv-cache` section of docs/benchmarks.md.

    python bench/kv_cache.py [--variants fp32 int4] [--rounds 3] [--serve-rounds 2] [--no-write]   # ≈ 5 min
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

REPEAT, CONTEXT = 7, (100, 300)


def filled(runner, rows: int, capacity: int, rng):
    """A cache of `rows` rows whose every byte was written (random K/V)."""
    cache = runner.new_cache(rows, capacity)
    for buffer in cache.buffers[0]:
        if buffer.dtype == np.int8:
            buffer[:] = rng.integers(-100, 100, buffer.size)
        else:
            buffer[:] = rng.standard_normal(buffer.size).astype(np.float32)
    return cache


def attention_ms(path, dtype, rows: int, lengths, tokens, threads: int) -> tuple[float, float]:
    """(GroupQueryAttention ms, every node ms) of one 16-row decode step under ONNX Runtime's profiler."""
    import onnxruntime as ort

    from trtpipe.runtime import kv
    from trtpipe.runtime.kv import KVCache

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "kv")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = [i for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    layers, (_, heads, _, dim) = len(inputs) // 2, inputs[0].shape
    cache = KVCache(layers, rows, heads, dim, 512, True, dtype)
    rng = np.random.default_rng(1)
    io = session.io_binding()
    for index, past, present in cache.names():
        view = cache.view(0, index, 0)
        view[...] = (
            rng.integers(-100, 100, view.shape) if dtype == np.int8 else rng.standard_normal(view.shape)
        )
        io.bind_input(past, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
        io.bind_output(present, "cpu", 0, view.dtype, list(view.shape), view.ctypes.data)
    for name, value in kv.inplace_decode(tokens, lengths).items():
        io.bind_cpu_input(name, value)
    io.bind_output("logits")
    runs = 10
    for _ in range(runs):
        session.run_with_iobinding(io)
    with open(session.end_profiling()) as handle:
        events = json.load(handle)
    total = attention = 0.0
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            total += event["dur"]
            attention += event["dur"] if event["args"]["op_name"] == "GroupQueryAttention" else 0.0
    return attention / runs / 1e3, total / runs / 1e3


def step_rows(path, variants, args) -> list[str]:
    from common import span, step_ms

    from trtpipe.runtime import Bundle, Generator

    bundle = Bundle.load(path)
    rng = np.random.default_rng(0)
    top = max(args.rows)
    lengths_all = rng.integers(*CONTEXT, top)
    tokens_all = rng.integers(0, bundle.model["vocab_size"], top)
    runners = {
        (v, c): Generator(path, variant=v, threads=args.threads, kv_cache=c).runner
        for v in variants
        for c in ("fp32", "int8")
    }
    caches = {key: filled(runner, top, 512, rng) for key, runner in runners.items()}
    timings: dict = {(key, r): [] for key in runners for r in args.rows}
    for _ in range(args.rounds):
        for rows in args.rows:
            for key, runner in runners.items():
                tokens, lengths = tokens_all[:rows], lengths_all[:rows]
                timings[(key, rows)].append(step_ms(runner, tokens, lengths, caches[key], REPEAT))
    lines = [
        f"GPT-2 124M, random weights, {args.threads} threads. **One decode step** (in place) of R rows at "
        f"{CONTEXT[0]}–{CONTEXT[1]} cached tokens, the cache filled with random values; median ms of {REPEAT} steps, "
        f"{args.rounds} interleaved rounds (low–high). At 16 rows, ONNX Runtime's profiler (10 steps): "
        "GroupQueryAttention's share.\n",
        "| weights | cache | "
        + " | ".join(f"{r} rows ms" for r in args.rows)
        + f" | int8 ÷ fp32 cache at {top} rows | attention at {top} rows ms (of all nodes) |",
        "|---|---|" + "---|" * len(args.rows) + "---|---|",
    ]
    for variant in variants:
        name = variant or "fp32"
        for cache in ("fp32", "int8"):
            key = (variant, cache)
            variant_name = Generator(path, variant=variant, kv_cache=cache).variant
            attention, total = attention_ms(
                bundle.model_path(variant_name),
                runners[key].cache_dtype,
                top,
                lengths_all,
                tokens_all,
                args.threads,
            )
            ratio = ""
            if cache == "int8":
                ratio = (
                    span([a / b for a, b in zip(timings[(key, top)], timings[((variant, "fp32"), top)])], 2)
                    + "×"
                )
            cells = " | ".join(span(timings[(key, r)], 1) for r in args.rows)
            lines.append(f"| {name} | {cache} | {cells} | {ratio} | {attention:.1f} ({total:.1f}) |")
    return lines


def serving_rows(path, variants, args, requests, prompts) -> list[str]:
    from common import mix_rounds, span, warmed

    from trtpipe.runtime import BatchEngine

    engines, cache_mib = {}, {}
    for variant in variants:
        for cache in ("fp32", "int8"):
            engine = BatchEngine(path, variant=variant, threads=args.threads, slots=16, kv_cache=cache)
            engines[(variant, cache)] = warmed(engine, requests, args.clients)
            cache_mib[(variant, cache)] = engine.cache.nbytes / 2**20

    def row(run: dict) -> tuple:
        return run["tokens_per_s"], run["tpot_p50_ms"], run["tpot_p99_ms"], run["ttft_p50_ms"]

    streams: dict = {key: [] for key in engines}
    for _ in range(args.serve_rounds):  # 8 streams of 32-token prompts at once, 64 new tokens each
        for key, engine in engines.items():
            time.sleep(0.2)
            started = time.perf_counter()
            done = engine.generate(prompts, 64, ignore_eos=True)
            streams[key].append(sum(len(c.ids) for c in done) / (time.perf_counter() - started))
    got = {
        key: [row(run) for run in rounds]
        for key, rounds in mix_rounds(engines, requests, args.clients, args.serve_rounds).items()
    }
    lines = [
        f"\n**Serving**, BatchEngine 16 slots, chunk 64, its defaults (the fused step on the bundle's twins), "
        f"{args.threads} threads, {args.serve_rounds} interleaved rounds (low–high): the serve_load mix "
        f"({len(requests)} requests) at {args.clients} in flight, and {len(prompts)} streams of "
        f"{len(prompts[0])}-token prompts at once with 64 new tokens each (the openvino-genai batch shape).\n",
        "| weights | cache | mix tokens/s | TPOT p50 ms | TPOT p99 ms | TTFT p50 ms "
        f"| {len(prompts)} streams tokens/s | cache MiB (16 slots, 1024 positions) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (variant, cache), rows in got.items():
        c = list(zip(*rows))
        lines.append(
            f"| {variant or 'fp32'} | {cache} | {span(c[0])} | {span(c[1], 1)} | {span(c[2])} | {span(c[3])} "
            f"| {span(streams[(variant, cache)])} | {cache_mib[(variant, cache)]:.0f} |"
        )
    lines.append("")
    for variant in variants:
        mix = [a[0] / b[0] for a, b in zip(got[(variant, "int8")], got[(variant, "fp32")])]
        eight = [a / b for a, b in zip(streams[(variant, "int8")], streams[(variant, "fp32")])]
        lines.append(
            f"- {variant or 'fp32'} weights: int8 ÷ fp32 cache tokens/s, round by round: mix {span(mix, 2)}×, "
            f"{len(prompts)} streams {span(eight, 2)}×."
        )
    return lines


def accuracy_rows(demo) -> list[str]:
    from trtpipe.runtime import Bundle

    variants = Bundle.load(demo).variants
    lines = [
        "\n**Accuracy** on the trained demo GPT-2 (`bundles/demo-gpt2-generate`; each twin's LM gate, next-token "
        "top-1 on held-out text, teacher-forced through the in-place loop; needs ≥ 0.97 against fp32, and against "
        "the same weights over the last 32 positions of full-length windows):\n",
        "| twin | against fp32 | against the same weights on a float cache | the same, deep in long windows "
        "| greedy tokens equal (of 32) | gate |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in variants.items():
        if entry.get("kv_cache") != "int8" or entry.get("kv") != "inplace":
            continue
        gate = entry["gate"]
        metrics = gate["metrics"]
        lines.append(
            f"| {name} | {metrics['next_token_top1']:.4f} | {gate['next_token_top1_vs_source']:.4f} "
            f"| {metrics.get('next_token_top1_long', float('nan')):.4f} "
            f"| {metrics['greedy_match_tokens_mean']:.1f} | {gate['verdict']} |"
        )
    return lines


def main() -> None:
    from common import BUNDLES, ensure_kv8, gpt2_with, load_line, write_section

    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--variants", nargs="+", default=["fp32", "int4"])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the step table")
    parser.add_argument("--serve-rounds", type=int, default=2, help="rounds of the serving tables")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the section, leave the doc alone")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    path, variants = gpt2_with(args.variants)
    ensure_kv8(path, force=True)  # random weights: the gate is recorded, not met
    bundle = Bundle.load(path)
    from openvino_peers import batch_prompts

    lines = step_rows(path, variants, args)
    lines += serving_rows(path, variants, args, mix_requests(bundle, 32), batch_prompts(bundle, 8, 32))
    demo = BUNDLES / "demo-gpt2-generate"
    if (demo / "manifest.json").is_file():
        ensure_kv8(demo, force=False)
        lines += accuracy_rows(demo)
    else:
        lines.append("\nAccuracy: not measured (no trained demo GPT-2 here: `make demo-models` trains it).")
    lines.append("\n" + load_line(load))
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("kv-cache", body)


if __name__ == "__main__":
    main()
