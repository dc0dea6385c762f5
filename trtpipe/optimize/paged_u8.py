"""OpenVINO's u8 KV cache on the paged engine, gated (`optimize --precision kv8`, with openvino installed).

`BatchEngine(..., backend="ov", paged=True, kv_cache="int8")` runs OpenVINO's 8-bit cache, keys and values quantised by
token, each token's row with its own scale and zero point (`runtime.paged.PagedDecoder`; openvino-genai's CPU
default is u8 too, its keys by channel). It is a
quarter of the f32 cache's bytes, and the attention that reads it is the larger part of a step at long contexts
(docs/benchmarks.md#paged-step). It is lossy, so `optimize --precision kv8` gates it beside the bundle's own int8
twins and records the verdict on the kv8 twin of the same weights (`paged_u8`), which the runtime requires
(`runtime.paged.u8_gate`). The gate is the kv8 twins' pair: next-token top-1 agreement with the same weights on the
paged f32 cache, teacher-forced along the held-out texts (≥ 0.97, every text a row of one call a step), and over the
last positions of long windows (≥ 0.97), where the cache holds hundreds of quantised rows.
"""

from __future__ import annotations

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.text import TextEncoder
from .gate import GateResult

THRESHOLD = 0.97


def _tops(decoder, rows: list[list[int]], prefix: int = 0) -> list[np.ndarray]:
    """Each row's argmax after every position from `prefix` on (the first `prefix` tokens prefilled in one call),
    teacher-forced one token a step, every row in one call a step."""
    cache = decoder.new_cache(len(rows), max(len(r) for r in rows))
    tops = [[] for _ in rows]
    if prefix:
        logits = np.empty((len(rows), decoder.vocab), np.float32)
        decoder.prefill_rows([(r[:prefix], i, 0) for i, r in enumerate(rows)], cache, logits)
        for i in range(len(rows)):
            tops[i].append(int(logits[i].argmax()))
    for position in range(prefix, max(len(r) for r in rows) - 1):
        live = [i for i, r in enumerate(rows) if position < len(r) - 1]
        logits = np.empty((len(live), decoder.vocab), np.float32)
        decoder.prefill_rows([([rows[i][position]], i, position) for i in live], cache, logits)
        for index, i in enumerate(live):
            tops[i].append(int(logits[index].argmax()))
    return [np.array(t) for t in tops]


def _agreement(decoders, rows: list[list[int]], prefix: int = 0) -> float:
    want, got = (_tops(d, rows, prefix) for d in decoders)
    total = sum(len(w) for w in want)
    return sum(int((w == g).sum()) for w, g in zip(want, got)) / max(total, 1)


def paged_u8_gate(
    bundle: Bundle, weights: str, held_out: list[str], long: list[list[int]], steps: int, force: bool
) -> dict:
    """The `paged_u8` record of weights `weights`: its gate, u8 cache against f32 cache, on the held-out texts and
    over the last `steps` positions of the `long` windows (`kv8_twin.windows`)."""
    from ..runtime.paged import PagedDecoder

    variant = None if weights == "fp32" else weights
    decoders = [PagedDecoder(bundle, variant, cache=cache) for cache in ("f32", "u8")]
    encoder = TextEncoder(bundle)
    positions = bundle.limits["max_positions"]
    rows = [ids[:positions] for ids in (encoder.encode_prompt(t) for t in held_out) if len(ids) > 1]
    long = [w for w in long if len(w) > steps]
    result = GateResult("paged-u8", samples=len(rows), texts=f"{len(rows)} held-out texts")
    result.metrics["next_token_top1"] = _agreement(decoders, rows)
    result.thresholds = {"next_token_top1": (">=", THRESHOLD)}
    if long:
        result.metrics["next_token_top1_long"] = _agreement(decoders, long, min(len(w) for w in long) - steps)
        result.thresholds["next_token_top1_long"] = (">=", THRESHOLD)
    return {**result.to_dict(forced=force), "failures": result.failures(), "against": f"{weights}, f32 cache"}
