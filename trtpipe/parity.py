"""Parity: run the PyTorch reference and a backend on the same real tokenized text, compare every output.

`TorchSession` is the reference backend (same contract as runtime sessions; needs the export extra). For GPT-2 it
runs transformers' own GPT2LMHeadModel with a DynamicCache — not our export module — so the exported graph is
checked against the upstream implementation. Levels (DESIGN §7): tensors here; top-k, sequences and cache levels
for decoders in `decoder_parity`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import corpus
from .runtime.bundle import Bundle, bundle_transaction
from .runtime.errors import CheckFailed, UserError

# (atol, rtol) for fp32 variants, per backend (DESIGN §7). TensorRT and CUDA may use TF32.
TOLERANCES = {"ort-cpu": (1e-4, 1e-4), "ort-cuda": (1e-3, 1e-3), "ort-trt": (1e-3, 1e-3), "trt": (1e-3, 1e-3)}


# ------------------------------------------------------------------------------------------------- comparing


@dataclass
class OutputStats:
    name: str
    shape: list[int]
    max_abs: float = 0.0
    max_rel: float = 0.0
    mean_abs: float = 0.0
    cosine: float = 1.0
    nan: int = 0
    inf: int = 0
    mismatches: int = 0
    first_mismatch: list[int] | None = None
    elements: int = 0
    passed: bool = True

    def merge(self, other: OutputStats) -> OutputStats:
        total = self.elements + other.elements
        return OutputStats(
            name=self.name,
            shape=other.shape,
            max_abs=max(self.max_abs, other.max_abs),
            max_rel=max(self.max_rel, other.max_rel),
            mean_abs=(self.mean_abs * self.elements + other.mean_abs * other.elements) / max(total, 1),
            cosine=min(self.cosine, other.cosine),
            nan=self.nan + other.nan,
            inf=self.inf + other.inf,
            mismatches=self.mismatches + other.mismatches,
            first_mismatch=self.first_mismatch if self.first_mismatch is not None else other.first_mismatch,
            elements=total,
            passed=self.passed and other.passed,
        )


def compare_arrays(
    name: str, ref: np.ndarray, test: np.ndarray, atol: float, rtol: float, valid: np.ndarray | None = None
) -> OutputStats:
    """allclose-style check (|test - ref| ≤ atol + rtol·|ref|) with the numbers a human needs to debug a miss.
    `valid` (broadcastable bool) limits the check to meaningful elements (e.g. non-padding positions)."""
    if ref.shape != test.shape:
        return OutputStats(
            name,
            list(test.shape),
            max_abs=float("inf"),
            passed=False,
            first_mismatch=[],
            elements=int(test.size),
        )
    ref64 = ref.astype(np.float64)
    test64 = test.astype(np.float64)
    nan = int(np.isnan(test64).sum())
    inf = int(np.isinf(test64).sum())
    diff = np.abs(test64 - ref64)
    diff = np.where(np.isnan(diff), np.inf, diff)
    bad = diff > atol + rtol * np.abs(ref64)
    if valid is not None:
        valid = np.broadcast_to(valid, ref.shape)
        bad &= valid
        diff = np.where(valid, diff, 0.0)
    significant = np.abs(ref64) > atol
    rel = np.where(significant, diff / np.maximum(np.abs(ref64), 1e-30), 0.0)
    flat_ref, flat_test = ref64.ravel(), np.nan_to_num(test64.ravel())
    denom = np.linalg.norm(flat_ref) * np.linalg.norm(flat_test)
    cosine = float(flat_ref @ flat_test / denom) if denom > 0 else float(np.array_equal(flat_ref, flat_test))
    first = None
    if bad.any():
        first = [int(i) for i in np.unravel_index(int(np.argmax(bad)), bad.shape)]
    return OutputStats(
        name=name,
        shape=list(test.shape),
        max_abs=float(diff.max()) if diff.size else 0.0,
        max_rel=float(rel.max()) if rel.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine,
        nan=nan,
        inf=inf,
        mismatches=int(bad.sum()),
        first_mismatch=first,
        elements=int(test.size),
        passed=not bad.any() and nan == 0 and inf == 0,
    )


@dataclass
class ParityReport:
    backend: str
    variant: str
    atol: float
    rtol: float
    samples: int
    outputs: dict[str, OutputStats] = field(default_factory=dict)
    levels: dict[str, dict] = field(default_factory=dict)  # decoder levels: topk, sequences, cache, batch
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(s.passed for s in self.outputs.values()) and all(
            l.get("passed", True) for l in self.levels.values()
        )

    def add(self, stats: OutputStats) -> None:
        prev = self.outputs.get(stats.name)
        self.outputs[stats.name] = prev.merge(stats) if prev else stats

    def to_dict(self) -> dict:
        return {
            "verdict": "pass" if self.passed else "fail",
            "backend": self.backend,
            "variant": self.variant,
            "atol": self.atol,
            "rtol": self.rtol,
            "samples": self.samples,
            "outputs": {k: asdict(v) for k, v in self.outputs.items()},
            "levels": self.levels,
            "seconds": round(self.seconds, 2),
            "checked": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    def failures(self) -> list[str]:
        lines = []
        for s in self.outputs.values():
            if not s.passed:
                lines.append(
                    f"{s.name}: max abs {s.max_abs:.3g} (atol {self.atol:g}), {s.mismatches} of {s.elements} "
                    f"elements off, first at {s.first_mismatch}, NaN {s.nan}, Inf {s.inf}"
                )
        for name, level in self.levels.items():
            if not level.get("passed", True):
                lines.append(f"{name}: {level.get('summary', level)}")
        return lines


# ------------------------------------------------------------------------------------------- reference model


class TorchSession:
    """The PyTorch reference behind the Session contract (export extra only; never imported by the runtime)."""

    backend = "torch"

    def __init__(self, source, all_logits: bool = False):
        import torch

        from .export.decoder import input_specs, output_specs
        from .export.encoder import INPUTS, EncoderForExport
        from .export.encoder import output_specs as encoder_outputs

        self.torch = torch
        self.source = source
        self.decoder = source.spec.kind == "decoder"
        self.all_logits = all_logits
        if self.decoder:
            self.input_names = tuple(s["name"] for s in input_specs(source.config))
            self.output_names = tuple(s["name"] for s in output_specs(source.config, all_logits))
        else:
            self.wrapper = EncoderForExport(source.model, source.task).eval()
            self.input_names = INPUTS
            self.output_names = tuple(s["name"] for s in encoder_outputs(source))

    @classmethod
    def from_bundle(cls, bundle: Bundle, all_logits: bool = False) -> TorchSession:
        from .export.inputs import load_source, weights_sha256

        src = bundle.manifest["source"]
        if src.get("kind") == "checkpoint":
            target = src.get("path")
            if not target or not Path(target).exists():
                raise UserError(
                    f"cannot rebuild the PyTorch reference: the checkpoint {target} is gone; "
                    "parity needs the source checkpoint (or re-export from where it lives)"
                )
        else:
            target = src.get("preset") or src.get("name")
        source = load_source(str(target), bundle.task, seed=int(src.get("seed", 0) or 0))
        if weights_sha256(source.model) != src.get("weights_sha256"):
            raise UserError(
                f"the source weights of {bundle.path} changed since export (sha256 differs); "
                f"re-export with `trtpipe export {target} --task {bundle.task} --out {bundle.path} --overwrite`"
            )
        return cls(source, all_logits=all_logits)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self.torch
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        with torch.no_grad():
            if not self.decoder:
                outputs = self.wrapper(
                    tensors["input_ids"], tensors["attention_mask"], tensors["token_type_ids"]
                )
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                return {n: o.float().numpy() for n, o in zip(self.output_names, outputs)}
            return self._run_decoder(tensors)

    def _run_decoder(self, t: dict) -> dict[str, np.ndarray]:
        from transformers.cache_utils import DynamicCache

        layers = self.source.config.n_layer
        cache = DynamicCache()
        if t["past_key_values.0.key"].shape[2] > 0:
            for i in range(layers):
                cache.update(t[f"past_key_values.{i}.key"], t[f"past_key_values.{i}.value"], i)
        out = self.source.model(
            input_ids=t["input_ids"],
            attention_mask=t["attention_mask"],
            position_ids=t["position_ids"],
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits if self.all_logits else out.logits[:, -1:, :]
        result = {"logits": logits.float().numpy()}
        for i, layer in enumerate(out.past_key_values.layers):
            result[f"present.{i}.key"] = layer.keys.float().numpy()
            result[f"present.{i}.value"] = layer.values.float().numpy()
        return result

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------ text feeds


def parity_texts(n: int = 16) -> list[str]:
    return corpus.sample(n, split="heldout")


def encoder_feeds(bundle: Bundle, n: int = 16, batch: int = 4, max_tokens: int = 128) -> list[dict]:
    """Batches of real held-out sentences (some as pairs) tokenized with the bundle's own tokenizer."""
    from .runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    texts = parity_texts(n)
    limit = min(max_tokens, bundle.max_length)
    feeds = []
    for start in range(0, len(texts), batch):
        chunk = texts[start : start + batch]
        pairs = None
        if bundle.task in ("classify", "qa") and (start // batch) % 2 == 1:
            pairs = list(reversed(chunk))
        encodings = encoder.encode(chunk, pairs, truncate=True, max_length=limit)
        feeds.append(encoder.collate(encodings).feeds)
    return feeds


def decoder_prefill_feeds(
    bundle: Bundle, n: int = 8, batch: int = 4, max_tokens: int = 48, texts: list[str] | None = None
) -> list[dict]:
    """Left-padded batches of real prompts with an empty past (prefill)."""
    from .runtime.text import TextEncoder

    encoder = TextEncoder(bundle)
    model = bundle.model
    heads, dim, layers = model["num_heads"], model["head_dim"], model["num_layers"]
    pad = int(bundle.manifest["tokenizer"].get("pad_id", 0))
    texts = texts if texts is not None else parity_texts(n)
    feeds = []
    for start in range(0, len(texts), batch):
        ids = [encoder.encode_prompt(t)[:max_tokens] for t in texts[start : start + batch]]
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), pad, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, width - len(seq) :] = seq
            mask[row, width - len(seq) :] = 1
        feed = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64),
        }
        for i in range(layers):
            for kind in ("key", "value"):
                feed[f"past_key_values.{i}.{kind}"] = np.zeros((len(ids), heads, 0, dim), dtype=np.float32)
        feeds.append(feed)
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


