"""Accuracy gates for lossy variants (DESIGN §7), computed through runtime sessions on held-out real text — no torch.

A candidate is compared with the bundle's fp32 variant by the metric that matters for the task:
- fp16: logits within atol 0.2 / rtol 5e-2 and top-1 ≥ 99 %; sentence embeddings cosine ≥ 0.999.
- int8 / int4 / int8-wo: sentence-embedding cosine ≥ 0.99 mean and ≥ 0.98 min; label agreement ≥ 99 %;
  token top-1 agreement ≥ 98 % (NER, QA, fill-mask); LM next-token top-1 agreement ≥ 97 % (teacher-forced along
  real sentences), with the greedy-match length reported.
A search's candidate is judged on calibration text by `search_thresholds`: the same, plus for label metrics an
expected agreement (`expected_agreement`) with half the allowed error to spare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import corpus
from ..runtime.bundle import Bundle
from ..runtime.ort import OrtSession
from ..runtime.text import TextEncoder

LOSSY_INT = ("int8", "int8-qdq", "int8-nncf", "int8-wo", "int4")


@dataclass
class GateResult:
    precision: str
    metrics: dict = field(default_factory=dict)
    thresholds: dict = field(default_factory=dict)  # metric -> (op, value)
    samples: int = 0
    texts: str = ""

    @property
    def passed(self) -> bool:
        return all(_holds(self.metrics.get(name), op, value) for name, (op, value) in self.thresholds.items())

    def passed_with_headroom(self, fraction: float) -> bool:
        """Passes with `fraction` of each `>=` threshold's allowed error to spare (0.97 with 1/2 → 0.985): a
        search on a few calibration texts aims above the line, so the held-out gate is not a coin toss."""
        return all(
            _holds(self.metrics.get(name), op, value + fraction * (1 - value) if op == ">=" else value)
            for name, (op, value) in self.thresholds.items()
        )

    def failures(self) -> list[str]:
        return [
            f"{name} = {_fmt(self.metrics.get(name))} (needs {op} {value:g})"
            for name, (op, value) in self.thresholds.items()
            if not _holds(self.metrics.get(name), op, value)
        ]

    def summary(self) -> str:
        return ", ".join(
            f"{name} {_fmt(self.metrics.get(name))} {op} {value:g}"
            for name, (op, value) in self.thresholds.items()
        )

    def to_dict(self, forced: bool = False) -> dict:
        return {
            "verdict": "pass" if self.passed else "fail",
            "forced": forced and not self.passed,
            "metrics": self.metrics,
            "thresholds": {k: list(v) for k, v in self.thresholds.items()},
            "samples": self.samples,
            "texts": self.texts,
        }


def _holds(value, op: str, bound: float) -> bool:
    if value is None or not np.isfinite(value):
        return False
    return value >= bound if op == ">=" else value <= bound


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def thresholds(task: str, precision: str) -> dict[str, tuple[str, float]]:
    if precision == "fp16":
        if task == "embed":
            return {"embedding_cosine_min": (">=", 0.999)}
        return {"logits_outside_tolerance": ("<=", 0.0), "top1_agreement": (">=", 0.99)}
    if task == "embed":
        return {"embedding_cosine_mean": (">=", 0.99), "embedding_cosine_min": (">=", 0.98)}
    if task == "classify":
        return {"label_agreement": (">=", 0.99)}
    if task == "generate":
        return {"next_token_top1": (">=", 0.97)}
    return {"token_top1": (">=", 0.98)}  # ner, qa, fill-mask


def verdicts(passes, ok: bool | None) -> dict:
    """What a search records for one candidate it judged with `passes` (search.calibration_gate): the calibration
    verdict, and the held-out one where it was asked (`passes.last`)."""
    return dict(getattr(passes, "last", None) or {"passed_calibration": ok})


def search_thresholds(task: str, precision: str) -> dict[str, tuple[str, float]]:
    """What a search's candidate must meet on calibration text: the gate's thresholds, plus, where the gate counts
    flipped labels, an expected agreement with half the allowed error to spare (label agreement ≥ 0.99 adds
    expected_agreement ≥ 0.995). Counting flips on 32 calibration texts cannot tell a plan from one with three
    times its error (both flip none); the expected agreement can, and the held-out gate still counts flips."""
    found = dict(thresholds(task, precision))
    for name in ("label_agreement", "token_top1"):
        if name in found and precision != "fp16":
            op, value = found[name]
            found["expected_agreement"] = (op, value + (1 - value) / 2)
    return found


def margins(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of [..., classes] scores: fp32's margin (top-1 minus top-2 score of `a`) and the candidate's change
    of that same difference (`b`'s top-1-class minus top-2-class score, minus the margin)."""
    a2, b2 = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    if a2.shape[-1] < 2 or not len(a2):
        return np.zeros(0), np.zeros(0)
    rows = np.arange(len(a2))
    order = np.argsort(-a2, axis=-1, kind="stable")[:, :2] if a2.shape[-1] <= 64 else None
    if order is None:  # a vocabulary: the two largest without sorting it
        pair = np.argpartition(-a2, 1, axis=-1)[:, :2]
        swap = a2[rows, pair[:, 1]] > a2[rows, pair[:, 0]]
        order = np.where(swap[:, None], pair[:, ::-1], pair)
    first, second = order[:, 0], order[:, 1]
    margin = a2[rows, first] - a2[rows, second]
    return margin, (b2[rows, first] - b2[rows, second]) - margin


