"""Fused step twins (`<precision>.kv-fused`) of GPT-2's in-place KV variants: `trtpipe optimize --precision kv-fused`.

Each twin is `kv_fused.rewrite_kv_fused` of an in-place variant, the same weights (no re-quantisation), checked
before it is written: one fused step (`runtime/fused.py`) must give the logits and write the K/V that a decode step
and a prompt chunk give as two passes. BatchEngine runs a bundle's current twin where a step has both; a twin
records the sha256 of its source, so a rebuilt in-place variant leaves it stale (and `optimize` rebuilds the twin of
a precision it rebuilds, once the bundle has `kv-fused`).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from ..console import info, status, warn
from ..export import graph
from ..runtime.bundle import Bundle
from ..runtime.decoder import DecoderRunner
from ..runtime.errors import CheckFailed, UserError
from ..runtime.fused import FusedStep
from ..runtime.ort import OrtSession
from ..runtime.store import bundle_transaction, file_hashes
from .kv_fused import rewrite_kv_fused

# fp32 measured bit-equal; the quantised graphs quantise activations per row (int8) or per block of a row (int4,
# int8-wo), so a row's numbers do not depend on the rows packed with it either: what is left is summation order
ATOL = 1e-3


def two_passes(runner, cache, tokens, lengths, chunk: list[int], past: int, row: int) -> np.ndarray:
    """BatchEngine's step without the fused graph: a decode step over rows [0, R) on the in-place `runner`, then
    `chunk` after `past` cached tokens in `row`; the logits of both, [R + 1, V] (what one fused step must give)."""
    step, _ = runner.decode(tokens, lengths, cache, None)
    last = np.empty((1, runner.vocab), np.float32)
    runner.prefill_row(chunk, cache, row, past, last)
    return np.concatenate([step[: len(tokens)], last])


def fused_agreement(bundle: Bundle, inplace_path: Path, fused_path: Path, seed: int = 0) -> dict:
    """One fused step against the two passes on random cached K/V: 3 decoding rows and a chunk of 7 tokens in row 4
    (max abs difference of logits and of the K/V written, and whether every row's top-1 token agrees)."""
    runner = DecoderRunner(bundle, OrtSession(inplace_path, specs=None), inplace=True)
    fused = FusedStep(bundle, OrtSession(fused_path, specs=None))
    rng = np.random.default_rng(seed)
    capacity = min(64, bundle.limits["max_positions"])
    caches = [runner.new_cache(5, capacity) for _ in range(2)]
    for buffers in zip(*(c.buffers[0] for c in caches)):  # the same cached K/V in both
        if buffers[0].dtype == np.int8:  # a kv8 twin's cache
            buffers[0][:] = rng.integers(-127, 128, buffers[0].size)
        else:
            buffers[0][:] = rng.standard_normal(buffers[0].size).astype(np.float32)
        buffers[1][:] = buffers[0]
    tokens = rng.integers(0, runner.vocab, 3)
    lengths = np.array([5, capacity // 2, 2])
    chunk, past = [int(t) for t in rng.integers(0, runner.vocab, 7)], 6
    want = two_passes(runner, caches[0], tokens, lengths, chunk, past, 4)
    got = fused.run(caches[1], tokens, lengths, chunk, past, 4)
    kv = max(
        float(np.abs(a.astype(np.float32) - b).max())
        for a, b in zip(caches[0].buffers[0], caches[1].buffers[0])
    )
    logits = float(np.abs(want - got).max())
    top1 = bool((want.argmax(-1) == got.argmax(-1)).all())
    return {
        "max_abs_logits": logits,
        "max_abs_kv": kv,
        "top1": top1,
        "atol": ATOL,
        "verdict": "pass" if max(logits, kv) <= ATOL and top1 else "fail",
    }


def kv_fused_twin(bundle: Bundle, inplace: str, source: dict, model: onnx.ModelProto, stage, tools) -> dict:
    """Write (staged) and check the fused twin of in-place variant `inplace`: `source` is its manifest entry and
    "path" (its file, staged or in place), `model` its graph. Records the twin's manifest entry in `bundle` (the
    transaction's) and returns it; CheckFailed when it disagrees with the two passes (then nothing is kept)."""
    dims = bundle.model
    fused = rewrite_kv_fused(model, dims["num_layers"], dims["num_heads"], dims["head_dim"])
    # kv-inplace → kv-fused, int4.kv8-inplace → int4.kv8-fused
    name = inplace.removesuffix("-inplace") + "-fused"
    target = bundle.path / f"model.{name}.onnx"
    tmp = stage(target)
    graph.save_onnx(fused, tmp)
    agreement = fused_agreement(bundle, source["path"], tmp)
    if agreement["verdict"] != "pass":
        tmp.unlink()  # nothing of it is kept
        raise CheckFailed(
            f"{name}: one fused step disagrees with a decode step and a chunk (max abs logits "
            f"{agreement['max_abs_logits']:.2e}, K/V {agreement['max_abs_kv']:.2e}, atol {ATOL}, top-1 "
            f"{'equal' if agreement['top1'] else 'differs'}): its kernels round a row differently beside other rows "
            "(as MatMulNBits at --block-size 128 did before pair_rows.py); not written, BatchEngine runs it in two passes"
        )
    entry = bundle.manifest["variants"][name] = twin_entry(
        target,
        tmp,
        inplace,
        source,
        tools,
        kv="fused",
        **({"kv_cache": source["kv_cache"]} if "kv_cache" in source else {}),  # a kv8 twin's int8
        parity={"ort-cpu": {**agreement, "against": f"{inplace}: a decode step, then a prompt chunk"}},
    )
    return entry


def twin_entry(target: Path, tmp: Path, made_from: str, source: dict, tools: dict, **fields) -> dict:
    """The manifest entry of a twin staged at `tmp` for `target`, made from variant `made_from` (`source`, its
    entry): its file, size and sha256, its source's sha256 (a rebuilt source leaves it stale), the source's precision
    and CPU needs (s8 int8 weights: VNNI), and `fields`."""
    return {
        "file": target.name,
        "sha256": {target.name: file_hashes(tmp.parent, [tmp.name])[tmp.name]},
        "bytes": tmp.stat().st_size,
        "made_from": made_from,
        "source_sha256": source["sha256"],
        "precision": source.get("precision", "fp32"),
        "ort_only": True,
        **fields,
        "tools": tools,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **({"cpu_needs": source["cpu_needs"]} if "cpu_needs" in source else {}),
    }


def refresh_fused(
    bundle: Bundle, inplace: str, entry: dict, model: onnx.ModelProto, path: Path, stage
) -> None:
    """After `optimize` (re)wrote in-place variant `inplace` (`entry`, its graph `model`, staged at `path`): where the
    bundle serves with the fused step (it has kv-fused), its twin is rebuilt too, so it never goes stale."""
    if "kv-fused" not in bundle.variants:
        return
    checked_twin(bundle, inplace, {**entry, "path": path}, model, stage, entry["tools"])


def checked_twin(
    bundle: Bundle, inplace: str, source: dict, model: onnx.ModelProto, stage, tools
) -> dict | None:
    """`kv_fused_twin`, or None with a warning where the twin fails its check: the variant then serves in two passes
    (an old twin, if any, is left stale, and a stale twin is never used unasked)."""
    try:
        return kv_fused_twin(bundle, inplace, source, model, stage, tools)
    except CheckFailed as exc:
        warn(str(exc))
        return None


def add_kv_fused(bundle_path: str | Path, overwrite: bool, tools: dict) -> dict:
    """`optimize --precision kv-fused`: the fused twin of every in-place variant the bundle has. Returns kv-fused's
    manifest entry."""
    bundle = Bundle.load(bundle_path)
    if not bundle.is_decoder or "kv-inplace" not in bundle.variants:
        raise UserError(
            f"kv-fused is the fused step graph of a GPT-2 bundle's in-place KV variants; {bundle.path} has none "
            "(export a GPT-2 bundle with `trtpipe export`)"
        )
    if "kv-fused" in bundle.variants and not overwrite:
        raise UserError(f"{bundle.path} already has the kv-fused variant; pass --overwrite to rebuild it")
    with bundle_transaction(bundle.path) as (locked, stage):
        for inplace in [n for n in locked.variants if n.endswith(("kv-inplace", "kv8-inplace"))]:
            path = locked.model_path(inplace)
            source = {**locked.variants[inplace], "path": path}
            with status(f"{inplace} → fused step graph, checked against two passes"):
                entry = checked_twin(locked, inplace, source, onnx.load(str(path)), stage, tools)
            if entry is None:
                continue
            info(
                f"[green]{entry['file']}[/] ({entry['bytes'] / 2**20:.1f} MiB) from {inplace}: one pass = two "
                f"passes within {ATOL} (max abs logits {entry['parity']['ort-cpu']['max_abs_logits']:.1e})"
            )
    return Bundle.load(bundle_path).variants["kv-fused"]
