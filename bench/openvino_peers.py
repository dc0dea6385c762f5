"""The strongest CPU peers side by side, in one run, interleaved rounds, same inputs, same threads:

1. encoders (MiniLM real weights, embed; BERT-base random weights, classify; b1 and b8 × s128): trtpipe ort-cpu
   fp32 / int8 and its ov backend (fp32, int8-qdq) against OpenVINO's runtime called directly on trtpipe's own
   model.onnx (f32, and its bf16 default) and OpenVINO + NNCF int8 (nncf.quantize, default transformer recipe),
   with the accuracy each lossy row keeps;
2. GPT-2 124M decoding, batch 1, prompts 32 and 512: TTFT and TPOT of trtpipe fp32 / int8-wo / int4 (in-place KV),
   each also with its prompts on OpenVINO (prefill_backend="ov"), against openvino-genai's LLMPipeline at fp32 /
   int8 / int4 weights (optimum-intel's export of the same weights; its int4 also at OpenVINO's defaults and at our
   activation group), with greedy agreement against fp32;
3. 8 different prompts at once, 64 new tokens: trtpipe's BatchEngine (fp32, int4; the fused step, two passes, the
   int8 cache, the OpenVINO prefill) against openvino-genai's batch of 8 (LLMPipeline on one batch,
   ContinuousBatchingPipeline).

openvino-genai and optimum-intel run in their own venv (.venv-ov-genai, `make bench-peers`), in a worker process
this script drives one command at a time. Writes the `openvino` section of docs/benchmarks.md.

    python bench/openvino_peers.py [--only encoders|gpt2|batch] [--rounds 5] [--no-write]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import numpy as np
from common import (
    REPORTS,
    ROOT,
    ensure_bundle,
    ensure_kv8,
    ensure_kv_fused,
    ensure_variant,
    load_line,
    targets_table,
    write_section,
)

SEQ = 128
NEW_TOKENS = 64
GATE_MEAN, GATE_MIN, GATE_LABELS = 0.99, 0.98, 0.99


def reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines or [type(exc).__name__])[0][:160]


def ms(value: float | None, places: int = 2) -> str:
    return "not measured" if value is None else f"{value:.{places}f}"


def spread(per_round: list[float]) -> float:
    """Round-to-round spread of a row: (max - min) / median of its per-round medians."""
    values = np.asarray(per_round)
    return float((values.max() - values.min()) / np.median(values)) if values.size > 1 else 0.0


# ------------------------------------------------------------------------------------------- encoders


def encoder_specs(bundle, threads: int, calibration: list[dict], default: str) -> list[tuple]:
    """(key, label, runs at, factory) for every encoder row; a factory that raises makes a not-measured row."""
    from trtpipe.benchmark.encode import OursRow
    from trtpipe.benchmark.ov_peers import OvPeerRow, nncf_int8

    onnx = bundle.model_path("fp32")
    version = _openvino_version()
    nncf_cache: dict = {}

    def nncf_row(precision, label, runs_at):
        def make():
            if "path" not in nncf_cache:
                nncf_cache["path"], nncf_cache["info"] = nncf_int8(bundle, calibration)
            return OvPeerRow(nncf_cache["path"], threads, precision, label, runs_at)

        return make

    plain = f"OpenVINO {version} on trtpipe's model.onnx"
    return [
        ("ort-fp32", "trtpipe ort-cpu fp32", "fp32", lambda: OursRow(bundle, "ort-cpu", None, threads)),
        ("ort-int8", "trtpipe ort-cpu int8", "int8 weights, dynamic int8 activations", lambda: OursRow(bundle, "ort-cpu", "int8", threads)),
        ("ov-fp32", "trtpipe ov fp32", "f32", lambda: OursRow(bundle, "ov", None, threads)),
        ("ov-int8-qdq", "trtpipe ov int8-qdq", "int8 static QDQ, f32 elsewhere", lambda: OursRow(bundle, "ov", "int8-qdq", threads)),
        ("ov-int8-nncf", "trtpipe ov int8-nncf", "int8 static QDQ (NNCF's recipe), f32 elsewhere", lambda: OursRow(bundle, "ov", "int8-nncf", threads)),
        ("ov-bf16", "trtpipe ov bf16", "bf16", lambda: OursRow(bundle, "ov", "bf16", threads)),
        ("peer-f32", f"{plain} (f32)", "f32", lambda: OvPeerRow(onnx, threads, "f32", f"{plain} (f32)", "f32")),
        ("peer-default", f"{plain} (its default: {default})", default, lambda: OvPeerRow(onnx, threads, None, f"{plain} (default)", default)),
        ("nncf-f32", "OpenVINO + NNCF int8 (f32 elsewhere)", "int8 (NNCF), f32 elsewhere", nncf_row("f32", "OpenVINO + NNCF int8 (f32)", "int8")),
        ("nncf-default", f"OpenVINO + NNCF int8 (its default: {default} elsewhere)", f"int8 (NNCF), {default} elsewhere", nncf_row(None, "OpenVINO + NNCF int8 (default)", "int8")),
    ], nncf_cache  # fmt: skip


def _openvino_version() -> str:
    try:
        import openvino

        return openvino.__version__.split("-")[0]
    except ImportError:
        return "(not installed)"


def build(specs: list[tuple]) -> dict:
    """key -> (label, runs at, row or None, why not)."""
    built = {}
    for key, label, runs_at, factory in specs:
        try:
            built[key] = (label, runs_at, factory(), None)
        except Exception as exc:  # a peer that cannot be built is a row that says why, never a dropped row
            print(f"not measured: {label}: {reason(exc)}", flush=True)
            built[key] = (label, runs_at, None, reason(exc))
    return built


def time_rows(built: dict, feeds: list[dict], rounds: int, iters: int, warmup: int = 2) -> dict:
    """Interleaved rounds: each round runs every row `iters` times on the same feeds. key -> {p50_ms, rounds}."""
    samples = {key: [] for key in built}
    per_round = {key: [] for key in built}
    for _, _, row, _ in built.values():
        if row is not None:
            for feed in feeds[:warmup]:
                row.run(feed)
    for _ in range(rounds):
        for key, (_, _, row, _) in built.items():
            if row is None:
                continue
            this = []
            for i in range(iters):
                started = time.perf_counter()
                row.run(feeds[i % len(feeds)])
                this.append(time.perf_counter() - started)
            samples[key] += this
            per_round[key].append(float(np.median(this)) * 1e3)
    out = {}
    for key, values in samples.items():
        if values:
            out[key] = {
                "p50_ms": float(np.percentile(np.asarray(values) * 1e3, 50)),
                "rounds": per_round[key],
            }
    return out


def label_agreement(built: dict, reference: str, feeds: list[dict]) -> dict:
    """Fraction of argmax labels equal to the reference row's, per row, on the same feeds."""
    from trtpipe.benchmark.figures import REFERENCE

    ref = built[reference][2]
    labels = {reference: [np.argmax(ref.run(f)["logits"], -1) for f in feeds]}
    out = {reference: REFERENCE}
    for key, (_, _, row, why) in built.items():
        if key == reference:
            continue
        if row is None:
            out[key] = f"row not built: {why}"
            continue
        got = [np.argmax(row.run(f)["logits"], -1) for f in feeds]
        same = np.concatenate([a == b for a, b in zip(labels[reference], got)])
        out[key] = {"label_agreement": float(same.mean()), "samples": int(same.size)}
    return out


