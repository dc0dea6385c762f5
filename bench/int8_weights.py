"""Why dynamic int8 gains little over fp32 on a VNNI CPU (issue 20): MiniLM b8 × s128, the bundle's own int8 plan
quantised three ways, timed side by side with fp32 and gated on the held-out text. Our int8 stores u8 weights
(int8.py, REDUCE_RANGE: safe on every x86 CPU). VNNI's int8 instruction multiplies u8 activations by s8 weights,
so u8 × u8 runs on ONNX Runtime's slower kernels. The last row is what `optimize --int8-weights s8` writes (its
own search, gated), in a scratch copy of the bundle. Part of `make bench`.

    python bench/int8_weights.py [--rounds 4] [--encoders-only] [--no-write]   # ≈ 4.5 min on 2 cores (1 min encoders)

Rewrites the `int8-weights` section of docs/benchmarks.md. GPT-2 part: BatchEngine (16 slots) on the vLLM peer's
32 serve_load requests, alone and 16 in flight, int8 with u8 weights against s8 weights (the same plan: every weight per channel, `--plan-from per-channel`; random weights,
speed only) and int4, 2 interleaved rounds. The s8 variant is made in a hard-linked scratch copy of the bundle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoders-only", action="store_true", help="skip GPT-2 on the serve_load mix")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    out: list[str] = []
    encoders(args, out)
    if not args.encoders_only:
        gpt2(args, out)
    body = "\n".join(out)
    print(body)
    if not args.no_write:
        from common import write_section

        write_section("int8-weights", body)


def gpt2(args, out: list[str]) -> None:
    from common import ensure_bundle, ensure_variant, variant_copy

    from trtpipe.benchmark.vllm_peer import mix_requests, ours_closed_loop
    from trtpipe.runtime import BatchEngine, Bundle, CheckFailed, UserError

    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int8", plan_from="per-channel")
    ensure_variant(path, "int4")
    requests = mix_requests(Bundle.load(path), 32)
    with tempfile.TemporaryDirectory() as scratch:
        rows = {"int8, u8 weights": (path, "int8"), "int4": (path, "int4")}
        why = None
        try:
            copy, _ = variant_copy(
                path,
                Path(scratch) / path.name,
                "int8",
                force=True,
                plan_from="per-channel",
                int8_weights="s8",
            )
            rows["int8, s8 weights"] = (copy, "int8")
        except (UserError, CheckFailed) as exc:
            why = str(exc).splitlines()[0][:160]
        engines = {k: BatchEngine(p, variant=v, threads=args.threads, slots=16) for k, (p, v) in rows.items()}
        for engine in engines.values():
            ours_closed_loop(engine, requests[:4], 16)  # warm
        speed: dict = {(k, c): [] for k in engines for c in (1, 16)}
        for _ in range(2):
            for clients in (1, 16):
                for label, engine in engines.items():
                    time.sleep(0.2)
                    run = ours_closed_loop(engine, requests, clients)
                    speed[(label, clients)].append(
                        sum(len(r["ids"]) for r in run["results"]) / run["seconds"]
                    )
        for engine in engines.values():
            engine.close()
    out += [
        "",
        "**GPT-2 124M** (random weights: speed only), the serve_load mix (the vLLM peer's 32 requests), BatchEngine "
        "16 slots, tokens/s over 2 interleaved rounds (low–high); both int8 rows run the same plan, every weight "
        "per channel:",
        "",
        "| variant | alone | 16 in flight | 16 × alone |",
        "|---|---|---|---|",
    ]
    for label in engines:
        one, many = speed[(label, 1)], speed[(label, 16)]
        out.append(
            f"| {label} | {min(one):.0f}–{max(one):.0f} | {min(many):.0f}–{max(many):.0f} | "
            f"{np.median(many) / np.median(one):.2f}× |"
        )
    if why:
        out.append(f"| int8, s8 weights | not measured ({why}) |||")


def encoders(args, out: list[str]) -> None:
    import onnx
    import onnxruntime as ort
    import onnxruntime.quantization as quantization
    from common import ensure_bundle, ensure_variant
    from onnxruntime.quantization import QuantType

    from trtpipe.export import graph
    from trtpipe.optimize import gate
    from trtpipe.optimize import int8 as int8_module
    from trtpipe.optimize.int8_plan import weight_groups
    from trtpipe.optimize.variants import optimize_bundle
    from trtpipe.runtime import Bundle, CheckFailed, UserError

    path = ensure_bundle("minilm", "embed")
    ensure_variant(path, "int8")
    bundle = Bundle.load(path)
    base = onnx.load(str(bundle.model_path("fp32")))
    graph.bypass_weight_identities(base)
    per_channel = set(bundle.variants["int8"]["report"]["scheme"].get("per-channel", []))
    plan = {
        n: "per-channel" if n in per_channel else "per-tensor"
        for nodes in weight_groups(base).values()
        for n in nodes
    }
    real = quantization.quantize_dynamic

    def quantised(weight_type, reduce_range: bool):
        def patched(*a, **k):
            return real(*a, **{**k, "weight_type": weight_type, "reduce_range": reduce_range})

        quantization.quantize_dynamic = patched  # apply_dynamic imports it from the package at call time
        try:
            return int8_module.apply_dynamic(base, plan)
        finally:
            quantization.quantize_dynamic = real

    rows = {
        "u8 weights, 8 bits (optimize's default)": quantised(QuantType.QUInt8, False),
        "s8 weights, 8 bits (VNNI's u8 × s8)": quantised(QuantType.QInt8, False),
        "s8 weights, 7 bits (reduce_range)": quantised(QuantType.QInt8, True),
    }
    searched, why = None, None  # what `optimize --int8-weights s8` writes: its own search, s8 weights
    scratch = tempfile.TemporaryDirectory()
    try:
        copy = Path(scratch.name) / path.name
        shutil.copytree(path, copy)
        searched = optimize_bundle(copy, "int8", overwrite=True, int8_weights="s8")
        searched["path"] = Bundle.load(copy).model_path("int8")
    except (UserError, CheckFailed) as exc:
        why = str(exc).splitlines()[0][:160]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    sessions = {
        "fp32": ort.InferenceSession(
            str(bundle.model_path("fp32")), options, providers=["CPUExecutionProvider"]
        )
    }
    gates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, model in rows.items():
            file = os.path.join(tmp, f"{len(gates)}.onnx")
            graph.save_onnx(model, file)
            gates[label] = gate.evaluate(bundle, file, "int8", gate.gate_texts(bundle.kind.gate_texts))
            sessions[label] = ort.InferenceSession(file, options, providers=["CPUExecutionProvider"])
        if searched is not None:
            label = "s8 weights, 8 bits, its own search (`optimize --int8-weights s8`)"
            gates[label] = gate.evaluate(
                bundle, searched["path"], "int8", gate.gate_texts(bundle.kind.gate_texts)
            )
            sessions[label] = ort.InferenceSession(
                str(searched["path"]), options, providers=["CPUExecutionProvider"]
            )
            counts = searched["report"]["counts"]
            rows[label] = f"{counts['per-channel']} per-channel, {counts['fp32']} fp32"
        rng = np.random.default_rng(0)
        feeds = {}
        for spec in sessions["fp32"].get_inputs():
            if spec.name == "input_ids":
                feeds[spec.name] = rng.integers(100, 20000, (8, 128)).astype(np.int64)
            else:
                feeds[spec.name] = (np.zeros if "type" in spec.name else np.ones)((8, 128), dtype=np.int64)
        samples: dict = {label: [] for label in sessions}
        for _ in range(args.rounds):
            for label, session in sessions.items():
                session.run(None, feeds)
                for _ in range(5):
                    started = time.perf_counter()
                    session.run(None, feeds)
                    samples[label].append(time.perf_counter() - started)
    fp32 = float(np.median(samples["fp32"]))
    out += [
        f"**MiniLM b8 × s128**, {args.threads} threads, median of {args.rounds} interleaved rounds × 5; the first "
        f"int8 rows run the bundle's own plan ({len(per_channel)} MatMuls per-channel, the rest per-tensor), "
        "activations per row; gate on the held-out text:",
        "",
        "| row | p50 ms | × fp32 speed | sentence cosine mean / min | gate |",
        "|---|---|---|---|---|",
        f"| fp32 | {fp32 * 1e3:.1f} | 1.00× | reference | – |",
    ]
    for label in rows:
        if label not in samples:
            continue
        ms = float(np.median(samples[label]))
        m = gates[label].metrics
        verdict = "pass" if gates[label].passed else "fail"
        out.append(
            f"| {label} | {ms * 1e3:.1f} | {fp32 / ms:.2f}× | {m['embedding_cosine_mean']:.4f} / "
            f"{m['embedding_cosine_min']:.4f} | {verdict} |"
        )
    if searched is None:
        out.append(f"| s8 weights, 8 bits, its own search | not measured ({why}) ||||")
    else:
        out += [
            "",
            f"The s8 search kept {rows['s8 weights, 8 bits, its own search (`optimize --int8-weights s8`)']}.",
        ]
    scratch.cleanup()


if __name__ == "__main__":
    main()
