"""Level 1 of parity (tensors): every output of a backend against the reference on real tokenized text — encoder
batches (some as sentence pairs), and for GPT-2 a left-padded prefill plus the decode step after it."""

from __future__ import annotations

import time

import numpy as np

from .. import corpus
from ..runtime import kv
from ..runtime.bundle import Bundle
from .compare import TOLERANCES, ParityReport, compare_arrays


def parity_texts(n: int = 16) -> list[str]:
    return corpus.sample(n, split="heldout")


def encoder_feeds(bundle: Bundle, n: int = 16, batch: int = 4, max_tokens: int = 128) -> list[dict]:
    """Batches of real held-out sentences (some as pairs) tokenized with the bundle's own tokenizer."""
    from ..runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    texts = parity_texts(n)
    limit = min(max_tokens, bundle.max_length)
    feeds = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        pairs = None
        if bundle.task in ("classify", "qa") and (start // batch) % 2 == 1:
            pairs = list(reversed(chunk))
        encodings = encoder.encode(chunk, pairs, truncate=True, max_length=limit, quiet=True)
        feeds.append(encoder.collate(encodings).feeds)
    return feeds


def decoder_prefill_feeds(
    bundle: Bundle, n: int = 8, batch: int = 4, max_tokens: int = 48, texts: list[str] | None = None
) -> list[dict]:
    """Left-padded batches of real prompts with an empty past (prefill)."""
    from ..runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    model = bundle.model
    heads, dim, layers = model["num_heads"], model["head_dim"], model["num_layers"]
    pad = int(bundle.manifest["tokenizer"].get("pad_id", 0))
    texts = texts if texts is not None else parity_texts(n)
    feeds = []
    for start in range(0, len(texts), batch):
        ids = [encoder.encode_prompt(t)[:max_tokens] for t in texts[start : start + batch]]
        feeds.append({**kv.left_padded(ids, pad), **kv.empty_past(layers, heads, dim, len(ids))})
    return feeds


def decode_step_feeds(prefill: dict, outputs: dict, layers: int) -> dict:
    """The next step after `prefill`: greedy token, past = the reference's presents, mask and position advanced."""
    next_ids = outputs["logits"][:, -1, :].argmax(-1).astype(np.int64)[:, None]
    mask = np.concatenate([prefill["attention_mask"], np.ones((len(next_ids), 1), np.int64)], axis=1)
    feed = {
        "input_ids": next_ids,
        "attention_mask": mask,
        "position_ids": (prefill["position_ids"][:, -1:] + 1).astype(np.int64),
    }
    for i in range(layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = outputs[f"present.{i}.{kind}"]
    return feed


def run_tensor_parity(
    reference,
    session,
    bundle: Bundle,
    backend: str,
    variant: str,
    atol: float | None = None,
    rtol: float | None = None,
    samples: int = 16,
) -> ParityReport:
    """Level 1 (tensors) for any bundle: every output of `session` against `reference` on the same feeds."""
    default_atol, default_rtol = TOLERANCES.get(backend, (1e-4, 1e-4))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    report = ParityReport(backend, variant, atol, rtol, samples)
    started = time.perf_counter()
    if bundle.is_decoder:
        layers = bundle.model["num_layers"]
        for feed in decoder_prefill_feeds(bundle, n=samples // 2 or 1):
            ref = reference.run(feed)
            _compare_all(report, ref, session.run(feed), atol, rtol, feed)
            step = decode_step_feeds(feed, ref, layers)
            _compare_all(report, reference.run(step), session.run(step), atol, rtol, step)
    else:
        for feed in encoder_feeds(bundle, n=samples):
            _compare_all(report, reference.run(feed), session.run(feed), atol, rtol, feed)
    report.seconds = time.perf_counter() - started
    return report


def _compare_all(report: ParityReport, ref: dict, test: dict, atol: float, rtol: float, feed: dict) -> None:
    mask = feed["attention_mask"].astype(bool)
    for name, ref_value in ref.items():
        if name not in test:
            continue
        valid = None
        if name.startswith("present."):
            valid = mask[:, None, :, None]  # pad positions of the cache are never read
        elif ref_value.ndim >= 2 and ref_value.shape[:2] == mask.shape:
            valid = mask.reshape(
                mask.shape + (1,) * (ref_value.ndim - 2)
            )  # token outputs at padding are junk
        report.add(compare_arrays(name, ref_value, test[name], atol, rtol, valid))
