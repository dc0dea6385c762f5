"""What bounds serving under load on this machine: the in-process profile behind `bench/serve_load.py`'s targets.

No Triton here, no client on the same cores: the runtime alone, so the ceiling it shows is the model's and the
machine's, not the server's.

1. GPT-2 decode: one batched in-place step at 1, 2, 4, 8, 16 rows (context 160), with the tokens/s it gives and the
   GFLOP/s and weight GB/s it reaches; and one prefill chunk of 64 tokens (the compute roof).
2. The serve_load generation mix (prompts 8-256 tokens, 16-128 new) run by `BatchEngine` closed loop at concurrency
   1 and 8: tokens/s, where the step time goes (prefill / decode / sampling and bookkeeping), and the ceiling the
   mix allows: the machine's FLOP/s spent on its prompt and decode tokens, over tokens/s at concurrency 1.
3. Encoders (2 intra-op threads, as a Triton instance runs them here): the serve_load texts one at a time, in arrival
   batches of 8 padded to their longest, and in the same batches grouped by length (what `execute` does).

Writes the `serve-profile` section of docs/benchmarks.md.

    python bench/serve_profile.py      # ≈ 5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

import numpy as np
from common import REPORTS, ensure_bundle, write_section


def best(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up."""
    from trtpipe.benchmark.stats import timed_calls

    return float(np.median(timed_calls(fn, repeat)))


def flops_per_token(m: dict, context: int) -> float:
    """Forward FLOPs of one token (a GPT-2 bundle's manifest `model` summary `m`): 2 × (transformer weights + the
    tied LM head) + attention over `context`."""
    hidden, layers = m["hidden_size"], m["num_layers"]
    # qkv 3, proj 1, mlp 8 (× hidden²) + head
    matmul = layers * 12 * hidden * hidden + m["vocab_size"] * hidden
    return 2.0 * matmul + layers * 4.0 * hidden * context


def decoder_profile(path, threads: int, repeat: int) -> dict:
    from trtpipe.benchmark.batch_scaling import step_profile
    from trtpipe.runtime import BatchEngine

    engine = BatchEngine(path, slots=16, chunk=64, threads=threads)
    config = engine.bundle.model
    weights = (engine.bundle.path / "model.kv-inplace.onnx").stat().st_size  # fp32 weights ≈ the ONNX file
    context = 160
    profile = step_profile(
        engine, (1, 2, 4, 8, 16), context=context, chunk=64, repeat=repeat, reduce=np.median
    )
    rows = []
    for count, ms in profile["decode_ms"].items():
        seconds = ms / 1000
        rows.append(
            {
                "rows": count,
                "ms": ms,
                "tokens_per_s": count / seconds,
                "gflops": count * flops_per_token(config, context) / seconds / 1e9,
                "weight_gbs": weights / seconds / 1e9,
            }
        )
    seconds = profile["prefill_ms"] / 1000
    prefill = {"tokens": 64, "ms": seconds * 1000, "gflops": 64 * flops_per_token(config, 32) / seconds / 1e9}
    engine.close()
    return {
        "decode": rows,
        "prefill": prefill,
        "weights_mb": weights / 1e6,
        "flops_per_token": flops_per_token(config, context),
        "prefill_flops_per_token": flops_per_token(config, 32),
    }


def machine_roofs(threads: int) -> dict:
    """The machine's roofs (not ONNX Runtime's): the fastest fp32 GEMM of any engine here or the nominal peak,
    whichever is higher, and DRAM read bandwidth."""
    from trtpipe.benchmark.floors import dram_read_bandwidth, measure_roof

    roof = measure_roof("fp32", threads)
    return {"fp32_flops": roof.value, "fp32": roof.describe(), "bandwidth": dram_read_bandwidth(threads)}


def mix_profile(path, threads: int, clients: int, count: int) -> dict:
    """The serve_load mix, closed loop at `clients` in one process; per-step time split."""
    from trtpipe.benchmark.serve import generation_requests
    from trtpipe.runtime import BatchEngine, Bundle, Sampling

    engine = BatchEngine(path, slots=16, chunk=64, threads=threads)
    work = generation_requests(Bundle.load(path), count=64)[:count]
    todo, live, tokens = list(work), [], 0
    before = dict(engine.stats)
    started = time.perf_counter()
    steps, decodes = 0.0, 0
    while todo or live:
        while todo and len(live) < clients:
            r = todo.pop(0)
            sampling = Sampling(temperature=r.temperature, seed=r.seed)
            live.append(engine.submit(r.prompt, r.max_new_tokens, sampling))
        tick, rows = time.perf_counter(), engine.stats["decode_rows"]
        engine.step()
        steps += time.perf_counter() - tick
        decodes += engine.stats["decode_rows"] > rows
        for request in [r for r in live if r.done.is_set()]:
            tokens += len(request.tokens)
            live.remove(request)
    wall = time.perf_counter() - started
    s = {
        k: engine.stats[k] - before.get(k, 0)
        for k in ("prefill_s", "decode_s", "decode_rows", "prefill_tokens")
    }
    engine.close()
    return {
        "clients": clients,
        "requests": len(work),
        "tokens": tokens,
        "tokens_per_s": tokens / wall,
        "prefill_share": s["prefill_s"] / steps,
        "decode_share": s["decode_s"] / steps,
        "other_share": 1 - (s["prefill_s"] + s["decode_s"]) / steps,
        "prompt_tokens": s["prefill_tokens"],
        "rows_per_decode": s["decode_rows"] / max(1, decodes),
    }


