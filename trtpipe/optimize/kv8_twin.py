"""int8 KV cache twins (`<precision>.kv8-inplace`) of GPT-2's in-place KV variants: `trtpipe optimize --precision kv8`.

Each twin is `kv_int8.rewrite_kv_int8` of an in-place variant: the same weights, the cache kept in int8 with scales
calibrated per layer, head and channel on training text, joined into windows as long as the model's positions, run
through that variant (`calibrate`). It is lossy, so it
passes the LM gate before it is written: next-token agreement with the fp32 graph on held-out text, teacher-forced
through the runtime's in-place loop (`gate.evaluate`, ≥ 0.97), as every lossy variant does, and also, up to 512 tokens deep, next-token agreement
with the same weights on a float cache (`long_agreement`, ≥ 0.97: short gate texts never fill the cache). Its
short-text agreement with those weights is recorded beside it (what the cache alone costs). A twin records its source's sha256; a
rebuilt source leaves it stale, and the runtime then refuses it in one line that names this command. Where the
bundle has the fused step (`kv-fused`), each twin gets its fused twin too (`<precision>.kv8-fused`).
With openvino installed, OpenVINO's u8 cache on the paged engine is gated on the same weights too, and recorded on
the twin (`paged_u8.py`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx

from ..console import info, status, warn
from ..export import graph
from ..runtime.bundle import Bundle
from ..runtime.decoder import DecoderRunner
from ..runtime.errors import CheckFailed, UserError
from ..runtime.ort import OrtSession
from ..runtime.store import bundle_transaction
from ..runtime.text import TextEncoder
from . import gate
from .fused_twin import checked_twin, twin_entry
from .kv_int8 import rewrite_kv_int8, scales_from_absmax
from .paged_u8 import paged_u8_gate

CALIBRATION_TEXTS, CALIBRATION_WINDOWS = 256, 8
LONG_WINDOW, LONG_STEPS = 512, 32  # the long-context check: the last 32 positions of 512-token windows


def windows(bundle: Bundle, texts: list[str], length: int, count: int) -> list[list[int]]:
    """Up to `count` windows of `length` token ids cut from `texts` joined: GPT-2's K and V depend on the position, so
    calibration and the long-context check must reach the positions a long prompt does (single sentences stop near
    100 tokens)."""
    encoder = TextEncoder(bundle)
    ids = [t for text in texts for t in encoder.encode_prompt(text + " ")]
    cut = [ids[i : i + length] for i in range(0, len(ids), length)][:count]
    return [w for w in cut if w] or [ids]


def kv8_name(inplace: str) -> str:
    """`kv-inplace` → `kv8-inplace`, `int4.kv-inplace` → `int4.kv8-inplace`."""
    return inplace.removesuffix("kv-inplace") + "kv8-inplace"


def calibrate(bundle: Bundle, inplace_path: Path, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-layer (k, v) scales [1, H, 1, D]: the largest |K| and |V| each channel reached over `texts`, joined into
    windows as long as the model's positions and prefilled through the in-place graph at `inplace_path`."""
    runner = DecoderRunner(bundle, OrtSession(inplace_path, specs=None), inplace=True)
    absmax = np.zeros((2 * runner.layers, runner.heads, runner.head_dim), np.float32)
    for ids in windows(bundle, texts, bundle.limits["max_positions"], CALIBRATION_WINDOWS):
        if not ids:
            continue
        cache = runner.new_cache(1, len(ids))
        runner.prefill([ids], cache, 0)
        for index in range(2 * runner.layers):
            written = cache.view(0, index, 0, 1, 0)[0, :, : len(ids)]  # [H, tokens, D]
            np.maximum(absmax[index], np.abs(written).max(axis=1), out=absmax[index])
    if not absmax.any():
        raise UserError("no calibration text gave a token; pass --calibration FILE with some text")
    return [
        (scales_from_absmax(absmax[2 * i]), scales_from_absmax(absmax[2 * i + 1]))
        for i in range(runner.layers)
    ]