def expected_agreement(margin: np.ndarray, change: np.ndarray) -> float:
    """1 − the mean chance that a row's label flips, each fp32 margin against the spread σ (RMS over all rows) of the
    candidate's change along it, taken as Gaussian: P(flip) = Φ(−margin / σ). A smooth estimate of label agreement
    that sees near-misses, not only flips."""
    if not len(margin):
        return 1.0
    sigma = float(np.sqrt(np.mean(np.square(change))))
    if sigma == 0.0:
        return 1.0
    flip = [0.5 * math.erfc(m / (sigma * math.sqrt(2.0))) for m in margin.astype(np.float64)]
    return float(1.0 - np.mean(flip))


def gate_texts(n: int = 64, path: str | Path | None = None) -> list[str]:
    if path is None:
        return corpus.sample(n, split="heldout")
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:n]


def _open(
    path: Path,
    bundle: Bundle,
    specs: list | None = None,
    threads: int | None = None,
    backend: str = "ort-cpu",
    precision: str = "f32",
):
    """A session on `path`: ONNX Runtime's CPU provider, or OpenVINO (`ov`, computing at `precision`) for a
    variant made for it."""
    specs = specs or bundle.manifest["inputs"]
    if backend == "ov":
        from ..runtime.ov import OvSession

        outputs = [o["name"] for o in bundle.manifest.get("outputs", [])]
        return OvSession(
            path, threads=threads, specs=specs, limits=bundle.limits, outputs=outputs, precision=precision
        )
    return OrtSession(path, specs=specs, limits=bundle.limits, threads=threads)


# ------------------------------------------------------------------------------------------------- encoders


def encoder_batches(bundle: Bundle, texts: list[str], batch: int = 8, max_tokens: int = 128) -> list[dict]:
    encoder = TextEncoder(bundle)
    limit = min(max_tokens, bundle.max_length)
    feeds = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        if bundle.task == "fill-mask":
            chunk = [
                _mask_one_word(text, encoder.info.get("mask_token", "[MASK]"), i)
                for i, text in enumerate(chunk)
            ]
        pairs = list(reversed(chunk)) if bundle.task == "qa" else None
        feeds.append(
            encoder.collate(encoder.encode(chunk, pairs, truncate=True, max_length=limit, quiet=True)).feeds
        )
    return feeds


def _mask_one_word(text: str, mask: str, seed: int) -> str:
    words = text.split()
    index = (seed * 7 + 3) % len(words)
    words[index] = mask
    return " ".join(words)


def _encoder_metrics(
    bundle: Bundle, reference: OrtSession, candidate: OrtSession, feeds: list[dict], precision: str
) -> dict:
    task = bundle.task
    cos: list[np.ndarray] = []
    token_cos: list[np.ndarray] = []
    agree = total = outside = elements = 0
    max_abs = 0.0
    margin_parts: list[np.ndarray] = []
    change_parts: list[np.ndarray] = []
    mask_id = bundle.manifest["tokenizer"].get("mask_id")
    for feed in feeds:
        ref = reference.run(feed)
        out = candidate.run(feed)
        valid = feed["attention_mask"].astype(bool)
        if task == "embed":
            a, b = ref["sentence_embedding"], out["sentence_embedding"].astype(np.float32)
            cos.append(np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)))
            ha, hb = ref["last_hidden_state"][valid], out["last_hidden_state"][valid].astype(np.float32)
            token_cos.append(
                np.sum(ha * hb, -1) / (np.linalg.norm(ha, axis=-1) * np.linalg.norm(hb, axis=-1))
            )
            continue
        for name in ref:
            a, b = ref[name].astype(np.float64), out[name].astype(np.float64)
            if task in ("ner", "fill-mask"):
                keep = valid if task == "ner" else (feed["input_ids"] == mask_id)
                a, b = a[keep], b[keep]
            elif task == "qa":
                a = np.where(valid, a, -1e9)
                b = np.where(valid, b, -1e9)
            diff = np.abs(a - b)
            max_abs = max(max_abs, float(diff.max()) if diff.size else 0.0)
            outside += int((diff > 0.2 + 5e-2 * np.abs(a)).sum())
            elements += diff.size
            if a.size:
                agree += int((a.argmax(-1) == b.argmax(-1)).sum())
                total += int(np.prod(a.shape[:-1]))
                margin, change = margins(a, b)
                margin_parts.append(margin)
                change_parts.append(change)
    if task == "embed":
        c, t = np.concatenate(cos), np.concatenate(token_cos)
        return {
            "embedding_cosine_mean": float(c.mean()),
            "embedding_cosine_min": float(c.min()),
            "token_cosine_mean": float(t.mean()),
            "token_cosine_min": float(t.min()),
        }
    metrics = {"max_abs": max_abs, "logits_outside_tolerance": float(outside) / max(elements, 1)}
    key = "label_agreement" if task == "classify" else "token_top1"
    metrics[key] = agree / max(total, 1)
    if margin_parts:
        metrics["expected_agreement"] = expected_agreement(
            np.concatenate(margin_parts), np.concatenate(change_parts)
        )
    if precision == "fp16":
        metrics["top1_agreement"] = metrics[key]
    return metrics


