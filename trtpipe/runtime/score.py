"""Perplexity of a text under a GPT-2 bundle: sliding windows over `model.all-logits.onnx` (one pass per window),
or, without that variant, teacher-forced cached decoding (one step per token)."""

from __future__ import annotations

import math

import numpy as np

from .bundle import Bundle
from .errors import UserError, with_article
from .generate import Generator
from .session import open_session
from .text import TextEncoder


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def perplexity(
    bundle: Bundle | str,
    text: str,
    backend: str = "ort-cpu",
    window: int | None = None,
    stride: int | None = None,
    threads: int | None = None,
) -> dict:
    """{"tokens", "scored", "nll", "perplexity", "method"}: HF-style strided windows (each token scored once, with
    up to `window - stride` tokens of context carried over from the previous window)."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if not bundle.is_decoder:
        raise UserError(
            f"{bundle.path} is {with_article(bundle.task)} bundle; perplexity needs a GPT-2 bundle"
        )
    if not isinstance(text, str) or not text.strip():
        raise UserError("the text to score is empty; give a UTF-8 file with some text")
    encoder = TextEncoder(bundle)
    ids = encoder.encode_prompt(text)
    if len(ids) < 2:
        raise UserError("the text is shorter than two tokens; perplexity needs at least two")
    positions = bundle.max_length  # the model's positions, or export's --max-length
    if window is not None and window < 2:
        raise UserError(f"window must be ≥ 2 tokens (got {window})", fields="window")
    window = min(window or positions, positions)
    stride = max(1, window // 2) if stride is None else stride
    if not 1 <= stride <= window:
        raise UserError(f"stride must be between 1 and the window ({window}), got {stride}", fields="stride")
    if "all-logits" in bundle.variants:
        session = open_session(bundle, backend=backend, variant="all-logits", threads=threads)
        logits_fn = _all_logits(session, bundle)
        method = "all-logits variant, strided windows"
    else:
        generator = Generator(bundle, backend=backend, threads=threads)
        logits_fn = _cached_logits(generator)
        method = "teacher-forced cached decoding (export with --logits all for one pass per window)"
    nll, scored, previous_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        target_from = max(previous_end, begin + 1)  # tokens [target_from, end) are scored in this window
        chunk = ids[begin:end]
        logprobs = _log_softmax(logits_fn(chunk))  # [len(chunk), V]: row i predicts chunk[i + 1]
        for pos in range(target_from, end):
            nll -= float(logprobs[pos - begin - 1, ids[pos]])
            scored += 1
        previous_end = end
        if end == len(ids):
            break
    mean = nll / max(scored, 1)
    return {
        "tokens": len(ids),
        "scored": scored,
        "nll": mean,
        "perplexity": math.exp(mean),
        "method": method,
        "window": window,
        "stride": stride,
    }


def _all_logits(session, bundle: Bundle):
    model = bundle.model

    def run(chunk: list[int]) -> np.ndarray:
        n = len(chunk)
        feeds = {
            "input_ids": np.asarray([chunk], np.int64),
            "attention_mask": np.ones((1, n), np.int64),
            "position_ids": np.arange(n, dtype=np.int64)[None],
        }
        for layer in range(model["num_layers"]):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{layer}.{kind}"] = np.zeros(
                    (1, model["num_heads"], 0, model["head_dim"]), np.float32
                )
        return session.run(feeds)["logits"][0]

    return run


def _cached_logits(generator: Generator):
    def run(chunk: list[int]) -> np.ndarray:
        runner = generator.runner
        cache = runner.new_cache(1, len(chunk) + 1)
        logits, mask = runner.prefill([chunk[:1]], cache, generator.pad_id)
        rows = [logits[0].copy()]
        lengths = np.array([1], dtype=np.int64)
        for token in chunk[1:]:
            logits, mask = runner.decode(np.array([token]), lengths, cache, mask)
            lengths += 1
            rows.append(logits[0].copy())
        return np.stack(rows)

    return run
