"""In-flight batching by precision (issue 20, item 3): where a batched GPT-2 decode step's time goes and which
variant gains from batching on this CPU.

1. The weight kernels alone: one GPT-2 layer's four weight matrices (stacked twice), then GPT-2's LM head, at
   M = 1 … 64 rows, for every kernel a variant uses (fp32 MatMul, MatMulInteger of dynamic int8 with per-row
   activations, MatMulNBits of int8-wo and int4).
2. One in-place BatchEngine decode step at 1 … 16 rows (context 160) and one 64-token prefill chunk, per variant,
   with the step at 16 rows split by op (ONNX Runtime's profiler): weight MatMuls, attention, the rest.
3. The serve_load mix (the vLLM peer's requests) in a closed loop at 1, 8 and 16 in flight, per variant.
4. Parts 2 and 3 again with BatchEngine on OpenVINO (`backend="ov"`, the interop graph), where it is installed.

GPT-2 124M has random weights here (speed only): its int8 variant is written with every weight per channel
(`--plan-from per-channel`), the plan the trained demo GPT-2's gate is measured at and reported beside it.
Writes the `batch-scaling` section of docs/benchmarks.md.

    python bench/batch_scaling.py          # ≈ 20 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore")

VARIANTS = ("fp32", "int8", "int8-wo", "int4")
HEAD = 50257  # GPT-2's LM head: 768 × 50257, the largest weight matrix


def ensure_int8_per_channel(path) -> None:
    """The int8 variant with every weight per channel (rebuilt if a search wrote another plan)."""
    from trtpipe.optimize.variants import ACTIVATIONS, optimize_bundle
    from trtpipe.runtime import Bundle

    entry = Bundle.load(path).variants.get("int8")
    current = entry is not None and entry["report"].get("plan_from") == "--plan-from per-channel"
    if not (current and entry["report"].get("activations") == ACTIVATIONS):
        optimize_bundle(path, "int8", force=True, overwrite=entry is not None, plan_from="per-channel")


def ensure_variants(path) -> None:
    from common import ensure_variant

    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    ensure_int8_per_channel(path)


def demo_gate() -> tuple[dict | None, str]:
    """The int8 (every weight per channel) and int4 gates on the trained demo GPT-2, where it exists."""
    from common import BUNDLES, ensure_bundle

    from trtpipe.runtime import Bundle

    if not (BUNDLES.parent / "models" / "demo-gpt2" / "config.json").exists():
        return None, "models/demo-gpt2 is not trained here: `make demo-models`"
    path = ensure_bundle("demo-gpt2", "generate")
    ensure_int8_per_channel(path)
    return {"int8": Bundle.load(path).variants["int8"]["gate"], "int4": int4_as_optimize_writes(path)}, ""


def int4_as_optimize_writes(path) -> dict:
    """int4's gate as `optimize --precision int4` writes it, with its ladder (LM head fp32, then half the block)
    rather than forced at the first rung; the gate gains `settings`, the rung it was written or refused at."""
    from trtpipe.optimize.variants import optimize_bundle, refusal_is_current
    from trtpipe.runtime import Bundle
    from trtpipe.runtime.errors import CheckFailed

    bundle = Bundle.load(path)
    entry = bundle.variants.get("int4")
    refused = refusal_is_current(bundle, "int4")
    if not refused and (entry is None or entry["gate"].get("forced")):
        try:
            optimize_bundle(path, "int4", overwrite=entry is not None)
        except (
            CheckFailed
        ):  # refused at every rung (a forced one on disk is left as is): the manifest says why
            refused = True
    bundle = Bundle.load(path)
    entry = bundle.manifest["refused"]["int4"] if refused else bundle.variants["int4"]
    last = entry["report"]["plans_tried"][-1]
    head = "quantised" if last["lm_head"] else "fp32"
    return entry["gate"] | {"settings": f"block {last['block_size']}, LM head {head}"}


def ov_lines(
    ov_steps: dict, ov_runs: dict, steps: dict, runs: dict, why: str, levels: list[int]
) -> list[str]:
    """The same decode steps and mix on OpenVINO (BatchEngine's `backend="ov"`), beside ONNX Runtime's in place."""
    from trtpipe.benchmark.batch_scaling import scaling

    head = (
        '**BatchEngine on OpenVINO** (`backend="ov"`: the interop graph, rows share one width that moves in buckets '
        "of 32; slots.py), the same steps and mix; ×ort: its tokens/s over ONNX Runtime's in place."
    )
    if why:
        return [f"{head} Not measured ({why})."]
    low, top = min(levels), max(levels)
    lines = [
        head,
        "",
        f"| variant | 1 row ms | 16 rows ms | 16 rows × 1 row | tokens/s at 16 rows (×ort) | prefill 64 ms (ort) "
        f"| mix {low} in flight tokens/s (×ort) | mix {top} in flight tokens/s (×ort) | {top} × {low} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant in VARIANTS:
        d, o = ov_steps[variant]["decode_ms"], steps[variant]["decode_ms"]
        a, b = ov_runs[(variant, low)]["tokens_per_s"], ov_runs[(variant, top)]["tokens_per_s"]
        lines.append(
            f"| {variant} | {d[1]:.1f} | {d[16]:.1f} | {scaling(d[16], d[1]):.1f}× | "
            f"{16e3 / d[16]:.0f} ({o[16] / d[16]:.2f}×) | "
            f"{ov_steps[variant]['prefill_ms']:.1f} ({steps[variant]['prefill_ms']:.1f}) | "
            f"{a:.1f} ({a / runs[(variant, low)]['tokens_per_s']:.2f}×) | "
            f"{b:.1f} ({b / runs[(variant, top)]['tokens_per_s']:.2f}×) | {b / a:.2f}× |"
        )
    return lines


def main() -> int:
    from common import REPORTS, ensure_bundle, targets_table, write_section

    from trtpipe.benchmark.batch_scaling import (
        KERNEL_TEXT,
        LAYER_SHAPES,
        kernel_models,
        op_split,
        scaling,
        step_profile,
        time_kernels,
    )
    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop, summarize
    from trtpipe.runtime import BatchEngine, Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    kernel_rows = (1, 4, 8, 16, 64)
    print("kernels …", file=sys.stderr, flush=True)
    kernels = time_kernels(kernel_models(head=HEAD), kernel_rows, args.threads)

    path = ensure_bundle("gpt2", "generate")
    ensure_variants(path)
    bundle = Bundle.load(path)
    step_rows = (1, 2, 4, 8, 16)
    steps, splits, runs = {}, {}, {}
    engines = {
        v: BatchEngine(path, variant=None if v == "fp32" else v, threads=args.threads, slots=16)
        for v in VARIANTS
    }
    try:
        for variant, engine in engines.items():
            print(f"step profile {variant} …", file=sys.stderr, flush=True)
            steps[variant] = step_profile(engine, step_rows)
            splits[variant] = op_split(bundle.model_path(engine.generator.variant), 16, args.threads)
        requests = mix_requests(bundle, args.requests)
        load = os.getloadavg()[0]
        for clients in args.levels:
            for variant, engine in engines.items():
                print(f"mix {variant} @{clients} …", file=sys.stderr, flush=True)
                ours_closed_loop(engine, requests[:2], clients)  # warm
                runs[(variant, clients)] = summarize(ours_closed_loop(engine, requests, clients))
    finally:
        for engine in engines.values():
            engine.close()
    ov_steps, ov_runs, ov_why = {}, {}, ""
    try:
        import openvino  # noqa: F401
    except ImportError:
        ov_why = "openvino is not installed here: `pip install trtpipe[ov]`"
    if not ov_why:
        ov_levels = sorted({min(args.levels), max(args.levels)})
        for variant in VARIANTS:
            engine = BatchEngine(
                path,
                variant=None if variant == "fp32" else variant,
                threads=args.threads,
                slots=16,
                backend="ov",
            )
            try:
                print(f"ov step profile {variant} …", file=sys.stderr, flush=True)
                ov_steps[variant] = step_profile(engine, step_rows)
                for clients in ov_levels:
                    print(f"ov mix {variant} @{clients} …", file=sys.stderr, flush=True)
                    ours_closed_loop(engine, requests[:2], clients)  # warm
                    ov_runs[(variant, clients)] = summarize(ours_closed_loop(engine, requests, clients))
            finally:
                engine.close()
    gates, gate_why = demo_gate()
    int8_entry = bundle.variants["int8"]

    shapes = ", ".join(f"{k}×{n}" for k, n in LAYER_SHAPES)
    lines = [
        f"**The weight kernels alone**: one GPT-2 layer's four weight matrices ({shapes}), "
        f"two layers stacked, then the LM head (768×{HEAD}), {args.threads} threads, median ms of one run at M rows; "
        "each quantised by the function "
        "`optimize` uses. × M=1: how many times its one-row cost a run of M rows costs (M× = no gain from batching).",
        "",
        "| kernel | " + " | ".join(f"M={m} ms" for m in kernel_rows) + " | M=16 × M=1 |",
        "|---|" + "---|" * (len(kernel_rows) + 1),
    ]
    for name, per in kernels.items():
        lines.append(
            f"| {KERNEL_TEXT[name]} | "
            + " | ".join(f"{per[m]:.2f}" for m in kernel_rows)
            + f" | {scaling(per[16], per[1]):.1f}× |"
        )
    lines += [
        "",
        f"**One BatchEngine decode step** (GPT-2 124M, random weights, in-place KV, context 160, best of 5) and one "
        f"prefill chunk of {steps['fp32']['chunk']} tokens; the step at 16 rows split by op under ONNX Runtime's "
        "profiler (its own run, KV bound in place as the runtime binds it). int8: "
        f"{int8_entry['report'].get('plan_from', 'searched plan')}, "
        f"{sum(1 for s in int8_entry['report'].get('roles', {}).values() if s == 'fp32')} weights fp32.",
        "",
        "| variant | "
        + " | ".join(f"{r} row{'s' if r > 1 else ''} ms" for r in step_rows)
        + " | 16 rows × 1 row | tokens/s at 16 rows | prefill 64 ms | at 16 rows: weight MatMuls / attention / rest ms |",
        "|---|" + "---|" * (len(step_rows) + 4),
    ]
    for variant in VARIANTS:
        d = steps[variant]["decode_ms"]
        k = splits[variant]["kinds"]
        lines.append(
            f"| {variant} | "
            + " | ".join(f"{d[r]:.1f}" for r in step_rows)
            + f" | {scaling(d[16], d[1]):.1f}× | {16 / d[16] * 1e3:.0f} | {steps[variant]['prefill_ms']:.1f} | "
            f"{k['weight MatMuls']:.1f} / {k['attention']:.1f} / {k['rest']:.1f} |"
        )
    prompt = sum(len(r["ids"]) for r in requests) / len(requests)
    new = sum(r["new_tokens"] for r in requests) / len(requests)
    lines += [
        "",
        f"**The serve_load mix, {len(requests)} requests** ({prompt:.0f} prompt + {new:.0f} new tokens on average, "
        "the vLLM peer's requests), a closed loop at each level, BatchEngine with 16 slots, chunk 64.",
        "",
        "| variant | "
        + " | ".join(f"{c} in flight tokens/s" for c in args.levels)
        + f" | {max(args.levels)} × 1 |",
        "|---|" + "---|" * (len(args.levels) + 1),
    ]
    top = max(args.levels)
    for variant in VARIANTS:
        cells = [f"{runs[(variant, c)]['tokens_per_s']:.1f}" for c in args.levels]
        gain = runs[(variant, top)]["tokens_per_s"] / runs[(variant, 1)]["tokens_per_s"]
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {gain:.2f}× |")
    lines += ["", *ov_lines(ov_steps, ov_runs, steps, runs, ov_why, args.levels)]
    if gates:
        lines += [
            "",
            "Gates on the trained demo GPT-2 (next-token top-1 agreement with its fp32, needs ≥ 0.97):",
        ]
        for v, gate in gates.items():
            at = f" (`optimize`'s ladder wrote it at {gate['settings']})" if "settings" in gate else ""
            lines.append(f"- {v}: {gate['metrics']['next_token_top1']:.3f} — {gate['verdict']}{at}")
    else:
        lines += ["", f"Gates on the trained demo GPT-2: not measured ({gate_why})."]

    int4_gain = runs[("int4", top)]["tokens_per_s"] / runs[("int4", 1)]["tokens_per_s"]
    int8_gain = runs[("int8", top)]["tokens_per_s"] / runs[("int8", 1)]["tokens_per_s"]
    best_top = max(VARIANTS, key=lambda v: runs[(v, top)]["tokens_per_s"])
    int4_k = kernels["int4"]
    d4 = steps["int4"]["decode_ms"]
    d8 = steps["int8"]["decode_ms"]
    why = (
        f" — one int4 step of 16 rows costs {scaling(d4[16], d4[1]):.1f}× a step of one (int8: "
        f"{scaling(d8[16], d8[1]):.1f}×), {splits['int4']['kinds']['weight MatMuls']:.1f} ms of it in MatMulNBits; "
        f"the kernels alone at M=16: int4 {scaling(int4_k[16], int4_k[1]):.1f}× its M=1 cost, int8's MatMulInteger "
        f"{scaling(kernels['int8'][16], kernels['int8'][1]):.1f}×"
    )
    targets = [
        (
            f"int4 tokens/s at {top} in flight ≥ 4× int4 alone",
            f"{int4_gain:.2f}× ({runs[('int4', top)]['tokens_per_s']:.1f} vs {runs[('int4', 1)]['tokens_per_s']:.1f})"
            + ("" if int4_gain >= 4 else why),
            int4_gain >= 4,
        ),
        (
            f"int8 (dynamic) tokens/s at {top} in flight ≥ 4× int8 alone",
            f"{int8_gain:.2f}× ({runs[('int8', top)]['tokens_per_s']:.1f} vs {runs[('int8', 1)]['tokens_per_s']:.1f})",
            int8_gain >= 4,
        ),
    ]
    lines += ["", *targets_table(targets)]
    lines += [
        "",
        f"Fastest variant at {top} in flight: {best_top} ({runs[(best_top, top)]['tokens_per_s']:.1f} tokens/s). "
        f"Load average (2 cores) at the mix's start / end: {load:.1f} / {os.getloadavg()[0]:.1f}.",
    ]
    body = "\n".join(lines)
    print(body)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "batch-scaling.json").write_text(
        json.dumps(
            {
                "kernels": kernels,
                "steps": steps,
                "splits": splits,
                "mix": {f"{v} @{c}": s for (v, c), s in runs.items()},
                "gates": gates,
                "ov": {
                    "steps": ov_steps,
                    "mix": {f"{v} @{c}": r for (v, c), r in ov_runs.items()},
                    "why": ov_why,
                },
            },
            indent=2,
            default=str,
        )
    )
    if not args.no_write:
        write_section("batch-scaling", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