# ------------------------------------------------------------------------------------------------- decoders


def decoder_metrics(
    bundle: Bundle,
    reference_path: Path,
    candidate_path: Path,
    texts: list[str],
    candidate_specs: list | None,
    max_tokens: int = 24,
    greedy_prompts: int = 4,
) -> dict:
    """A GPT-2 candidate against a reference graph on `texts`, teacher-forced through the runtime's decoding loop
    (in place where the candidate's specs have seqlens_k): next-token top-1 agreement, logit error, greedy match."""
    from ..runtime.decoder import DecoderRunner

    encoder = TextEncoder(bundle)
    ref = DecoderRunner(bundle, _open(reference_path, bundle), inplace=False)
    cand_inplace = bool(candidate_specs and any(s["name"] == "seqlens_k" for s in candidate_specs))
    cand = DecoderRunner(bundle, _open(candidate_path, bundle, candidate_specs), inplace=cand_inplace)
    pad = int(bundle.manifest["tokenizer"].get("pad_id", 0))
    agree = total = outside = elements = 0
    max_abs = 0.0
    sequences = [encoder.encode_prompt(t)[:max_tokens] for t in texts]
    for ids in sequences:
        if len(ids) < 2:
            continue
        logits = []
        for runner in (ref, cand):
            cache = runner.new_cache(1, len(ids) + 1)
            step, mask = runner.prefill([ids[:1]], cache, pad)
            rows = [step[0].copy()]
            lengths = np.array([1])
            for token in ids[1:-1]:
                step, mask = runner.decode(np.array([token]), lengths, cache, mask)
                lengths += 1
                rows.append(step[0].copy())
            logits.append(np.stack(rows))
        a, b = logits[0].astype(np.float64), logits[1].astype(np.float64)
        diff = np.abs(a - b)
        max_abs = max(max_abs, float(diff.max()))
        outside += int((diff > 0.2 + 5e-2 * np.abs(a)).sum())
        elements += diff.size
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        total += len(a)
    match = []
    for ids in sequences[:greedy_prompts]:
        if not ids:
            continue
        outs = []
        for runner in (ref, cand):
            cache = runner.new_cache(1, len(ids) + 32)
            step, mask = runner.prefill([ids], cache, pad)
            lengths = np.array([len(ids)])
            generated = []
            for _ in range(32):
                token = int(step[0].argmax())
                generated.append(token)
                step, mask = runner.decode(np.array([token]), lengths, cache, mask)
                lengths += 1
            outs.append(generated)
        same = 0
        while same < 32 and outs[0][same] == outs[1][same]:
            same += 1
        match.append(same)
    top1 = agree / max(total, 1)
    return {
        "next_token_top1": top1,
        "top1_agreement": top1,
        "positions": total,
        "max_abs": max_abs,
        "logits_outside_tolerance": float(outside) / max(elements, 1),
        "greedy_match_tokens_mean": float(np.mean(match)) if match else None,
        "greedy_match_of": 32,
    }


def evaluate(
    bundle: Bundle,
    candidate_path: Path,
    precision: str,
    texts: list[str] | None = None,
    candidate_specs: list | None = None,
    search: bool = False,
    backend: str = "ort-cpu",
    compute: str = "f32",
) -> GateResult:
    """Compare a candidate ONNX file with the bundle's fp32 variant on held-out text (or, with search=True, a
    search's candidate on calibration text, by `search_thresholds`). The candidate runs on `backend` (encoders:
    `ov` for a variant made for OpenVINO, computing at `compute`: bf16); the reference is always fp32 on ONNX
    Runtime."""
    texts = texts or gate_texts(bundle.kind.gate_texts)
    reference_path = bundle.model_path("fp32")
    if bundle.is_decoder:
        metrics = decoder_metrics(bundle, reference_path, candidate_path, texts, candidate_specs)
    else:
        reference = _open(reference_path, bundle)
        candidate = _open(candidate_path, bundle, candidate_specs, backend=backend, precision=compute)
        metrics = _encoder_metrics(bundle, reference, candidate, encoder_batches(bundle, texts), precision)
    limits = (search_thresholds if search else thresholds)(bundle.task, precision)
    return GateResult(precision, metrics, limits, len(texts), corpus.fingerprint(texts))