def long_windows(bundle: Bundle, texts: list[str]) -> tuple[list[list[int]], int]:
    """The long-context check's two held-out windows (up to LONG_WINDOW tokens) and how many last positions of
    each it compares (LONG_STEPS, at most half a window)."""
    length = min(LONG_WINDOW, bundle.limits["max_positions"])
    return windows(bundle, texts, length, 2), min(LONG_STEPS, length // 2)


def long_agreement(bundle: Bundle, source_path: Path, candidate_path: Path, texts: list[str]) -> float:
    """Next-token top-1 agreement of the int8-cache graph with its float-cache source over the last LONG_STEPS
    positions of two long held-out windows (the rest prefilled, then one teacher-forced token a step), where the
    cache holds hundreds of quantised rows: the positions a short gate text never reaches."""
    long, steps = long_windows(bundle, texts)
    runners = [
        DecoderRunner(bundle, OrtSession(p, specs=None), inplace=True) for p in (source_path, candidate_path)
    ]
    agree = total = 0
    for ids in long:
        if len(ids) <= steps:
            continue
        tops = []
        for runner in runners:
            cache = runner.new_cache(1, len(ids))
            logits, _ = runner.prefill([ids[:-steps]], cache, 0)
            lengths, rows = np.array([len(ids) - steps]), [int(logits[0].argmax())]
            for token in ids[-steps:-1]:
                logits, _ = runner.decode(np.array([token]), lengths, cache, None)
                lengths += 1
                rows.append(int(logits[0].argmax()))
            tops.append(np.array(rows))
        agree += int((tops[0] == tops[1]).sum())
        total += len(tops[0])
    return agree / max(total, 1)


def _int8_specs(specs: list[dict]) -> list[dict]:
    kv = ("past_key_values.", "present.")
    return [{**s, "dtype": "int8"} if s["name"].startswith(kv) else s for s in specs]


def kv8_twin(
    bundle: Bundle, inplace: str, stage, calibration: list[str], held_out: list[str], force: bool, tools
):
    """Write (staged) and gate the int8-cache twin of in-place variant `inplace`; records its manifest entry in
    `bundle` (the transaction's) and returns (name, entry, graph, staged path). CheckFailed when the gate fails
    (nothing is kept), unless `force` (then the failure is recorded)."""
    source = bundle.variants[inplace]
    source_path = bundle.model_path(inplace)
    model = rewrite_kv_int8(onnx.load(str(source_path)), calibrate(bundle, source_path, calibration))
    name = kv8_name(inplace)
    target = bundle.path / f"model.{name}.onnx"
    tmp = stage(target)
    graph.save_onnx(model, tmp)
    specs = _int8_specs(source["inputs"])
    result = gate.evaluate(bundle, tmp, "kv8", held_out, specs)
    weights = source.get("precision", "fp32")  # the same weights with a float cache (the standard graph)
    alone = result.metrics["next_token_top1"]  # fp32 weights: that is the gate's own comparison
    if weights != "fp32":
        same = gate.decoder_metrics(bundle, bundle.model_path(weights), tmp, held_out, specs)
        alone = same["next_token_top1"]
    # hundreds of cached rows deep, against the same weights on a float cache: what the cache alone costs there
    result.metrics["next_token_top1_long"] = long_agreement(bundle, source_path, tmp, held_out)
    result.thresholds["next_token_top1_long"] = (">=", 0.97)
    if not result.passed and not force:
        tmp.unlink()  # nothing of it is kept
        raise CheckFailed(
            f"{name}: the int8 KV cache fails the LM gate ({'; '.join(result.failures())}; "
            f"{alone:.4f} against {weights} alone); nothing written — keep the float cache, or pass --force"
        )
    entry = bundle.manifest["variants"][name] = twin_entry(
        target,
        tmp,
        inplace,
        source,
        tools,
        kv="inplace",
        kv_cache="int8",
        inputs=specs,
        outputs=_int8_specs(source["outputs"]),
        gate={**result.to_dict(forced=force), "next_token_top1_vs_source": alone, "against": "fp32"},
        calibration={
            "texts": len(calibration),
            "windows": f"up to {CALIBRATION_WINDOWS} of {bundle.limits['max_positions']} tokens",
            "scales": "max |x| per channel",
        },
        parity={},
    )
    return name, entry, model, tmp


def _say_paged(entry: dict) -> None:
    record, weights = entry["paged_u8"], entry["precision"]
    summary = ", ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items() if v is not None)
    if record["verdict"] == "pass":
        info(f"[green]OpenVINO's u8 paged cache[/] on {weights}: {summary} against its f32 cache")
    else:
        forced = " (forced: the runtime takes it)" if record["forced"] else "; the runtime refuses it"
        warn(
            f"OpenVINO's u8 paged cache on {weights} fails the LM gate ({'; '.join(record['failures'])}){forced}"
        )


def add_kv8(
    bundle_path: str | Path,
    overwrite: bool,
    force: bool,
    calibration: list[str],
    held_out: list[str],
    tools: dict,
    only: str | None = None,
) -> dict:
    """`optimize --precision kv8`: the int8-cache twin of every in-place variant the bundle has, or of `only` (and
    its fused twin where the bundle has `kv-fused`). Returns the manifest entry of kv8-inplace (or of `only`'s)."""
    bundle = Bundle.load(bundle_path)
    if not bundle.is_decoder or "kv-inplace" not in bundle.variants:
        raise UserError(
            f"kv8 is an int8 KV cache for a GPT-2 bundle's in-place KV variants; {bundle.path} has none "
            "(export a GPT-2 bundle with `trtpipe export`)"
        )
    if "kv8-inplace" in bundle.variants and not overwrite and only is None:
        raise UserError(f"{bundle.path} already has the kv8-inplace variant; pass --overwrite to rebuild it")
    fused = "kv-fused" in bundle.variants
    every = [n for n in bundle.variants if n == "kv-inplace" or n.endswith(".kv-inplace")]
    refused = []  # each twin is gated on its own: one that fails leaves the others written
    paged_gate = (
        importlib.util.find_spec("openvino") is not None
    )  # then OpenVINO's u8 cache too (`paged_u8.py`)
    long, steps = long_windows(bundle, held_out) if paged_gate else ([], 0)
    with bundle_transaction(bundle.path) as (locked, stage):
        for inplace in [only] if only else every:
            try:
                with status(f"{inplace} → int8 KV cache: calibrating on {len(calibration)} texts, gating"):
                    name, entry, model, path = kv8_twin(
                        locked, inplace, stage, calibration, held_out, force, tools
                    )
            except CheckFailed as exc:
                refused.append(str(exc))
                continue
            if paged_gate:  # the same weights on OpenVINO's paged engine, u8 cache against f32
                weights = entry["precision"]
                try:
                    with status(f"{weights} → OpenVINO's u8 paged cache: gating against its f32 cache"):
                        entry["paged_u8"] = paged_u8_gate(locked, weights, held_out, long, steps, force)
                    _say_paged(entry)
                except UserError as exc:  # no paged model of it: the twin stands, the u8 cache stays refused
                    warn(f"OpenVINO's u8 paged cache on {weights} not gated: {exc}")
            metrics = entry["gate"]["metrics"]
            info(
                f"[green]{entry['file']}[/] from {inplace}: next-token agreement {metrics['next_token_top1']:.4f} "
                f"with fp32 ({entry['gate']['next_token_top1_vs_source']:.4f} with {entry['precision']}; "
                f"{metrics['next_token_top1_long']:.4f} deep in long windows)"
            )
            if fused:
                with status(f"{name} → fused step graph, checked against two passes"):
                    twin = checked_twin(locked, name, {**entry, "path": path}, model, stage, tools)
                if twin is not None:
                    info(f"[green]{twin['file']}[/] from {name}: one pass = two passes")
    if refused:
        raise CheckFailed("; ".join(refused))
    return Bundle.load(bundle_path).variants[kv8_name(only or "kv-inplace")]


def refresh_kv8(
    bundle_path: Path, inplace: str, calibration: list[str], held_out: list[str], tools: dict
) -> None:
    """After `optimize` rebuilt in-place variant `inplace`: its int8-cache twin, where the bundle has one, is
    recalibrated and gated again (forced only if the old one was). One that fails its gate now stays stale, which the
    runtime refuses in one line, and a warning says so."""
    entry = Bundle.load(bundle_path).variants.get(kv8_name(inplace))
    if entry is None:
        return
    try:
        add_kv8(
            bundle_path, True, bool(entry["gate"].get("forced")), calibration, held_out, tools, only=inplace
        )
    except CheckFailed as exc:
        warn(f"{exc}; the old {kv8_name(inplace)} is left stale (the runtime refuses it)")