def encoder_profile(path, threads: int, count: int, repeat: int) -> dict:
    from trtpipe.benchmark.serve import encoder_texts
    from trtpipe.runtime import Bundle, load_pipeline
    from trtpipe.runtime.text import length_buckets

    bundle = Bundle.load(path)
    pipeline = load_pipeline(bundle, threads=threads)
    texts = encoder_texts(bundle, count=count)
    encodings = pipeline.encoder.encode(texts)
    arrivals = [list(range(i, min(i + 8, len(texts)))) for i in range(0, len(texts), 8)]

    def run(groups):
        for group in groups:
            pipeline.session.run(pipeline.encoder.collate([encodings[i] for i in group]).feeds)

    lengths = [len(e.ids) for e in encodings]
    grouped = [
        [batch[i] for i in sub]
        for batch in arrivals
        for sub in length_buckets([lengths[j] for j in batch], 8)
    ]
    real = sum(lengths)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in arrivals)
    padded_grouped = sum(len(g) * max(lengths[i] for i in g) for g in grouped)
    result = {"texts": len(texts), "tokens_mean": real / len(texts)}
    for name, groups, tokens in (
        ("one at a time", [[i] for i in range(len(texts))], real),
        ("arrival batches of 8, padded", arrivals, padded),
        ("arrival batches of 8, grouped by length", grouped, padded_grouped),
    ):
        seconds = best(lambda groups=groups: run(groups), repeat)
        result[name] = {
            "texts_per_s": len(texts) / seconds,
            "padding": tokens / real - 1,
            "runs": len(groups),
        }
    pipeline.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--requests", type=int, default=24, help="generation requests per concurrency")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    gpt2 = ensure_bundle("gpt2", "generate")
    print("# decode steps and a prefill chunk", flush=True)
    dec = decoder_profile(gpt2, threads=2, repeat=args.repeat)
    dec["roofs"] = machine_roofs(2)
    print("# the serve_load mix at concurrency 1 and 8", flush=True)
    mix = [mix_profile(gpt2, 2, c, args.requests) for c in (1, 8)]
    print("# encoders", flush=True)
    from trtpipe.runtime import UserError

    enc = {}
    for name, preset, task in (
        ("minilm-embed", "minilm", "embed"),
        ("demo-bert-classify", "demo-bert-classify", "classify"),
    ):
        try:
            enc[name] = encoder_profile(ensure_bundle(preset, task), 2, 128, args.repeat)
        except UserError as exc:  # a demo model not trained on this machine: said, not faked
            print(f"{name}: not measured ({exc})", flush=True)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "serve-profile.json").write_text(
        json.dumps({"decoder": dec, "mix": mix, "encoders": enc}, indent=2)
    )
    body = render(dec, mix, enc)
    print(body)
    if not args.no_write:
        write_section("serve-profile", body)
    return 0