LOSSY = ("ort-int8", "ov-int8-qdq", "ov-int8-nncf", "ov-bf16", "peer-default", "nncf-f32", "nncf-default")
INT8 = ("ort-int8", "ov-int8-qdq", "ov-int8-nncf")
NNCF = ("nncf-f32", "nncf-default")


def demo_gate(threads: int, default: str) -> tuple[dict | None, str]:
    """Label agreement of every lossy row rebuilt on the trained demo BERT, on its held-out sentences; None and
    why when the demo model is not trained."""
    from trtpipe.optimize import gate
    from trtpipe.optimize.variants import calibration_feeds, read_texts
    from trtpipe.runtime import Bundle

    if not (ROOT / "models" / "demo-bert-classify" / "config.json").exists():
        return None, "models/demo-bert-classify is not trained here: `make demo-models`"
    path = ensure_bundle("demo-bert-classify", "classify")
    for precision in INT8:
        ensure_variant(path, precision.removeprefix("ort-").removeprefix("ov-"))
    ensure_bf16(path)
    bundle = Bundle.load(path)
    calibration = calibration_feeds(bundle, read_texts(None, bundle.kind.calibration_texts, "train"), batch=4)
    specs, _ = encoder_specs(bundle, threads, calibration, default)
    built = build([s for s in specs if s[0] in ("ort-fp32", *LOSSY)])
    texts = read_texts(None, bundle.kind.gate_texts, "heldout")
    return label_agreement(
        built, "ort-fp32", gate.encoder_batches(bundle, texts, batch=8, max_tokens=SEQ)
    ), ""


def ensure_bf16(path) -> None:
    """The bf16 variant (OpenVINO's bf16 compute of model.onnx), where this CPU has bf16; elsewhere the row it
    feeds is not measured and says why (its factory meets the missing variant)."""
    from trtpipe.runtime import UserError

    try:
        ensure_variant(path, "bf16")
    except UserError as exc:
        print(f"no bf16 variant: {exc}", file=sys.stderr)


def gate_kept(task: str, accuracy: dict, demo: dict | None, key: str) -> bool | None:
    """Whether a lossy row keeps our gate: MiniLM, sentence cosine vs fp32 ≥ 0.99 mean / 0.98 min; BERT, label
    agreement ≥ 0.99 on the trained demo model's held-out sentences (None: not measured)."""
    from trtpipe.benchmark.figures import metric

    if task == "embed":
        mean, low = metric(accuracy, key, "sentence_mean"), metric(accuracy, key, "sentence_min")
        return None if mean is None or low is None else (mean >= GATE_MEAN and low >= GATE_MIN)
    value = metric(demo, key, "label_agreement") if demo else None
    return None if value is None else value >= GATE_LABELS


def accuracy_text(task: str, accuracy: dict, demo: dict | None, demo_why: str, key: str) -> str:
    from trtpipe.benchmark.figures import mean_min, metric

    if key not in LOSSY:
        return "reference" if key == "ort-fp32" else "fp32 (same precision)"
    if task == "embed":
        return "sentence cosine " + mean_min(accuracy, key, "sentence_mean", "sentence_min")
    value = metric(accuracy, key, "label_agreement")
    here = (
        f"labels {value:.3f} of {accuracy[key]['samples']} (random weights: no meaning)"
        if value is not None
        else f"labels not measured ({accuracy.get(key, 'no accuracy run')})"
    )
    d = metric(demo, key, "label_agreement") if demo else None
    gate = (
        f"demo-bert-classify {d:.3f} on {demo[key]['samples']} held-out"
        if d is not None
        else f"demo gate not measured ({demo_why or (demo or {}).get(key, '?')})"
    )
    return f"{here}; {gate}"


