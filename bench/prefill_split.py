"""Prompts on OpenVINO, decoding on ONNX Runtime in place (`prefill_backend="ov"`, trtpipe/runtime/prefill.py),
against ONNX Runtime alone, GPT-2 124M (random weights: speed only), 2 threads, one process:

1. batch 1, greedy, prompts 32 and 512, 32 new tokens, fp32 / int8-wo / int4, each with and without, interleaved
   rounds after a pause (`run_decode`): TTFT, TPOT, and whether the tokens are the same;
2. BatchEngine (16 slots, prefill chunk 64) on the serve_load mix at 1 and 16 in flight, int8-wo, int4 and int4 on
   the int8 KV cache, each with and without: a first pass (OpenVINO meets each prefill shape for the first time) and
   a second (shapes known);
3. memory: peak RSS of a fresh process that opens the generator and generates once, with and without.

Writes the `prefill-split` section of docs/benchmarks.md.

    python bench/prefill_split.py          # ≈ 10 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings

warnings.filterwarnings("ignore")

VARIANTS = ("fp32", "int8-wo", "int4")
MIX_VARIANTS = ("int8-wo", "int4")
# the mix's rows: (label, variant, KV cache); the int8 cache takes OpenVINO's K/V quantized (runtime/prefill.py)
MIX_ROWS = (("int8-wo", "int8-wo", "fp32"), ("int4", "int4", "fp32"), ("int4, int8 cache", "int4", "int8"))
NEW_TOKENS = 32


def child_rss(path: str, variant: str, prefill: str | None) -> dict:
    """Run in a fresh process: open the generator, generate once; peak RSS after each (VmHWM: it starts again at
    exec, unlike ru_maxrss, which a child inherits from the parent that forked it)."""
    from trtpipe.benchmark.memory import peak_rss_self as peak_rss
    from trtpipe.runtime import Generator

    generator = Generator(
        path, variant=None if variant == "fp32" else variant, threads=2, prefill_backend=prefill
    )
    opened = peak_rss()
    generator.generate([list(range(100, 612))], 8)
    return {"opened": opened, "ran": peak_rss()}


def rss(path, variant: str, prefill: str | None) -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import json, sys; sys.path[:0] = [{here!r}, {os.path.dirname(here)!r}]; "
        "from prefill_split import child_rss; "
        f"print(json.dumps(child_rss({str(path)!r}, {variant!r}, {prefill!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    from common import (
        ensure_bundle,
        ensure_kv8,
        ensure_variant,
        load_line,
        targets_table,
        without_openvino,
        write_section,
    )

    from trtpipe.benchmark.decode import SETTLE_S, OursDecoder, run_decode
    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop, summarize
    from trtpipe.runtime import BatchEngine, Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if without_openvino("prefill-split", not args.no_write):
        return 0

    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    for precision in MIX_VARIANTS:
        ensure_variant(path, precision)
    ensure_kv8(path, force=True)  # random weights: the gate is recorded, not met
    bundle = Bundle.load(path)

    # 1. batch 1
    rows = []
    for variant in VARIANTS:
        v = None if variant == "fp32" else variant
        rows.append(("ort", lambda v=v: OursDecoder(bundle, v, 2)))
        rows.append(("split", lambda v=v: OursDecoder(bundle, v, 2, prefill_backend="ov")))
    results = run_decode(bundle, [32, 512], NEW_TOKENS, rows, rounds=args.rounds)
    by = {(r.kind, r.variant or "fp32", r.prompt_len): r for r in results}

    # 2. the mix
    requests = mix_requests(bundle, args.requests)
    mix = {}
    for label, variant, cache in MIX_ROWS:
        engines = {
            how: BatchEngine(path, variant=variant, threads=2, slots=16, prefill_backend=pre, kv_cache=cache)
            for how, pre in (("ort", None), ("split", "ov"))
        }
        try:
            for clients in (1, 16):
                for passes in ("first", "second"):
                    for how, engine in engines.items():
                        print(f"mix {label} {how} @{clients} {passes} …", file=sys.stderr, flush=True)
                        before = dict(engine.stats)
                        run = summarize(ours_closed_loop(engine, requests, clients))
                        run["prefill_s"] = engine.stats["prefill_s"] - before["prefill_s"]
                        run["decode_s"] = engine.stats["decode_s"] - before["decode_s"]
                        mix[(label, how, clients, passes)] = run
        finally:
            for engine in engines.values():
                engine.close()
    prefill_tokens = sum(len(r["ids"]) for r in requests)

    # 3. memory
    memory = {(v, how): rss(path, v, pre) for v in VARIANTS for how, pre in (("ort", None), ("split", "ov"))}

    lines = [
        '**OpenVINO prefill, ONNX Runtime decoding** (`prefill_backend="ov"`, trtpipe/runtime/prefill.py): a '
        "prompt (or one chunk of it) runs on OpenVINO's compile of the bundle's interop ONNX, and the K/V it returns "
        "is copied into the row's slice of ONNX Runtime's in-place cache, where decoding goes on. GPT-2 124M, random "
        f"weights (speed only), 2 threads, {args.rounds} interleaved rounds after a warm-up, each row after a "
        f"{SETTLE_S} s pause, {NEW_TOKENS} new tokens, greedy; every row the same prompt ids.",
        "",
        "| variant | prompt | TTFT ms ONNX Runtime | TTFT ms OpenVINO prefill | TTFT × | TPOT ms ONNX Runtime "
        "| TPOT ms OpenVINO prefill | tokens equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        for p in (32, 512):
            a, b = by.get(("ort", variant, p)), by.get(("split", variant, p))
            if a is None or b is None or a.error or b.error:
                why = (a.error if a else None) or (b.error if b else None) or "row missing"
                lines.append(f"| {variant} | {p} | not measured ({why}) ||||||")
                continue
            same = sum(x == y for x, y in zip(a.ids, b.ids))
            first = next((i for i, (x, y) in enumerate(zip(a.ids, b.ids)) if x != y), len(a.ids))
            lines.append(
                f"| {variant} | {p} | {a.ttft['p50_ms']:.1f} | {b.ttft['p50_ms']:.1f} | "
                f"{a.ttft['p50_ms'] / b.ttft['p50_ms']:.2f}× | {a.tpot['p50_ms']:.2f} | {b.tpot['p50_ms']:.2f} | "
                f"{first} of {len(a.ids)} before the first difference ({same} equal) |"
            )
    lines += [
        "",
        f"**BatchEngine with an OpenVINO prefill**, the serve_load mix ({args.requests} requests, {prefill_tokens} "
        "prompt tokens, sampled and greedy), closed loop, 16 slots, prefill chunk 64. The first pass meets every "
        "prefill shape (chunk length, past) for the first time, which costs OpenVINO a kernel preparation each; the "
        "second pass repeats the same requests. Beside OpenVINO, BatchEngine's ONNX Runtime session stops spinning "
        "at the end of each step (`session.force_spinning_stop`), so its threads leave the cores to the prefill "
        "chunk that follows. ONNX Runtime alone runs BatchEngine's defaults, the fused step where the bundle has its "
        "twins (a prompt chunk inside a step's one pass, timed as decode, so its prefill s counts only prompts with no "
        "row decoding); the OpenVINO prefill has no fused step (two passes). The int8-cache rows run the int4 "
        "variant's kv8 twins on both sides (`kv_cache=\"int8\"`): ONNX Runtime's own int8 prefill against OpenVINO's "
        "K/V quantized with the twin's scales.",
        "",
        "| variant | in flight | pass | tokens/s ONNX Runtime | tokens/s OpenVINO prefill | × | prefill s "
        "(ONNX Runtime / OpenVINO) | decode s (ONNX Runtime / OpenVINO prefill) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, _, _ in MIX_ROWS:
        for clients in (1, 16):
            for passes in ("first", "second"):
                a, b = mix[(variant, "ort", clients, passes)], mix[(variant, "split", clients, passes)]
                lines.append(
                    f"| {variant} | {clients} | {passes} | {a['tokens_per_s']:.1f} | {b['tokens_per_s']:.1f} | "
                    f"{b['tokens_per_s'] / a['tokens_per_s']:.2f}× | {a['prefill_s']:.2f} / {b['prefill_s']:.2f} | "
                    f"{a['decode_s']:.2f} / {b['decode_s']:.2f} |"
                )
    lines += [
        "",
        "**Memory**: peak RSS of a fresh process that opens the generator, then after it generates 8 tokens of a "
        "512-token prompt (OpenVINO keeps its own compiled copy of the weights).",
        "",
        "| variant | opened MiB ONNX Runtime | opened MiB OpenVINO prefill | after a run MiB ONNX Runtime | after a run "
        "MiB OpenVINO prefill | + |",
        "|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        a, b = memory[(variant, "ort")], memory[(variant, "split")]
        lines.append(
            f"| {variant} | {a['opened'] / 2**20:.0f} | {b['opened'] / 2**20:.0f} | {a['ran'] / 2**20:.0f} | "
            f"{b['ran'] / 2**20:.0f} | {(b['ran'] - a['ran']) / 2**20:+.0f} MiB |"
        )
    targets = []
    for variant in MIX_VARIANTS:
        a, b = by.get(("ort", variant, 512)), by.get(("split", variant, 512))
        if a and b and not (a.error or b.error):
            r = a.ttft["p50_ms"] / b.ttft["p50_ms"]
            targets.append(
                (f"{variant} prompt 512: TTFT faster with the OpenVINO prefill", f"{r:.2f}×", r > 1.0)
            )
            t = a.tpot["p50_ms"] / b.tpot["p50_ms"]
            targets.append(
                (f"{variant} prompt 512: TPOT no worse than 0.95× ONNX Runtime alone", f"{t:.2f}×", t >= 0.95)
            )
    lines += ["", *targets_table(targets, head="check")]
    lines += [
        "",
        load_line(load),
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("prefill-split", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
