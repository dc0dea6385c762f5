"""The profile advisor: a token-length histogram of real text → min/opt/max for a TensorRT build.

TensorRT picks kernels for the profile's *opt* shape and must accept everything up to *max*, so opt should sit where
most traffic is (the p50–p75 bucket) and max just above the long tail (p99, rounded up to a multiple of 64, within
the model's positions). Inputs far above opt run on kernels tuned for opt; a large max costs activation memory
(attention grows with S²). The advice can be written to a profile file that `trtpipe build --profile-from` reads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .memory import GIB, estimate_memory
from .profiles import decoder_dims, encoder_dims, input_specs, materialize

BUCKET = 16  # histogram bucket and opt granularity (tokens)
MAX_ROUND = 64  # max is p99 rounded up to this


@dataclass
class Advice:
    bundle: str
    texts: int
    source: str
    percentiles: dict[str, int]
    histogram: list[tuple[int, int, int]]  # (from, to, count)
    over_limit: int
    profiles: list[dict]
    warnings: list[str] = field(default_factory=list)
    memory: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "bundle": self.bundle,
            "texts": self.texts,
            "source": self.source,
            "percentiles": self.percentiles,
            "histogram": [{"from": a, "to": b, "count": c} for a, b, c in self.histogram],
            "over_limit": self.over_limit,
            "profiles": self.profiles,
            "warnings": self.warnings,
            "memory": self.memory,
        }


def round_up(value: int, multiple: int) -> int:
    return max(multiple, -(-int(value) // multiple) * multiple)


def token_lengths(bundle: Bundle, texts: list[str]) -> np.ndarray:
    """Tokens per text as the runtime feeds them: with special tokens for encoders, bare prompts for GPT-2."""
    from ..runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise UserError("no text to measure: give a --texts file with one non-empty text per line")
    encodings = encoder.plain.encode_batch(texts, add_special_tokens=bundle.kind.special_tokens)
    return np.array([len(e.ids) for e in encodings], dtype=np.int64)


def histogram(lengths: np.ndarray, bucket: int = BUCKET) -> list[tuple[int, int, int]]:
    top = round_up(int(lengths.max()), bucket)
    edges = np.arange(0, top + bucket, bucket)
    counts, _ = np.histogram(lengths, bins=edges)
    return [(int(edges[i]) + 1, int(edges[i + 1]), int(c)) for i, c in enumerate(counts) if c]


def advise(
    bundle_path: Bundle | str,
    texts: list[str] | None = None,
    source: str | None = None,
    max_batch: int | None = None,
    opt_batch: int | None = None,
    variant: str | None = None,
) -> Advice:
    """Profiles from the length distribution of `texts` (default: the offline corpus's sentences)."""
    bundle = bundle_path if isinstance(bundle_path, Bundle) else Bundle.load(bundle_path)
    if texts is None:
        from .. import corpus

        texts = list(corpus.sentences("all"))
        source = source or f"trtpipe.corpus ({len(texts)} sentences of the Python documentation)"
    lengths = token_lengths(bundle, texts)
    limit = bundle.max_length
    p = {f"p{q}": int(np.ceil(np.percentile(lengths, q))) for q in (50, 75, 90, 99)}
    p["max"] = int(lengths.max())
    low_batch, default_opt, default_max = bundle.kind.profile_batch
    max_batch = max_batch or default_max
    opt_batch = min(opt_batch or default_opt, max_batch)
    if max_batch < 1 or opt_batch < 1:
        raise UserError("--max-batch and --opt-batch must be ≥ 1")
    opt = min(round_up(p["p75"], BUCKET), limit)
    opt = max(opt, min(round_up(p["p50"], BUCKET), limit))
    high = min(round_up(p["p99"], MAX_ROUND), limit)
    high = max(high, opt)
    specs = input_specs(bundle, variant)
    warnings: list[str] = []
    over = int((lengths > limit).sum())
    if over:
        warnings.append(
            f"{over} of {len(lengths)} texts ({100 * over / len(lengths):.1f} %) exceed the model's {limit} tokens: "
            "they will be refused unless truncated (--truncate)"
        )
    above = int(((lengths > high) & (lengths <= limit)).sum())
    if above:
        warnings.append(
            f"{above} texts ({100 * above / len(lengths):.1f} %) are longer than max {high}: the engine refuses them; "
            f"split them, or raise max (costly: see memory)"
        )
    if high > 4 * opt:
        warnings.append(
            f"max {high} is more than 4× opt {opt}: long inputs run on kernels tuned for {opt} tokens; if long inputs "
            "matter, build a second engine for them"
        )
    if bundle.is_decoder:
        prefill, decode = decoder_dims(
            bundle, (low_batch, opt_batch, max_batch), (1, opt, high), (2, min(limit, 2 * opt), limit)
        )
        profiles = [materialize(specs, prefill, "prefill"), materialize(specs, decode, "decode")]
    else:
        dims = encoder_dims(bundle, (low_batch, opt_batch, max_batch), (1, opt, high))
        profiles = [materialize(specs, dims, "default")]
    estimate = estimate_memory(bundle, variant or "fp32", profiles)
    heads = int(bundle.model.get("num_heads") or 12)
    scores = 2 * max_batch * heads * high * high * estimate.dtype_bytes
    if scores > GIB:
        warnings.append(
            f"attention at batch {max_batch} × {high} tokens needs {scores / GIB:.1f} GiB of scores (grows with S²); "
            "lower --max-batch or the max length"
        )
    if estimate.outputs > GIB:
        warnings.append(
            f"outputs at the maximum take {estimate.outputs / GIB:.1f} GiB (e.g. per-token vocabulary logits); "
            "lower --max-batch"
        )
    return Advice(
        bundle=str(bundle.path),
        texts=len(lengths),
        source=source or "texts",
        percentiles=p,
        histogram=histogram(lengths),
        over_limit=over,
        profiles=profiles,
        warnings=warnings,
        memory=estimate.to_dict(),
    )
