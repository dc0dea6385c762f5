"""Optimised variants vs fp32, side by side in one process: MiniLM int8 against Optimum's avx512_vnni recipe (with the
embedding cosines), BERT-base / ALBERT-base int8 speed (gates judged on the trained demo models), GPT-2 TPOT for
fp32 / int8 / int8-wo / int4 with each DRAM floor and onnxruntime-genai on the same int4 ONNX.
Writes the `optimize` section of docs/benchmarks.md.

    python bench/optimize.py
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from common import BUNDLES, REPORTS, ensure_bundle, ensure_variant, targets_table, write_section


def embedding_accuracy(rows: dict, reference: str, batches: list[dict]) -> dict:
    """Sentence- and token-level cosine of each row's embeddings against the reference row on the same real-text
    batches. rows: spec key -> row. Returns spec key -> metrics, REFERENCE for the reference row, or the reason a
    row could not be measured."""
    import torch

    from trtpipe.benchmark.figures import REFERENCE

    out = {reference: REFERENCE}
    for key, row in rows.items():
        if key == reference:
            continue
        sent, tok = [], []
        try:
            for feed in batches:
                ref = rows[reference].run(feed)
                mask = feed["attention_mask"].astype(bool)
                if hasattr(row, "session"):
                    res = row.run(feed)
                    hidden, pooled = res["last_hidden_state"], res["sentence_embedding"]
                else:
                    with torch.no_grad():
                        hidden = row.model(
                            **{k: torch.from_numpy(v) for k, v in feed.items()}
                        ).last_hidden_state.numpy()
                    weights = mask[..., None].astype(np.float32)
                    pooled = (hidden * weights).sum(1) / weights.sum(1)
                    pooled /= np.linalg.norm(pooled, axis=-1, keepdims=True)
                a, b = ref["sentence_embedding"], pooled
                sent.append(np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1))
                ha, hb = ref["last_hidden_state"][mask], hidden[mask]
                tok.append(np.sum(ha * hb, -1) / np.linalg.norm(ha, axis=-1) / np.linalg.norm(hb, axis=-1))
        except (RuntimeError, KeyError, ValueError) as exc:
            out[key] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            continue
        s, t = np.concatenate(sent), np.concatenate(tok)
        out[key] = {
            "sentence_mean": float(s.mean()),
            "sentence_min": float(s.min()),
            "token_mean": float(t.mean()),
            "token_min": float(t.min()),
        }
    return out


def minilm(threads: int, rounds: int) -> tuple[list[str], list]:
    from trtpipe.benchmark.encode import build_row, fixed_feeds, run_encode
    from trtpipe.benchmark.figures import mean_min, metric, spec_key
    from trtpipe.runtime import Bundle, UserError

    path = ensure_bundle("minilm", "embed")
    ensure_variant(path, "int8")
    bundle = Bundle.load(path)
    specs = [("ours", None, "ort-cpu"), ("ours", "int8", "ort-cpu"), ("optimum", "int8", "optimum")]
    results = run_encode(bundle, specs, [(1, 128), (8, 128)], threads, rounds=rounds, iters=4)
    # accuracy rows are built from the same specs, and every figure is looked up by the spec's key
    reference = spec_key(*specs[0])
    rows, accuracy = {}, {}
    for kind, variant, backend in specs:
        try:
            rows[spec_key(kind, variant, backend)] = build_row(bundle, kind, variant, backend, threads)
        except (UserError, ImportError, OSError, RuntimeError) as exc:
            accuracy[spec_key(kind, variant, backend)] = f"row not built: {str(exc).splitlines()[0][:80]}"
    if reference in rows:
        accuracy.update(embedding_accuracy(rows, reference, fixed_feeds(bundle, 8, 128, count=8)))
    plan = bundle.variants["int8"]["report"]["counts"]
    lines = [
        "**MiniLM (real weights), s128**: our int8 picks each weight's precision on a ladder (per-tensor → "
        "per-channel → fp32), most sensitive weights first, until its gate passes; here "
        f"{plan['per-tensor']} MatMuls per-tensor, {plan['per-channel']} per-channel, {plan['fp32']} fp32. Cosines "
        "against our fp32 on 64 real sentences (b8 × s128); Optimum's row is its `avx512_vnni` dynamic recipe "
        "(per-tensor; it also quantises the embedding tables and attention's activation × activation MatMuls) on its "
        "own export, measured the same way.",
        "",
        "| row | batch | p50 ms | speed-up vs our fp32 | sentence cosine mean / min | token cosine mean / min |",
        "|---|---|---|---|---|---|",
    ]
    base = {r.batch: r.latency["p50_ms"] for r in results if r.key == reference}
    targets = []
    for r in results:
        if r.error:
            lines.append(f"| {r.label} | {r.batch} | skipped: {r.error} ||||")
            continue
        speed = base[r.batch] / r.latency["p50_ms"]
        cos = mean_min(accuracy, r.key, "sentence_mean", "sentence_min")
        tok = mean_min(accuracy, r.key, "token_mean", "token_min")
        lines.append(f"| {r.label} | {r.batch} | {r.latency['p50_ms']:.2f} | {speed:.2f}× | {cos} | {tok} |")
        if r.key == spec_key(*specs[1]) and r.batch == 8:
            mean, low = metric(accuracy, r.key, "sentence_mean"), metric(accuracy, r.key, "sentence_min")
            ok = None if mean is None or low is None else (speed >= 1.5 and mean >= 0.99 and low >= 0.98)
            targets.append(
                (
                    "MiniLM int8 ≥ 1.5× our fp32 at cosine ≥ 0.99 mean / 0.98 min (b8 × s128)",
                    f"{speed:.2f}× at {cos}",
                    ok,
                )
            )
    return lines, targets


def demo_int8(demo: str):
    """The trained demo model's bundle with its int8 variant (searched, gated, kept even if refused: --force), or
    None when the demo models are not trained."""
    path = BUNDLES / f"{demo}-classify"
    if not ((BUNDLES.parent / "models" / demo / "config.json").exists() or path.exists()):
        return None
    path = ensure_bundle(demo, "classify")
    ensure_variant(path, "int8")
    return path


def plan_cell(report: dict) -> str:
    counts = report["counts"]
    return f"{counts['per-tensor']} / {counts['per-channel']} / {counts['fp32']}"


def fp32_roles(report: dict) -> str:
    names = [
        role.removesuffix("/MatMul").rsplit("/", 1)[-1]
        for role, s in report.get("roles", {}).items()
        if s == "fp32"
    ]
    return ", ".join(f"`{n}`" for n in names) or "none"


def base_encoders(threads: int, rounds: int) -> tuple[list[str], list]:
    from trtpipe.benchmark.encode import run_encode
    from trtpipe.optimize.variants import optimize_bundle
    from trtpipe.runtime import Bundle, UserError

    lines = [
        "",
        "**BERT-base and ALBERT-base, b8 × s128** (random weights: speed only). A plan searched on random weights "
        "means nothing, so each base model runs the int8 plan its trained demo model's search chose, carried over "
        "weight by weight (`--plan-from`), where the two exports share their weights' roles (ALBERT: one set of "
        "shared weights at any depth); BERT-base (12 layers) has layers the 4-layer demo lacks and runs its own "
        "search's plan. Each gate is judged on the trained demo model:",
        "",
        "| model | fp32 p50 ms | int8 p50 ms | speed-up | int8 plan (per-tensor / per-channel / fp32 MatMuls) | plan chosen by | demo gate: label agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    targets, demos = [], []
    for preset, demo in (("bert-base", "demo-bert-classify"), ("albert-base", "demo-albert-classify")):
        path = ensure_bundle(preset, "classify")
        demo_path = demo_int8(demo)
        chosen_by = "its own search (random weights)"
        if demo_path is not None:
            try:
                optimize_bundle(path, "int8", force=True, overwrite=True, plan_from=demo_path)
                chosen_by = f"{demo}'s search"
            except UserError:
                pass  # the demo's plan does not cover this model's weights
        if chosen_by.startswith("its own"):
            ensure_variant(path, "int8")
            report = Bundle.load(path).variants["int8"]["report"]
            if report.get("plan_from"):  # left by an earlier run: search again
                optimize_bundle(path, "int8", force=True, overwrite=True)
        bundle = Bundle.load(path)
        results = run_encode(
            bundle,
            [("ours", None, "ort-cpu"), ("ours", "int8", "ort-cpu")],
            [(8, 128)],
            threads,
            rounds=rounds,
            iters=2,
        )
        fp32, int8 = results[0].latency["p50_ms"], results[1].latency["p50_ms"]
        gate = "demo model not trained (`make demo-models`)"
        gate_ok = None
        if demo_path is not None:
            entry = Bundle.load(demo_path).variants["int8"]
            g = entry["gate"]
            gate = f"{g['metrics']['label_agreement']:.3f} ({g['verdict']})"
            gate_ok = g["verdict"] == "pass"
            demos.append((demo, entry))
        lines.append(
            f"| {preset} | {fp32:.1f} | {int8:.1f} | {fp32 / int8:.2f}× | "
            f"{plan_cell(bundle.variants['int8']['report'])} | {chosen_by} | {gate} |"
        )
        targets.append(
            (
                f"{preset} int8 ≥ 2× fp32 at the gate",
                f"{fp32 / int8:.2f}×, gate {gate}",
                fp32 / int8 >= 2 and gate_ok is True,
            )
        )
    if demos:
        lines += [
            "",
            "The demo models' own int8 searches (calibration text guides, 64 held-out texts decide; label agreement "
            "≥ 0.99 there means no label may flip):",
            "",
            "| demo model | plans tried | kept plan (per-tensor / per-channel / fp32) | fp32 weights | weight errors from | held-out label agreement | held-out expected agreement |",
            "|---|---|---|---|---|---|---|",
        ]
        for demo, entry in demos:
            report, m = entry["report"], entry["gate"]["metrics"]
            flipped = round((1 - m["label_agreement"]) * entry["gate"]["samples"])
            lines.append(
                f"| {demo} | {len(report['plans_tried'])} | {plan_cell(report)} | {fp32_roles(report)} | "
                f"{report.get('errors_from', 'estimated')} | {m['label_agreement']:.3f}, {flipped} of "
                f"{entry['gate']['samples']} flipped ({entry['gate']['verdict']}) | {m.get('expected_agreement', float('nan')):.4f} |"
            )
    return lines, targets


def gpt2(threads: int, rounds: int) -> tuple[list[str], list]:
    from trtpipe.benchmark.decode import floors, make_rows, measure_floors, run_decode
    from trtpipe.runtime import Bundle

    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8", "int8-wo", "int4"):
        ensure_variant(path, precision)
    bundle = Bundle.load(path)
    variants = ["fp32", "int8", "int8-wo", "int4"]
    rows = make_rows(bundle, variants, ["genai"], threads, genai_variants=["int4"])
    results = run_decode(bundle, [32], 64, rows, rounds=rounds)
    bandwidth, gemm = measure_floors(threads)
    files = {
        "fp32": "model.kv-inplace.onnx",
        "int8": "model.int8.kv-inplace.onnx",
        "int8-wo": "model.int8-wo.kv-inplace.onnx",
        "int4": "model.int4.kv-inplace.onnx",
    }
    lines = [
        "",
        f"**GPT-2 124M decoding, prompt 32, 64 new tokens, batch 1** (random weights: speed only; read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s measured in the same run):",
        "",
        "| row | weights read per token MiB | TPOT p50 ms | DRAM floor ms | % of floor speed | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    tpots = {}
    for r in results:
        if r.error:
            lines.append(f"| {r.label} | skipped: {r.error} |||||")
            continue
        variant = r.variant or "fp32"
        key = "genai int4" if r.kind == "genai" else variant
        tpots[key] = r.tpot["p50_ms"]
        f = floors(
            bundle,
            files.get(variant, "model.int4.onnx") if r.kind != "genai" else "model.int4.onnx",
            32,
            64,
            bandwidth,
            gemm,
        )
        lines.append(
            f"| {r.label} | {f['weight_bytes'] / 2**20:.0f} | {r.tpot['p50_ms']:.2f} | {f['tpot_floor_ms']:.2f} | "
            f"{f['tpot_floor_ms'] / r.tpot['p50_ms']:.0%} | {r.tokens_per_s:.1f} |"
        )
    targets = []
    if "genai int4" in tpots and "int4" in tpots:
        ratio = tpots["genai int4"] / tpots["int4"]
        targets.append(
            (
                "GPT-2 int4 TPOT ≥ 1.0× onnxruntime-genai on the same int4 ONNX (aim 1.2×)",
                f"{ratio:.2f}×",
                ratio >= 1.0,
            )
        )
    demo = BUNDLES / "demo-gpt2-generate"
    if (BUNDLES.parent / "models" / "demo-gpt2" / "config.json").exists() or demo.exists():
        demo = ensure_bundle("demo-gpt2", "generate")
        ensure_variant(demo, "int4")
        gate = Bundle.load(demo).variants["int4"]["gate"]
        m = gate["metrics"]
        lines += [
            "",
            f"LM gate on the trained demo GPT-2, int4: next-token top-1 agreement {m['next_token_top1']:.3f} "
            f"(needs ≥ 0.97), {greedy_match_text(m)} — {gate['verdict']}.",
        ]
        targets.append(
            (
                "LM gate passes on the demo GPT-2 (int4)",
                f"{m['next_token_top1']:.3f}",
                gate["verdict"] == "pass",
            )
        )
    return lines, targets


def greedy_match_text(metrics: dict) -> str:
    """The LM gate's greedy-match length, or "not measured" when the gate did not record it (never a 0)."""
    value = metrics.get("greedy_match_tokens_mean")
    if value is None:
        return "greedy-match length not measured (the gate did not record it)"
    return f"greedy-match length {value:.1f} of 32 tokens"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=["minilm", "base", "gpt2"], action="append")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    parts = args.only or ["minilm", "base", "gpt2"]
    lines, targets = [], []
    for part, fn in (("minilm", minilm), ("base", base_encoders), ("gpt2", gpt2)):
        if part in parts:
            more, goals = fn(args.threads, args.rounds)
            lines += more
            targets += goals
    lines += ["", *targets_table(targets)]
    body = "\n".join(lines)
    print(body)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "optimize.json").write_text(json.dumps({"targets": targets}, indent=2, default=str))
    if not args.no_write and parts == ["minilm", "base", "gpt2"]:
        write_section("optimize", body)


if __name__ == "__main__":
    main()