def encoders(threads: int, rounds: int) -> tuple[list[str], list, dict]:
    from optimize import embedding_accuracy

    from trtpipe.benchmark.encode import fixed_feeds
    from trtpipe.benchmark.ov_peers import default_precision, qdq_matmul_kinds
    from trtpipe.optimize.variants import calibration_feeds, read_texts
    from trtpipe.runtime import Bundle

    try:
        default = default_precision()
    except Exception as exc:
        default = f"unknown ({reason(exc)})"
    lines = [
        f"**Encoders, s{SEQ}, {threads} threads, {rounds} interleaved rounds** (every row the same real-text "
        "batches). OpenVINO's CPU default inference precision on this machine is "
        f"**{default}**: its default rows say so; every other OpenVINO row is compiled with "
        "`INFERENCE_PRECISION_HINT=f32`. All OpenVINO rows: `PERFORMANCE_HINT=LATENCY`, "
        f"`INFERENCE_NUM_THREADS={threads}`. NNCF: `nncf.quantize(preset=PERFORMANCE, "
        "model_type=TRANSFORMER)` on the OpenVINO model read from model.onnx, calibrated on the same "
        "real-text batches our int8 calibrates on.",
    ]
    targets, raw = [], {}
    for preset, task, iters_b8 in (("minilm", "embed", 4), ("bert-base", "classify", 2)):
        path = ensure_bundle(preset, task)
        for precision in ("int8", "int8-qdq", "int8-nncf"):
            ensure_variant(path, precision)
        ensure_bf16(path)
        bundle = Bundle.load(path)
        calibration = calibration_feeds(
            bundle, read_texts(None, bundle.kind.calibration_texts, "train"), batch=4
        )
        specs, nncf_cache = encoder_specs(bundle, threads, calibration, default)
        built = build(specs)
        timings = {}
        for batch in (1, 8):
            feeds = fixed_feeds(bundle, batch, SEQ, count=4)
            timings[batch] = time_rows(built, feeds, rounds, iters=8 if batch == 1 else iters_b8)
        # accuracy beside every lossy row, against our fp32 on the same batches (64 real sentences)
        check = fixed_feeds(bundle, 8, SEQ, count=8)
        live = {k: v[2] for k, v in built.items() if v[2] is not None}
        demo, demo_why = None, ""
        if task == "embed":
            accuracy = embedding_accuracy(live, "ort-fp32", check) if "ort-fp32" in live else {}
            for key, (_, _, row, why) in built.items():
                if row is None:
                    accuracy[key] = f"row not built: {why}"
        else:
            accuracy = label_agreement(built, "ort-fp32", check) if "ort-fp32" in live else {}
            try:
                demo, demo_why = demo_gate(threads, default)
            except Exception as exc:
                demo, demo_why = None, f"the demo rows failed: {reason(exc)}"
        keeps_gate = functools.partial(gate_kept, task, accuracy, demo)
        accuracy_cell = functools.partial(accuracy_text, task, accuracy, demo, demo_why)
        info = nncf_cache.get("info")
        title = (
            "MiniLM (all-MiniLM-L6-v2, real weights), sentence embeddings"
            if task == "embed"
            else "BERT-base (random weights: speed only), classify"
        )
        nncf_text = (
            f"NNCF runs {info['int8_weight']} weight MatMuls and {info['int8_activation']} of attention's "
            f"activation × activation MatMuls (Q·Kᵀ) in int8 with static activation scales, {info['float']} "
            f"MatMuls float (of {info['matmuls']})"
            if info
            else "NNCF not measured"
        )
        plan = bundle.variants["int8"]["report"].get("counts", {})
        qdq = qdq_matmul_kinds(bundle.model_path("int8-qdq"))
        ours = {
            "ort-int8": f"{plan.get('per-tensor', 0) + plan.get('per-channel', 0)} weight MatMuls int8 "
            f"(dynamic activation scales), {plan.get('fp32', 0)} weights kept fp32",
            "ov-int8-qdq": f"{qdq['int8']} MatMuls int8 (static activation scales), {qdq['float']} float",
            "ov-int8-nncf": nncf_variant_text(bundle),
        }
        ours_text = (
            f"our int8: {ours['ort-int8']}; our int8-qdq: {ours['ov-int8-qdq']}; "
            f"our int8-nncf: {ours['ov-int8-nncf']}"
        )
        lines += [
            "",
            f"**{title}** — {nncf_text}; {ours_text}.",
            "",
            "| row | runs at | batch | p50 ms | items/s | × trtpipe ort-cpu fp32 | accuracy vs trtpipe fp32 | our gate |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for batch in (1, 8):
            t = timings[batch]
            base = t.get("ort-fp32", {}).get("p50_ms")
            for key, (label, runs_at, row, why) in built.items():
                if row is None or key not in t:
                    lines.append(f"| {label} | {runs_at} | {batch} | not measured ({why}) |||||")
                    continue
                p50 = t[key]["p50_ms"]
                ok = keeps_gate(key) if key in LOSSY else None
                gate_cell = (
                    "–"
                    if key not in LOSSY
                    else ("not measured" if ok is None else ("pass" if ok else "fail"))
                )
                lines.append(
                    f"| {label} | {runs_at} | {batch} | {p50:.2f} | {batch / p50 * 1e3:.1f} | "
                    f"{base / p50:.2f}× | {accuracy_cell(key)} | {gate_cell} |"
                )
        # ratios and targets
        ratio_rows = {}
        for batch in (1, 8):
            t = timings[batch]
            fp32 = {k: t[k]["p50_ms"] for k in ("ort-fp32", "ov-fp32") if k in t}
            best_fp32 = min(fp32, key=fp32.get) if fp32 else None
            gated = {k: t[k]["p50_ms"] for k in INT8 if k in t and keeps_gate(k) is not False}
            best_int8 = min(gated, key=gated.get) if gated else None
            nncf = {k: t[k]["p50_ms"] for k in NNCF if k in t}
            best_nncf = min(nncf, key=nncf.get) if nncf else None
            ratio_rows.setdefault("fp32", []).append((best_fp32, "peer-f32", t))
            ratio_rows.setdefault("bf16", []).append((best_fp32, "peer-default", t))
            ratio_rows.setdefault("bf16-ours", []).append(("ov-bf16", "peer-default", t))
            ratio_rows.setdefault("int8", []).append((best_int8, best_nncf, t))
            raw[f"{preset}/b{batch}"] = {k: v["p50_ms"] for k, v in t.items()}
            # targets
            if best_fp32 and "peer-f32" in t:
                r = t["peer-f32"]["p50_ms"] / fp32[best_fp32]
                sentence = ""
                if r < 1.0:
                    sentence = fp32_reason(built, t, best_fp32, r)
                targets.append(
                    (
                        f"{preset} b{batch}: trtpipe's best fp32 ({built[best_fp32][0]}) ≥ 1.0× OpenVINO at f32",
                        f"{r:.2f}×" + (f" — {sentence}" if sentence else ""),
                        r >= 1.0,
                    )
                )
            else:
                targets.append(
                    (f"{preset} b{batch}: trtpipe fp32 ≥ 1.0× OpenVINO at f32", "not measured", None)
                )
            if best_int8 and best_nncf:
                r = t[best_nncf]["p50_ms"] / gated[best_int8]
                gate_ok = keeps_gate(best_int8)
                gate_text = (
                    "our gate: pass"
                    if gate_ok
                    else (f"our gate not measured ({demo_why})" if gate_ok is None else "our gate: fail")
                )
                sentence = (
                    "" if r >= 1.0 else int8_reason(t, best_int8, best_nncf, nncf_text, ours, keeps_gate)
                )
                targets.append(
                    (
                        f"{preset} b{batch}: trtpipe's best gated int8 ({built[best_int8][0]}) ≥ 1.0× the faster NNCF int8 "
                        f"row ({built[best_nncf][0]}) at our gate",
                        f"{r:.2f}×, {gate_text}" + (f" — {sentence}" if sentence else ""),
                        r >= 1.0 and gate_ok is not False,
                    )
                )
            else:
                why = "no int8 row of ours keeps the gate" if not best_int8 else "NNCF not measured"
                targets.append(
                    (
                        f"{preset} b{batch}: trtpipe int8 ≥ 1.0× NNCF int8 at our gate",
                        why,
                        False if not best_int8 else None,
                    )
                )
        lines += [
            "",
            "| trtpipe speed ÷ peer speed (peer ms ÷ trtpipe ms; each side's faster row) | batch 1 | batch 8 |",
            "|---|---|---|",
        ]
        names = {
            "fp32": "OpenVINO on model.onnx at f32 vs trtpipe's best fp32",
            "bf16": f"OpenVINO on model.onnx at its default ({default}: not the same precision) vs trtpipe's best fp32",
            "int8": "the faster NNCF int8 row vs trtpipe's best int8 that keeps our gate",
            "bf16-ours": f"OpenVINO on model.onnx at its default ({default}) vs trtpipe's bf16 variant on ov",
        }
        for what, pairs in ratio_rows.items():
            cells = []
            for ours_key, peer_key, t in pairs:
                if ours_key and peer_key and ours_key in t and peer_key in t:
                    r = t[peer_key]["p50_ms"] / t[ours_key]["p50_ms"]
                    cells.append(f"{r:.2f}× ({built[ours_key][0].removeprefix('trtpipe ')})")
                else:
                    cells.append("not measured")
            lines.append(f"| {names[what]} | {' | '.join(cells)} |")
    return lines, targets, raw


def fp32_reason(built: dict, t: dict, best: str, r: float) -> str:
    peer = t["peer-f32"]
    noise = max(spread(t[best]["rounds"]), spread(peer["rounds"]))
    gap = 1 / r - 1
    if best == "ov-fp32":
        return (
            f"trtpipe's best here is its ov backend, the same OpenVINO CPU plugin on the same model.onnx at the same "
            f"settings: {gap:.0%} slower, against a round-to-round spread of {noise:.0%} in this run"
        )
    return (
        f"OpenVINO's f32 kernels are {gap:.0%} faster than ONNX Runtime's on this graph (round-to-round spread "
        f"{noise:.0%}), and trtpipe's ov backend ran at {t['ov-fp32']['p50_ms']:.2f} ms against the peer's "
        f"{peer['p50_ms']:.2f} ms"
        if "ov-fp32" in t
        else f"OpenVINO's f32 kernels are {gap:.0%} faster than ONNX Runtime's on this graph"
    )


def nncf_variant_text(bundle) -> str:
    """What the bundle's int8-nncf variant quantised, and how many weights our search kept float."""
    entry = bundle.variants.get("int8-nncf")
    if not entry:
        return "not made"
    r = entry["report"]
    return (
        f"{r['int8_weight_matmuls']} weight MatMuls and {r['int8_activation_matmuls']} activation × activation "
        f"MatMuls int8, {r['float_matmuls']} float ({len(r['fp32_nodes'])} kept float by our search, "
        f"{len(r['plans_tried'])} plan(s) tried)"
    )


def int8_reason(t: dict, ours: str, nncf: str, nncf_text: str, counts: dict, keeps_gate) -> str:
    gap = t[ours]["p50_ms"] / t[nncf]["p50_ms"] - 1
    gate = {True: "and keeps our gate", False: "but fails our gate", None: "(its gate not measured)"}[
        keeps_gate(nncf)
    ]
    return f"NNCF's int8 is {gap:.0%} faster {gate}: {nncf_text}; ours: {counts[ours]}"


# ---------------------------------------------------------------------------------------------- GPT-2


class LazyWorker:
    """One openvino-genai worker for the whole run, started by the first row that needs it (a failure to start
    is that row's reason, and every later genai row's)."""

    def __init__(self):
        self.worker, self.error = None, None

    def get(self):
        from trtpipe.benchmark.ov_peers import GenaiWorker

        if self.error:
            raise RuntimeError(self.error)
        if self.worker is None:
            try:
                self.worker = GenaiWorker()
            except Exception as exc:
                self.error = reason(exc)
                raise
        return self.worker

    def close(self):
        if self.worker is not None:
            self.worker.close()


GENAI_FORMATS = (("fp32", "fp32"), ("int8", "int8-wo"), ("int4", "int4"))
# trtpipe rows with prefill_backend="ov" (prompts on OpenVINO, decoding on ONNX Runtime in place), every variant:
# OpenVINO prefills the weight-only ones faster than ONNX Runtime's MatMulNBits, and fp32 by 1.1-1.2x on the Zen 4
# (bench/prefill_split.py)
SPLIT, SPLIT_VARIANTS = "ours+ov-prefill", ("fp32", "int8-wo", "int4")
# one request at a time on OpenVINO's paged engine (runtime/paged.py, f32 cache as the genai rows): a prompt is one
# call with only its last token's logits
PAGED = "ours-paged"
# openvino-genai's int4 with its activations quantized per weight group (128), as our ov backend compiles a
# weight-only variant (runtime/ov.py weight_group): the same CPU plugin setting, so the peer gets it too
GENAI_GROUP = 128
# Every round sends the same prompt again: with LLMPipeline's default prefix caching the second round would time a
# cache hit, not a prefill (measured: TTFT at prompt 512 fell from ~550 ms to ~15 ms). Ours caches no prefixes.
SCHEDULER = {"cache_size": 1, "enable_prefix_caching": False}


def genai_rows(bundle, lazy: LazyWorker, threads: int, kv_default: str, default: str, folders: dict) -> list:
    """openvino-genai's LLMPipeline rows, each made when the benchmark first needs it: every format at f32, then
    its int4 at OpenVINO's defaults and at our activation group."""
    from trtpipe.benchmark.ov_peers import GenaiOvDecoder, genai_export, genai_properties

    f32 = genai_properties(threads, "f32", "f32")
    specs = [
        (fmt, f"llm-{fmt}", f"{fmt} weights (f32 compute, f32 KV)", variant, f32)
        for fmt, variant in GENAI_FORMATS
    ]
    specs += [
        (
            "int4",
            "llm-int4-default",
            f"int4 weights, OpenVINO's defaults ({default} compute, {kv_default} KV)",
            "int4 (defaults)",
            genai_properties(threads, None, None),
        ),
        (
            "int4",
            "llm-int4-group",
            f"int4 weights, activations in groups of {GENAI_GROUP} (f32 compute, f32 KV)",
            f"int4 (group {GENAI_GROUP})",
            {**f32, "DYNAMIC_QUANTIZATION_GROUP_SIZE": GENAI_GROUP},
        ),
    ]

    def make(fmt, name, what, variant, properties):
        folders[fmt] = genai_export(bundle, fmt)
        return GenaiOvDecoder(
            lazy.get(),
            name,
            folders[fmt],
            f"openvino-genai LLMPipeline {what}",
            variant,
            properties,
            scheduler=SCHEDULER,
        )

    return [("ov-genai", lambda spec=spec: make(*spec)) for spec in specs]


def peer_variant(variant: str | None) -> str:
    """A genai row's weight variant without its settings: "int4 (defaults)" and "int4 (group 128)" are int4."""
    return (variant or "fp32").split(" (")[0]


def gpt2(threads: int, rounds: int) -> tuple[list[str], list, dict]:
    from trtpipe.benchmark.decode import (
        SETTLE_S,
        OursDecoder,
        PagedRow,
        floors,
        make_rows,
        prompt_ids,
        run_decode,
        weight_bytes_per_token,
    )
    from trtpipe.benchmark.floors import dram_read_bandwidth
    from trtpipe.benchmark.ov_peers import default_precision, first_divergence, ir_weight_bytes
    from trtpipe.runtime import Bundle
    from trtpipe.runtime.text import TextEncoder

    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    bundle = Bundle.load(path)
    default, kv_default = _ov_defaults(default_precision)
    lazy, folders = LazyWorker(), {}
    rows = make_rows(bundle, [v for _, v in GENAI_FORMATS], [], threads)
    rows += [  # every variant's prompts on OpenVINO, decoding on ONNX Runtime in place (prefill.py)
        (SPLIT, lambda v=v: OursDecoder(bundle, None if v == "fp32" else v, threads, prefill_backend="ov"))
        for v in SPLIT_VARIANTS
    ]
    rows += [
        (PAGED, lambda v=v: PagedRow(bundle, None if v == "fp32" else v, threads)) for v in SPLIT_VARIANTS
    ]
    rows += genai_rows(bundle, lazy, threads, kv_default, default, folders)
    try:
        results = run_decode(bundle, [32, 512], NEW_TOKENS, rows, rounds=rounds)
        # every row is fed the same prompt ids; would the genai tokenizer make them from the text too?
        encoder, tokenizer_check = TextEncoder(bundle), {}
        if lazy.worker is not None:
            for p in (32, 512):
                ids = prompt_ids(bundle, p)
                try:
                    got = lazy.worker.ask(op="tokenize", name="llm-fp32", text=encoder.decode(ids))["ids"]
                except Exception as exc:
                    tokenizer_check[p] = f"not checked ({reason(exc)})"
                    continue
                mine = encoder.encode_prompt(encoder.decode(ids))
                tokenizer_check[p] = (
                    "the same ids"
                    if got == ids
                    else f"{first_divergence(got, ids)} of {p} ids equal, then they differ ({len(got)} ids); our own "
                    f"tokenizer on that text: {'the same ids as genai' if mine == got else 'differs from genai too'}"
                    f" ({first_divergence(mine, ids)} of {p} equal to the prompt: the prompt is encoded sentence by "
                    "sentence, and re-encoding the joined text merges differently)"
                    if first_divergence(mine, ids) < p
                    else f"{first_divergence(got, ids)} of {p} ids equal, then they differ ({len(got)} ids); our "
                    "own tokenizer gives the prompt's ids back"
                )
    finally:
        lazy.close()
    bandwidth = dram_read_bandwidth(threads)
    files = {
        "fp32": "model.kv-inplace.onnx",
        "int8-wo": "model.int8-wo.kv-inplace.onnx",
        "int4": "model.int4.kv-inplace.onnx",
    }
    weights = {("ours", v): weight_bytes_per_token(bundle.path / f) for v, f in files.items()}
    weights.update({(SPLIT, v): weights[("ours", v)] for v in SPLIT_VARIANTS})  # it decodes on the same graph
    weights.update({(PAGED, v): weights[("ours", v)] for v in SPLIT_VARIANTS})  # the same weights on OpenVINO
    for fmt, variant in GENAI_FORMATS:
        if fmt in folders:
            weights[("ov-genai", variant)] = ir_weight_bytes(folders[fmt])
    ours_int4 = bundle.variants["int4"].get("report", {})
    lines = [
        "",
        f"**GPT-2 124M decoding** (random weights: speed only), batch 1, greedy, {NEW_TOKENS} new tokens, "
        f"{threads} threads, {rounds} interleaved rounds after a warm-up, each row after a {SETTLE_S} s pause (the "
        "threads of the row before asleep: trtpipe/benchmark/decode.py); every row gets the same prompt token ids. "
        "Every row is timed the same way: a clock at each token as the caller receives it (ours: the token "
        "stream; openvino-genai: its streamer, a `StreamerBase` whose `write` gets each token id). TTFT = first "
        "token (median over rounds); TPOT = token to token, p50 of every step of every round. openvino-genai runs "
        "optimum-intel's `optimum-cli export openvino --weight-format fp32|int8|int4` of the same checkpoint "
        "(its defaults: int8 per-channel symmetric; int4 asymmetric, group size 128, embeddings and head int8 — "
        f"our int4: block {ours_int4.get('block_size', '?')}, head {'int4' if ours_int4.get('lm_head') else 'fp32'}, "
        f"int8 compute (accuracy level {ours_int4.get('accuracy_level', 4)})), compiled with "
        f'`INFERENCE_PRECISION_HINT=f32`, `KV_CACHE_PRECISION=f32` unless a row says "defaults" '
        f"(on this CPU: {default} compute, {kv_default} KV cache); its default attention backend on the CPU (paged "
        "attention), with prefix caching turned off: every round sends the same prompt again, and a cache hit "
        "would time no prefill (measured: TTFT at prompt 512 fell from about 550 ms to 15 ms with it on). Weights "
        "read per token: ours, the initializers "
        "of the matrix ops; openvino-genai, its IR's weight file. Read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s, measured in the same run.",
        "",
        "| row | prompt | TTFT ms | TPOT p50 ms | tokens/s | weights read per token MiB | greedy tokens equal to the same side's fp32 (random weights) |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {}
    for r in results:
        by[(r.kind, r.variant or "fp32", r.prompt_len)] = r
    for p in (32, 512):
        for r in [x for x in results if x.prompt_len == p]:
            variant = r.variant or "fp32"
            if r.error:
                lines.append(f"| {r.label} | {p} | not measured ({r.error}) |||||")
                continue
            ref = by.get((r.kind, "fp32", p))
            same = by.get(("ours", variant, p))
            if r.kind in (SPLIT, PAGED):
                agree = (
                    f"{first_divergence(r.ids, same.ids)} of {len(same.ids)} equal to trtpipe {variant} on "
                    "ONNX Runtime alone"
                    if same is not None and same.ids and not same.error
                    else "not measured (its ONNX Runtime row did not run)"
                )
            elif variant == "fp32":
                if r.kind == "ov-genai" and ("ours", "fp32", p) in by and by[("ours", "fp32", p)].ids:
                    ours = by[("ours", "fp32", p)].ids
                    agree = (
                        f"reference; vs trtpipe fp32: {first_divergence(r.ids, ours)} of {len(ours)} equal"
                    )
                else:
                    agree = "reference"
            elif ref is not None and ref.ids and not ref.error:
                agree = f"{first_divergence(r.ids, ref.ids)} of {len(ref.ids)} before the first difference"
            else:
                agree = "not measured (its fp32 row did not run)"
            w = weights.get((r.kind, peer_variant(variant)))
            lines.append(
                f"| {r.label} | {p} | {r.ttft['p50_ms']:.1f} | {r.tpot['p50_ms']:.2f} | {r.tokens_per_s:.1f} | "
                f"{'not measured' if w is None else f'{w / 2**20:.0f}'} | {agree} |"
            )
    lines += [
        "",
        "Tokenizer: our prompt ids decoded to text and encoded by openvino-genai's tokenizer: "
        + "; ".join(f"prompt {p}: {v}" for p, v in tokenizer_check.items())
        + ". (Every row is fed the ids themselves, so the comparison does not depend on it.)"
        if tokenizer_check
        else "Tokenizer not checked (the openvino-genai worker did not run).",
        "",
        "| trtpipe speed ÷ peer speed (peer ms ÷ trtpipe ms) | prompt 32 TTFT | prompt 32 TPOT | prompt 512 TTFT | prompt 512 TPOT |",
        "|---|---|---|---|---|",
    ]
    targets = []

    def ratio_cells(ours_variant: str, peer_variant: str, kind: str = "ours") -> list[str]:
        """TTFT and TPOT ratios (peer ms ÷ ours) at prompts 32 and 512, or "not measured" where a row is missing."""
        cells = []
        for p in (32, 512):
            ours, peer = by.get((kind, ours_variant, p)), by.get(("ov-genai", peer_variant, p))
            if ours is None or peer is None or ours.error or peer.error:
                cells += ["not measured", "not measured"]
                continue
            cells += [
                f"{peer.ttft['p50_ms'] / ours.ttft['p50_ms']:.2f}×",
                f"{peer.tpot['p50_ms'] / ours.tpot['p50_ms']:.2f}×",
            ]
        return cells

    for fmt, variant in GENAI_FORMATS:
        lines.append(
            f"| openvino-genai {fmt} vs trtpipe {variant} | {' | '.join(ratio_cells(variant, variant))} |"
        )
    cells = ratio_cells("int4", "int4 (defaults)")
    lines.append(
        f"| openvino-genai int4 at OpenVINO's defaults ({default}, {kv_default} KV) vs trtpipe int4 | {' | '.join(cells)} |"
    )
    for fmt, variant in GENAI_FORMATS:
        if variant in SPLIT_VARIANTS:
            cells = ratio_cells(variant, variant, SPLIT)
            lines.append(
                f"| openvino-genai {fmt} vs trtpipe {variant}, OpenVINO prefill | {' | '.join(cells)} |"
            )
    cells = ratio_cells("int4", "int4 (defaults)", SPLIT)
    lines.append(
        f"| openvino-genai int4 at OpenVINO's defaults vs trtpipe int4, OpenVINO prefill | {' | '.join(cells)} |"
    )
    for fmt, variant in GENAI_FORMATS:
        cells = ratio_cells(variant, variant, PAGED)
        lines.append(
            f"| openvino-genai {fmt} vs trtpipe {variant}, OpenVINO's paged engine | {' | '.join(cells)} |"
        )
    for kind, how in (("ours", ""), (SPLIT, ", OpenVINO prefill"), (PAGED, ", OpenVINO's paged engine")):
        cells = ratio_cells("int4", f"int4 (group {GENAI_GROUP})", kind)
        lines.append(
            f"| openvino-genai int4, activations in groups of {GENAI_GROUP}, vs trtpipe int4{how} | "
            f"{' | '.join(cells)} |"
        )
    configs = [("ours", fmt, variant, "") for fmt, variant in GENAI_FORMATS] + [
        (SPLIT, fmt, variant, ", OpenVINO prefill")
        for fmt, variant in GENAI_FORMATS
        if variant in SPLIT_VARIANTS
    ]
    configs += [(PAGED, fmt, variant, ", OpenVINO's paged engine") for fmt, variant in GENAI_FORMATS]
    for kind, fmt, variant, how in configs:
        for p in (32, 512):
            ours, peer = by.get((kind, variant, p)), by.get(("ov-genai", variant, p))
            name = f"GPT-2 {variant}{how} prompt {p}: TPOT ≥ 1.0× openvino-genai {fmt}"
            if ours is None or peer is None or ours.error or peer.error:
                targets.append(
                    (name, f"not measured ({(peer.error if peer else None) or 'row missing'})", None)
                )
                continue
            r = peer.tpot["p50_ms"] / ours.tpot["p50_ms"]
            sentence = ""
            if r < 1.0:
                w_ours, w_peer = weights.get((kind, variant)), weights.get(("ov-genai", variant))
                sentence = (
                    f" — openvino-genai is {1 / r - 1:.0%} faster per token; it reads {w_peer / 2**20:.0f} MiB of "
                    f"weights per token against our {w_ours / 2**20:.0f} MiB (DRAM floors {w_peer / bandwidth * 1e3:.2f} "
                    f"vs {w_ours / bandwidth * 1e3:.2f} ms); we run at {w_ours / bandwidth * 1e3 / ours.tpot['p50_ms']:.0%} "
                    f"of our floor's speed, it at {w_peer / bandwidth * 1e3 / peer.tpot['p50_ms']:.0%} of its own"
                    if w_ours and w_peer
                    else f" — openvino-genai is {1 / r - 1:.0%} faster per token"
                )
            targets.append(
                (
                    name,
                    f"{r:.2f}× ({ours.tpot['p50_ms']:.2f} vs {peer.tpot['p50_ms']:.2f} ms){sentence}",
                    r >= 1.0,
                )
            )
    for kind, fmt, variant, how in configs:
        for p in (32, 512):
            ours = by.get((kind, variant, p))
            peers = [
                r for r in results if r.kind == "ov-genai" and not r.error and r.prompt_len == p
                and peer_variant(r.variant) == variant
            ]  # fmt: skip
            name = f"GPT-2 {variant}{how} prompt {p}: TTFT ≤ the fastest openvino-genai {fmt} row"
            if ours is None or ours.error or not peers:
                targets.append((name, "not measured", None))
                continue
            fastest = min(peers, key=lambda r: r.ttft["p50_ms"])
            ok = ours.ttft["p50_ms"] <= fastest.ttft["p50_ms"]
            flops = floors(bundle, files[variant], p, NEW_TOKENS, bandwidth, 1.0)["prefill_flops"]
            sentence = (
                ""
                if ok
                else f" — the first token of a {p}-token prompt ({flops / 1e9:.1f} GFLOP of prefill) takes us "
                f"{ours.ttft['p50_ms'] - fastest.ttft['p50_ms']:.1f} ms more "
                f"({ours.ttft['p50_ms'] / fastest.ttft['p50_ms']:.2f}×): {flops / ours.ttft['p50_ms'] / 1e6:.0f} "
                f"against {flops / fastest.ttft['p50_ms'] / 1e6:.0f} GFLOP/s"
            )
            targets.append(
                (
                    name,
                    f"{ours.ttft['p50_ms']:.1f} vs {fastest.ttft['p50_ms']:.1f} ms ({fastest.label}){sentence}",
                    ok,
                )
            )
    raw = {
        "gpt2": [
            {
                "label": r.label,
                "kind": r.kind,
                "variant": r.variant,
                "prompt": r.prompt_len,
                "error": r.error,
                "ttft_ms": r.ttft.get("p50_ms"),
                "tpot_ms": r.tpot.get("p50_ms"),
                "ids": r.ids,
            }
            for r in results
        ],  # fmt: skip
        "tokenizer": tokenizer_check,
        "bandwidth": bandwidth,
    }
    return lines, targets, raw


def _ov_defaults(default_precision) -> tuple[str, str]:
    try:
        import openvino

        kv = openvino.Core().get_property("CPU", "KV_CACHE_PRECISION")
        kv = kv.get_type_name() if hasattr(kv, "get_type_name") else str(kv)
    except Exception as exc:
        kv = f"unknown ({reason(exc)})"
    try:
        return default_precision(), kv
    except Exception as exc:
        return f"unknown ({reason(exc)})", kv


# ------------------------------------------------------------------------------------------ 8 streams


def batch_prompts(bundle, count: int, length: int) -> list[list[int]]:
    """`count` different real-text prompts, `length` token ids each (consecutive corpus sentences)."""
    from trtpipe import corpus
    from trtpipe.runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    prompts, ids = [], []
    for sentence in corpus.sentences("all"):
        ids += encoder.encode_prompt(sentence + " ")
        if len(ids) >= length:
            prompts.append(ids[:length])
            ids = []
            if len(prompts) == count:
                return prompts
    raise RuntimeError("the offline corpus is too short")


class OursBatch:
    def __init__(
        self,
        path,
        variant: str | None,
        threads: int,
        streams: int,
        kv_cache: str = "fp32",
        weights: str = "",
        fused: bool | None = None,
        prefill_backend: str | None = None,
        paged: bool = False,
    ):
        from trtpipe.runtime import BatchEngine

        self.engine = BatchEngine(
            path,
            variant=variant,
            threads=threads,
            slots=streams,
            kv_cache=kv_cache,
            fused=fused,
            prefill_backend=prefill_backend,
            **({"backend": "ov", "paged": True} if paged else {}),
        )
        step = ", the fused step" if self.engine.fused is not None else ""
        step = ", two passes: fused=False" if fused is False else step
        step += f", {prefill_backend} prefill" if prefill_backend else ""
        step += ", on OpenVINO's PagedAttention: backend='ov', paged=True" if paged else ""
        name = f"{variant or 'fp32'}{weights}"
        cache = (
            f"in-place {kv_cache}" if not paged else "paged fp32" if kv_cache == "fp32" else "OpenVINO's u8"
        )
        self.label = f"trtpipe BatchEngine {name} ({streams} slots, {cache} KV{step})"

    def batch(self, prompts, new_tokens):
        started = time.perf_counter()
        done = self.engine.generate(prompts, new_tokens, ignore_eos=True)
        return time.perf_counter() - started, [c.ids for c in done]


def block128_copy(path, scratch: str, block: int = 128):
    """A hard-linked copy of GPT-2 bundle `path` whose int4 is made at `block` (128: openvino-genai's int4 group
    size; its in-place, fused and int8-cache twins follow), `common.variant_copy`. Random weights: speed only."""
    from pathlib import Path

    from common import variant_copy

    return variant_copy(path, Path(scratch) / path.name, "int4", force=True, block_size=block)[0]


def batch8(threads: int, rounds: int, streams: int = 8, prompt: int = 32) -> tuple[list[str], list, dict]:
    from trtpipe.benchmark.decode import settle
    from trtpipe.benchmark.ov_peers import GenaiOvDecoder, genai_export, genai_properties
    from trtpipe.runtime import Bundle

    path = ensure_bundle("gpt2", "generate")
    ensure_variant(path, "int4")
    ensure_kv8(path, force=True)  # random weights: the gate is recorded, not met
    ensure_kv_fused(path)  # BatchEngine's default where a bundle has it: the fused step
    bundle = Bundle.load(path)
    prompts = batch_prompts(bundle, streams, prompt)
    lazy = LazyWorker()
    scheduler = {**SCHEDULER, "max_num_seqs": streams, "dynamic_split_fuse": True}
    scratch = tempfile.TemporaryDirectory()
    # the bundle's int4 block: 128 where optimize's default made it (bench/block_sizes.py)
    block = bundle.variants["int4"]["report"]["block_size"]
    try:
        block128 = path if block == 128 else block128_copy(path, scratch.name)
        block128_why = None
    except Exception as exc:
        block128, block128_why = None, reason(exc)

    def ours_block128(kv_cache, fused=None):
        def make():
            if block128 is None:
                raise RuntimeError(f"no block-128 int4: {block128_why}")
            return OursBatch(
                block128, "int4", threads, streams, kv_cache=kv_cache, weights=" block 128", fused=fused
            )

        return make

    def genai(fmt, pipeline, kv="f32"):
        def make():
            folder = genai_export(bundle, fmt)
            kind = (
                "LLMPipeline, one batch of 8"
                if pipeline == "llm"
                else "ContinuousBatchingPipeline, 8 requests"
            )
            return GenaiOvDecoder(
                lazy.get(),
                f"{pipeline}-{fmt}",
                folder,
                f"openvino-genai {kind}, {fmt} weights (f32 compute, {kv} KV)",
                "fp32" if fmt == "fp32" else "int4",
                genai_properties(threads, "f32", kv),
                pipeline=pipeline,
                scheduler=scheduler if pipeline == "cb" else SCHEDULER,
            )

        return make

    specs = [
        ("ours", "fp32", lambda: OursBatch(path, None, threads, streams)),
        ("ours", "int4", lambda: OursBatch(path, "int4", threads, streams)),
        ("peer", "fp32", genai("fp32", "llm")),
        ("peer", "int4", genai("int4", "llm")),
        ("peer", "fp32", genai("fp32", "cb")),
        ("peer", "int4", genai("int4", "cb")),
        # the compressed caches: ours int8 (optimize --precision kv8), openvino-genai's CPU default u8
        ("ours", "int4 kv8", lambda: OursBatch(path, "int4", threads, streams, kv_cache="int8")),
        ("peer", "int4 kv8", genai("int4", "llm", "u8")),
        ("peer", "int4 kv8", genai("int4", "cb", "u8")),
        # openvino-genai's int4 is group 128 (optimum-intel's default); ours at that block size too, where the
        # bundle's int4 is at another block (optimize's default is 128 since bench/block_sizes.py)
        *(
            [("ours", "int4 g128", ours_block128("fp32")), ("ours", "int4 g128 kv8", ours_block128("int8"))]
            if block != 128
            else []
        ),
        # prompts that arrive together admit twice as fast in two passes (docs/benchmarks.md#paired-rows)
        ("ours", "int4 g128 kv8 two passes", ours_block128("int8", fused=False)),
        # the prompts on OpenVINO (prefill_backend="ov", two passes: the fused step prefills on ONNX Runtime)
        (
            "ours",
            "int4 ov prefill",
            lambda: OursBatch(path, "int4", threads, streams, fused=False, prefill_backend="ov"),
        ),
        # the same on the int8 cache: OpenVINO's K/V quantized with the twin's scales (runtime/prefill.py)
        (
            "ours",
            "int4 kv8 ov prefill",
            lambda: OursBatch(
                path, "int4", threads, streams, kv_cache="int8", fused=False, prefill_backend="ov"
            ),
        ),
        # every step one call of OpenVINO's PagedAttention model of the bundle's interop graph (runtime/paged.py)
        ("ours", "fp32 paged", lambda: OursBatch(path, None, threads, streams, paged=True)),
        ("ours", "int4 paged", lambda: OursBatch(path, "int4", threads, streams, paged=True)),
        # the same on OpenVINO's u8 cache, keys by token (kv_cache="int8", gated by optimize --precision kv8)
        (
            "ours",
            "int4 kv8 paged",
            lambda: OursBatch(path, "int4", threads, streams, kv_cache="int8", paged=True),
        ),
    ]
    built = []
    for side, variant, make in specs:
        try:
            built.append((side, variant, make(), None))
        except Exception as exc:
            print(f"not measured: {side} {variant}: {reason(exc)}", flush=True)
            built.append((side, variant, None, reason(exc)))
    walls = {i: [] for i in range(len(built))}
    ids = {}
    errors = {}
    try:
        for round_index in range(rounds + 1):  # the first is the warm-up
            for i, (_, _, row, _) in enumerate(built):
                if row is None or i in errors:
                    continue
                settle()  # the last row's threads asleep first (trtpipe/benchmark/decode.py)
                try:
                    seconds, out = row.batch(prompts, NEW_TOKENS)
                except Exception as exc:
                    errors[i] = reason(exc)
                    continue
                if round_index:
                    walls[i].append(seconds)
                    ids[i] = out
    finally:
        lazy.close()
        scratch.cleanup()
    lines = [
        "",
        f"**{streams} different prompts at once** (GPT-2 124M, random weights: speed only): {streams} real-text "
        f"prompts of {prompt} tokens each (the same ids for every row), {NEW_TOKENS} new tokens each, greedy, "
        f"{threads} threads; one round = the whole batch, start to last token, each row after a 0.2 s pause; {rounds} interleaved rounds after "
        "a warm-up. tokens/s = new tokens of all streams ÷ the median round's wall time.",
        "",
        "| row | wall s (median) | tokens/s | tokens |",
        "|---|---|---|---|",
    ]
    speed = {}
    for i, (side, variant, row, why) in enumerate(built):
        label = row.label if row is not None else f"{side} {variant}"
        why = why or errors.get(i)
        if why or not walls[i]:
            lines.append(f"| {label} | not measured ({why or 'no round ran'}) |||")
            continue
        wall = float(np.median(walls[i]))
        count = sum(len(x) for x in ids[i])
        speed[i] = count / wall
        lines.append(f"| {label} | {wall:.2f} | {speed[i]:.1f} | {count} |")
    targets = []
    pairs = (
        "fp32",
        "int4",
        "int4 kv8",
        "int4 g128",
        "int4 g128 kv8",
        "int4 g128 kv8 two passes",
        "int4 ov prefill",
        "int4 kv8 ov prefill",
        "fp32 paged",
        "int4 paged",
        "int4 kv8 paged",
    )
    lines += [
        "",
        f"| trtpipe speed ÷ peer speed | fp32 | int4 (ours block {block}) | int4, 8-bit KV caches (ours int8, openvino-genai "
        "u8) | int4, both group 128 | int4, both group 128, 8-bit KV caches | the same, ours in two passes | int4 "
        "(f32 KV caches), ours in two passes with the OpenVINO prefill | int4, 8-bit KV caches, ours in two passes with "
        "the OpenVINO prefill | fp32, ours on OpenVINO's PagedAttention | int4 (f32 KV caches), ours on OpenVINO's "
        "PagedAttention | int4, 8-bit KV caches, ours on OpenVINO's PagedAttention (its u8, keys by token) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    best = {}
    for variant in pairs:  # every openvino-genai int4 row is group 128
        peer = variant.replace(" g128", "").replace(" two passes", "").replace(" ov prefill", "")
        peer = peer.replace(" paged", "")
        mine = variant if block != 128 or "two passes" in variant else variant.replace(" g128", "")
        ours = [i for i, b in enumerate(built) if b[0] == "ours" and b[1] == mine and i in speed]
        peers = [i for i, b in enumerate(built) if b[0] == "peer" and b[1] == peer and i in speed]
        best[variant] = (ours[0] if ours else None, max(peers, key=speed.get) if peers else None)

    def fastest(side: str) -> int | None:  # that side's fastest int4 row, whatever its cache
        measured = [i for i, b in enumerate(built) if b[0] == side and b[1].startswith("int4") and i in speed]
        return max(measured, key=speed.get) if measured else None

    best["int4 fastest"] = (fastest("ours"), fastest("peer"))
    cells = []
    for variant in pairs:
        o, p = best[variant]
        cells.append("not measured" if o is None or p is None else f"{speed[o] / speed[p]:.2f}×")
    lines.append(f"| BatchEngine vs the faster openvino-genai batch row | {' | '.join(cells)} |")
    for key, cache in (
        ("int4", "f32 KV caches"),
        ("int4 kv8", "8-bit KV caches: ours int8, theirs u8"),
        ("int4 g128 kv8", "both group 128, 8-bit KV caches"),
        ("int4 ov prefill", "f32 KV caches; ours in two passes, the prompts on OpenVINO"),
        ("int4 kv8 ov prefill", "8-bit KV caches; ours in two passes, the prompts on OpenVINO"),
        ("int4 paged", "f32 KV caches; ours on OpenVINO's PagedAttention, `paged=True`"),
        ("int4 kv8 paged", "8-bit KV caches; ours OpenVINO's u8 on its PagedAttention, `kv_cache='int8'`"),
        ("int4 fastest", "each side's fastest int4 row, whatever its cache"),
    ):
        o, p = best[key]
        name = f"{streams} streams int4 ({cache}): BatchEngine tokens/s ≥ 1.0× openvino-genai's batch of {streams}"
        if o is None or p is None:
            targets.append((name, "not measured", None))
            continue
        r = speed[o] / speed[p]
        stats = built[o][2].engine.stats
        share = stats["prefill_s"] / max(1e-9, stats["prefill_s"] + stats["decode_s"])
        step = stats["decode_s"] / max(1, stats["steps"]) * 1e3
        # a fused step's chunk is timed with its rows (decode_s): then say how many steps carried one
        prefill = (
            f"{share:.0%} of our engine time was prefill"
            if not stats["fused_steps"]
            else f"{stats['fused_steps']} of our {stats['steps']} steps carried a prompt chunk beside the rows"
        )
        ours_label = f" (ours: {built[o][2].label})" if key == "int4 fastest" else ""
        sentence = (
            ours_label
            if r >= 1.0
            else f"{ours_label} — {built[p][2].label} finishes a batch in {NEW_TOKENS * streams / speed[p]:.2f} s against our "
            f"{NEW_TOKENS * streams / speed[o]:.2f} s; {prefill}, and one step of our {streams} int4 rows took "
            f"{step:.1f} ms"
        )
        targets.append((name, f"{r:.2f}× ({speed[o]:.0f} vs {speed[p]:.0f} tokens/s){sentence}", r >= 1.0))
    raw = {"batch": {built[i][2].label: speed[i] for i in speed}}
    return lines, targets, raw


# ----------------------------------------------------------------------------------------------- main

PARTS = {"encoders": encoders, "gpt2": gpt2, "batch": batch8}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", choices=list(PARTS), action="append")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = parser.parse_args()
    parts = args.only or list(PARTS)
    REPORTS.mkdir(exist_ok=True)
    for (
        part
    ) in parts:  # one docs section per part, so `--only gpt2` regenerates its own tables and keeps the rest
        tick = time.perf_counter()
        load = os.getloadavg()[0]
        lines, targets, raw = PARTS[part](args.threads, args.rounds)
        took = time.perf_counter() - tick
        print(f"== {part}: {took:.0f}s", flush=True)
        lines += ["", *targets_table(targets)]
        lines += [
            "",
            f"This part took {took / 60:.1f} min, with the peers' exports and NNCF's quantisation cached from an "
            f"earlier run where present. {load_line(load)}",
        ]
        body = "\n".join(lines)
        print(body)
        (REPORTS / f"openvino-{part}.json").write_text(
            json.dumps({"targets": targets, "raw": raw, "seconds": took}, indent=2, default=str)
        )
        if not args.no_write:
            write_section(f"openvino-{part}", body)


if __name__ == "__main__":
    main()