# ------------------------------------------------------------------------------------------------- the check


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


def check_parity_source(source, bundle_dir: Path, manifest: dict) -> ParityReport:
    """Parity right after export (the source model is still in memory); stores the verdict in `manifest`."""
    from .runtime.ort import OrtSession

    bundle = Bundle(Path(bundle_dir), manifest)
    reference = TorchSession(source)
    session = OrtSession(
        Path(bundle_dir) / manifest["variants"]["fp32"]["file"],
        specs=manifest["inputs"],
        limits=manifest["limits"],
    )
    report = run_tensor_parity(reference, session, bundle, "ort-cpu", "fp32")
    if bundle.is_decoder:
        from .decoder_parity import decoder_levels

        report.levels.update(decoder_levels(bundle, reference, "ort-cpu", "fp32"))
    manifest["variants"]["fp32"]["parity"]["ort-cpu"] = report.to_dict()
    if "kv-inplace" in manifest["variants"]:
        inplace = {k: v for k, v in report.levels.items() if k != "cache_pingpong"}
        manifest["variants"]["kv-inplace"]["parity"]["ort-cpu"] = {
            "verdict": "pass" if all(l.get("passed", True) for l in inplace.values()) else "fail",
            "levels": inplace,
        }
    return report


def check_parity(
    bundle_path,
    backend: str = "ort-cpu",
    variant: str | None = None,
    samples: int = 16,
    atol: float | None = None,
    rtol: float | None = None,
    store: bool = True,
) -> ParityReport:
    """`trtpipe parity`: rebuild the reference from the manifest, compare, store the verdict, return the report."""
    from .runtime.session import open_session

    bundle = Bundle.load(bundle_path)
    variant = variant or "fp32"
    precision = bundle.variant(variant).get("precision", "fp32")
    if precision != "fp32" and atol is None:
        raise UserError(
            f"variant {variant} is {precision}: lossy variants are judged by their accuracy gate "
            f"(`trtpipe optimize --precision {variant}` records it); pass --atol/--rtol to compare tensors anyway"
        )
    session = open_session(bundle, backend=backend, variant=variant)
    reference = TorchSession.from_bundle(bundle)
    report = run_tensor_parity(reference, session, bundle, backend, variant, atol, rtol, samples)
    if bundle.is_decoder:
        from .decoder_parity import decoder_levels

        report.levels.update(decoder_levels(bundle, reference, backend, variant))
    if store:
        with bundle_transaction(bundle.path) as (locked, _):
            locked.manifest["variants"][variant].setdefault("parity", {})[backend] = report.to_dict()
    return report


def raise_if_failed(report: ParityReport, what: str) -> None:
    if not report.passed:
        raise CheckFailed(
            f"{what}: parity FAILED on {report.backend}/{report.variant}:\n  "
            + "\n  ".join(report.failures())
        )