def render(dec: dict, mix: list[dict], enc: dict) -> str:
    roof = dec["prefill"]["gflops"]
    lines = [
        "**GPT-2 124M fp32, one batched decode step (context 160) and one 64-token prefill chunk, 2 threads**",
        "",
        "| rows | step ms | tokens/s | GFLOP/s | weights read GB/s |",
        "|---|---|---|---|---|",
    ]
    for r in dec["decode"]:
        lines.append(
            f"| {r['rows']} | {r['ms']:.1f} | {r['tokens_per_s']:.0f} | {r['gflops']:.0f} | {r['weight_gbs']:.1f} |"
        )
    lines.append(
        f"| prefill chunk of 64 | {dec['prefill']['ms']:.1f} | {64 / dec['prefill']['ms'] * 1000:.0f} prompt tokens/s "
        f"| {roof:.0f} | — |"
    )
    one = mix[0]
    prompt = one["prompt_tokens"] / one["requests"]
    new = one["tokens"] / one["requests"]
    prefill_rate = 64 / dec["prefill"]["ms"] * 1000
    step = {r["rows"]: r["ms"] / 1000 for r in dec["decode"]}

    def ceiling(rows: int) -> float:
        """Tokens/s if every decode step ran `rows` rows and prompts prefilled at the 64-token chunk's rate: a
        request costs the machine prompt / prefill_rate + new × step(rows) / rows seconds."""
        return new / (prompt / prefill_rate + new * step[rows] / rows)

    roofs = dec["roofs"]
    # a roof is the fastest any engine reaches here, ours included: our prefill or our decode's weight reads can
    # pass a 2048³ GEMM or a numpy sum
    ours_flops = dec["prefill"]["gflops"] * 1e9
    ours_bw = max(r["weight_gbs"] for r in dec["decode"]) * 1e9
    flops_roof = max(roofs["fp32_flops"], ours_flops)
    bw_roof = max(roofs["bandwidth"], ours_bw)
    flops_by = "our own prefill" if ours_flops > roofs["fp32_flops"] else roofs["fp32"]
    bw_by = "our own 1-row decode step" if ours_bw > roofs["bandwidth"] else "a 2-thread numpy sum"

    def physical(rows: int) -> float:
        """The same request at the machine's roofs: prompt FLOPs at the compute roof, and each decode step of
        `rows` rows bounded by reading the weights once (bandwidth) or by its FLOPs, whichever is longer."""
        prefill_s = prompt * dec["prefill_flops_per_token"] / flops_roof
        step_s = max(dec["weights_mb"] * 1e6 / bw_roof, rows * dec["flops_per_token"] / flops_roof)
        return new / (prefill_s + new * step_s / rows)

    lines += [
        "",
        f"**The serve_load generation mix in one process** ({one['requests']} requests per concurrency, on average "
        f"{prompt:.0f} prompt + {new:.0f} new tokens; BatchEngine, 16 slots, chunk 64, closed loop)",
        "",
        "| concurrency | tokens/s | × concurrency 1 | rows per decode step | step time: prefill / decode / rest | "
        "ceiling (full steps, prefill at its rate) | physical ceiling (the machine's roofs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in mix:
        c = m["clients"]
        lines.append(
            f"| {c} | {m['tokens_per_s']:.1f} | {m['tokens_per_s'] / one['tokens_per_s']:.2f}× | "
            f"{m['rows_per_decode']:.1f} | {m['prefill_share']:.0%} / {m['decode_share']:.0%} / "
            f"{m['other_share']:.0%} | {ceiling(c):.0f} tokens/s = {ceiling(c) / one['tokens_per_s']:.1f}× | "
            f"{physical(c):.0f} tokens/s |"
        )
    lines += [
        "",
        f"Roofs measured in the same run: compute {flops_roof / 1e9:.0f} GFLOP/s, set by {flops_by} (the GEMMs: "
        f"{roofs['fp32']}); weight reads {bw_roof / 1e9:.1f} GB/s, set by {bw_by} (the sum: "
        f"{roofs['bandwidth'] / 1e9:.1f} GB/s). "
        f"The ceiling column is ONNX Runtime's (our own prefill at {roof:.0f} GFLOP/s, our own decode steps); the "
        f"physical ceiling is the machine's, and at 16 rows it is {physical(16):.0f} tokens/s = "
        f"{physical(16) / ceiling(16):.1f}× ours: what a faster engine could reach on these cores, not a bound on "
        "trtpipe. ",
        "",
        f"Ceiling at 16 rows: {ceiling(16):.0f} tokens/s = {ceiling(16) / one['tokens_per_s']:.1f}× concurrency 1. "
        f"A request's {prompt:.0f}-token prompt costs {prompt / prefill_rate * 1000:.0f} ms at our prefill rate "
        f"({roof:.0f} GFLOP/s, {roof * 1e9 / flops_roof:.0%} of the compute roof) whatever the scheduler "
        f"does, and a decode step of 8 rows takes {step[8] / step[1]:.2f}× the time of 1 row (small-M GEMMs reach "
        f"{dec['decode'][3]['gflops']:.0f} GFLOP/s and {dec['decode'][3]['weight_gbs']:.0f} GB/s: "
        f"{dec['decode'][3]['gflops'] * 1e9 / flops_roof:.0%} of the compute roof and "
        f"{dec['decode'][3]['weight_gbs'] * 1e9 / bw_roof:.0%} of the bandwidth roof).",
        "",
        f"TPOT floor at concurrency 8: every step decodes 8 rows ({step[8] * 1000:.1f} ms) and prefills the prompt "
        f"tokens those 8 requests bring per generated token ({8 * prompt / new:.1f} tokens, "
        f"{8 * prompt / new / prefill_rate * 1000:.1f} ms), so a request sees at least "
        f"{(step[8] + 8 * prompt / new / prefill_rate) * 1000:.1f} ms per token = "
        f"{(step[8] + 8 * prompt / new / prefill_rate) / step[1]:.1f}× a lone request's "
        f"{step[1] * 1000:.1f} ms step, however the prefill is chunked.",
        "",
    ]
    for name, e in enc.items():
        base = e["one at a time"]["texts_per_s"]
        lines += [
            f"**{name}, 2 threads, {e['texts']} serve_load texts (mean {e['tokens_mean']:.0f} tokens)**",
            "",
            "| how | texts/s | × one at a time | padding |",
            "|---|---|---|---|",
        ]
        for how in (
            "one at a time",
            "arrival batches of 8, padded",
            "arrival batches of 8, grouped by length",
        ):
            r = e[how]
            lines.append(
                f"| {how} | {r['texts_per_s']:.1f} | {r['texts_per_s'] / base:.2f}× | {r['padding']:.0%} |"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main())
