"""Encoder benchmark rows: our sessions per backend × variant, and the PyTorch / Optimum peers, all fed the same
real-text batches of a fixed shape, rounds interleaved."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import corpus
from ..console import progress, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .figures import spec_key
from .stats import summarize


def fixed_feeds(bundle: Bundle, batch: int, seq: int, count: int = 4) -> list[dict]:
    """`count` batches of real text, each row exactly `seq` tokens (sentences are joined until long enough)."""
    from ..runtime.text import TextEncoder

    if seq > bundle.max_length:
        raise UserError(
            f"--seq {seq} exceeds {bundle.name}'s max length {bundle.max_length}; pass --seq {bundle.max_length} or less"
        )
    encoder = TextEncoder(bundle)
    pool = corpus.sentences("all")
    feeds, cursor = [], 0
    for _ in range(count):
        rows = []
        for _ in range(batch):
            text = ""
            while len(encoder.plain.encode(text).ids) < seq + 2:
                text += pool[cursor % len(pool)] + " "
                cursor += 1
            rows.append(text)
        encodings = encoder.encode(rows, truncate=True, max_length=seq, quiet=True)
        feeds.append(encoder.collate(encodings).feeds)
    return feeds


class OursRow:
    def __init__(self, bundle: Bundle, backend: str, variant: str | None, threads: int | None):
        from ..runtime.session import open_session

        self.session = open_session(bundle, backend=backend, variant=variant, threads=threads)
        self.label = f"trtpipe {backend} {variant or 'fp32'}"
        self.backend, self.variant = backend, variant or "fp32"

    def run(self, feed: dict):
        return self.session.run(feed)


class TorchRow:
    label = "PyTorch eager"
    backend, variant = "torch", "fp32"

    def __init__(self, bundle: Bundle, threads: int | None):
        import torch

        from ..export.encoder import input_names, wrapper_for
        from .peers import source_model

        if threads:
            torch.set_num_threads(threads)
        self.torch = torch
        source = source_model(bundle)
        self.model = wrapper_for(source)
        self.inputs = input_names(source)

    def run(self, feed: dict):
        torch = self.torch
        with torch.no_grad():
            return self.model(*(torch.from_numpy(feed[k]) for k in self.inputs))


class OptimumRow:
    backend = "optimum"

    def __init__(self, bundle: Bundle, threads: int | None, quantized: bool = False):
        import torch

        from .peers import optimum_model

        self.torch = torch
        self.model = optimum_model(bundle, threads, quantized=quantized)
        self.variant = "int8 (avx512_vnni, per-tensor)" if quantized else "fp32"
        self.label = f"Optimum ORTModel {'int8 avx512_vnni' if quantized else '(its own export)'}"

    def run(self, feed: dict):
        torch = self.torch
        return self.model(**{k: torch.from_numpy(v) for k, v in feed.items()})


def build_row(bundle: Bundle, kind: str, variant: str | None, backend: str, threads: int | None):
    if kind == "ours":
        return OursRow(bundle, backend, variant, threads)
    if kind == "torch":
        return TorchRow(bundle, threads)
    if kind == "optimum":
        return OptimumRow(bundle, threads, quantized=variant == "int8")
    raise UserError(f"unknown row kind {kind!r}")


@dataclass
class EncodeResult:
    label: str
    kind: str
    backend: str
    variant: str
    batch: int
    seq: int
    latency: dict = field(default_factory=dict)
    items_per_s: float | None = None
    peak_rss: int | None = None
    peak_rss_note: str | None = None  # why peak_rss was not measured
    error: str | None = None
    key: str = ""  # figures.spec_key of the spec that built the row: what accuracy figures are looked up by


def run_encode(
    bundle: Bundle,
    specs: list[tuple[str, str | None, str]],
    shapes: list[tuple[int, int]],
    threads: int | None,
    rounds: int = 5,
    iters: int = 4,
    warmup: int = 2,
    seconds: float | None = None,
) -> list[EncodeResult]:
    """specs: (kind, variant, backend). Each round runs every row `iters` times (or for seconds/rounds s)."""
    built = []
    for kind, variant, backend in specs:
        try:
            built.append((kind, variant, backend, build_row(bundle, kind, variant, backend, threads), None))
        except (UserError, ImportError, OSError, RuntimeError) as exc:
            reason = str(exc).splitlines()[0][:200]
            warn(f"skipping {kind} {backend} {variant or 'fp32'}: {reason}")
            built.append((kind, variant, backend, None, reason))
    results = []
    with progress() as bar:
        task = bar.add_task("encoder benchmark", total=len(shapes) * len(built) * (rounds + 1))
        for batch, seq in shapes:
            feeds = fixed_feeds(bundle, batch, seq, count=max(iters, 2))
            samples: dict[int, list[float]] = {i: [] for i in range(len(built))}
            for _, _, _, row, _ in built:
                if row is not None:
                    for feed in feeds[:warmup]:
                        row.run(feed)
                bar.advance(task)
            import time

            for _ in range(rounds):
                for index, (_, _, _, row, _) in enumerate(built):
                    bar.advance(task)
                    if row is None:
                        continue
                    budget = (seconds / rounds) if seconds else None
                    started_round = time.perf_counter()
                    count = 0
                    while True:
                        feed = feeds[count % len(feeds)]
                        started = time.perf_counter()
                        row.run(feed)
                        samples[index].append(time.perf_counter() - started)
                        count += 1
                        if budget is None and count >= iters:
                            break
                        if budget is not None and time.perf_counter() - started_round >= budget:
                            break
            for index, (kind, variant, backend, row, error) in enumerate(built):
                label = row.label if row is not None else f"{kind} {backend} {variant or 'fp32'}"
                result = EncodeResult(
                    label,
                    kind,
                    backend if kind == "ours" else kind,
                    variant or "fp32",
                    batch,
                    seq,
                    error=error,
                    key=spec_key(kind, variant, backend),
                )
                if row is not None:
                    result.latency = summarize(samples[index], items_per_sample=batch)
                    result.items_per_s = result.latency["qps"]
                results.append(result)
    return results


def outputs_agree(bundle: Bundle, rows: list, feed: dict) -> dict:
    """Max abs difference of each row's main output against the first row, on one feed (sanity, not parity)."""
    outs = []
    for row in rows:
        value = row.run(feed)
        if isinstance(value, dict):
            value = next(iter(value.values()))
        elif isinstance(value, (tuple, list)):
            value = value[0]
        elif hasattr(value, "logits"):
            value = value.logits
        elif hasattr(value, "last_hidden_state"):
            value = value.last_hidden_state
        outs.append(
            np.asarray(value.detach().numpy() if hasattr(value, "detach") else value, dtype=np.float32)
        )
    return {row.label: float(np.abs(out - outs[0]).max()) for row, out in zip(rows, outs)}
