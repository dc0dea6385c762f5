"""A memory estimate before a TensorRT build: weights + activations + outputs + KV cache, and the refusals it
allows (DESIGN §9). It is an estimate — TensorRT reuses activation memory across layers and picks tactics that
need scratch space — good to a small factor, which is what is needed to refuse settings that cannot fit.

KV = 2 · L · B · H · S · D · bytes (keys and values, every layer, at the largest batch and length). The runtime
keeps two copies (ping-pong: past read from one, present written into the other), so the total counts it twice.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError

GIB = 1 << 30
_BYTES = {"int64": 8, "int32": 4, "float32": 4, "float16": 2, "bool": 1}


def kv_cache_bytes(
    layers: int, batch: int, heads: int, sequence: int, head_dim: int, dtype_bytes: int
) -> int:
    """2 · L · B · H · S · D · bytes."""
    return 2 * layers * batch * heads * sequence * head_dim * dtype_bytes


@dataclass
class MemoryEstimate:
    weights: int
    activations: int
    outputs: int
    kv: int
    kv_copies: int
    workspace: int | None
    dtype_bytes: int
    batch: int
    sequence: int

    @property
    def engine(self) -> int:
        """What running the engine at its largest profile holds: weights, activations, outputs, KV copies."""
        return self.weights + self.activations + self.outputs + self.kv * self.kv_copies

    @property
    def total(self) -> int:
        return self.engine + (self.workspace or 0)

    def rows(self) -> list[tuple[str, int, str]]:
        rows = [
            ("weights", self.weights, "ONNX variant files"),
            ("activations", self.activations, f"peak at batch {self.batch} × {self.sequence} tokens"),
            ("outputs", self.outputs, "output tensors at the profile maximum"),
        ]
        if self.kv:
            rows.append(
                (
                    "KV cache",
                    self.kv * self.kv_copies,
                    f"2·L·B·H·S·D·{self.dtype_bytes} B × {self.kv_copies} (ping-pong)",
                )
            )
        if self.workspace:
            rows.append(("workspace", self.workspace, "--workspace"))
        rows.append(("total", self.total, ""))
        return rows

    def to_dict(self) -> dict:
        return {**asdict(self), "engine": self.engine, "total": self.total}

    def summary(self) -> str:
        parts = [f"{name} {_gib(value)}" for name, value, _ in self.rows() if name != "total"]
        return f"about {_gib(self.total)} ({', '.join(parts)})"


def _gib(value: int | float) -> str:
    return f"{value / GIB:.2f} GiB" if value >= GIB / 10 else f"{value / (1 << 20):.1f} MiB"


def variant_dtype_bytes(bundle: Bundle, variant: str) -> int:
    """Bytes per activation element: the KV inputs' dtype where the variant lists its inputs, else by precision."""
    entry = bundle.variants.get(variant, {})
    for spec in entry.get("inputs") or []:
        if spec["name"].startswith("past_key_values."):
            return _BYTES.get(spec["dtype"], 4)
    precision = entry.get("precision", variant)
    return 2 if precision in ("fp16", "bf16") else 4  # int8-qdq graphs keep fp32 between Q/DQ pairs


def named_dims(specs: list[dict], profile: dict, selector: str = "max") -> dict[str, int]:
    dims: dict[str, int] = {}
    for spec in specs:
        bounds = profile["shapes"].get(spec["name"])
        if bounds is None:
            continue
        for axis, value in zip(spec["shape"], bounds[selector]):
            if isinstance(axis, str):
                dims[axis] = max(dims.get(axis, 0), int(value))
    return dims


def weight_bytes(bundle: Bundle, variant: str) -> int:
    entry = bundle.variants.get(variant, {})
    total = 0
    for rel in entry.get("sha256") or {entry.get("file", "model.onnx"): None}:
        path = bundle.path / rel
        if path.is_file():
            total += path.stat().st_size
    if not total:
        total = int(bundle.model.get("parameter_bytes") or 0)
    return total


def estimate_memory(
    bundle: Bundle,
    variant: str,
    profiles: list[dict],
    workspace: int | None = None,
    weights: int | None = None,
) -> MemoryEstimate:
    """The estimate at the largest shapes of `profiles`."""
    model = bundle.model
    hidden = int(model.get("hidden_size") or 768)
    heads = int(model.get("num_heads") or 12)
    layers = int(model.get("num_layers") or 12)
    head_dim = int(model.get("head_dim") or hidden // heads)
    intermediate = int(model.get("intermediate_size") or 4 * hidden)
    dtype_bytes = variant_dtype_bytes(bundle, variant)
    specs = bundle.variants.get(variant, {}).get("inputs") or bundle.manifest["inputs"]
    activations = outputs = kv = 0
    peak_batch = peak_seq = 0
    for profile in profiles:
        dims = named_dims(specs, profile)
        batch = dims.get("batch", 1)
        queries = dims.get("sequence", 1)
        keys = dims.get("total_sequence", queries)
        # live at once: a few hidden-sized tensors, the MLP intermediate, attention scores and their softmax
        act = batch * queries * (4 * hidden + intermediate) * dtype_bytes
        act += 2 * batch * heads * queries * keys * dtype_bytes
        if act > activations:
            activations, peak_batch, peak_seq = act, batch, max(queries, keys)
        out = 0
        for spec in bundle.manifest["outputs"]:
            if spec["name"].startswith("present."):
                continue
            shape = [d if isinstance(d, int) else dims.get(d, 1) for d in spec["shape"]]
            out += int(np.prod(shape, dtype=np.int64)) * _BYTES.get(spec["dtype"], 4)
        outputs = max(outputs, out)
        if bundle.is_decoder:
            kv = max(kv, kv_cache_bytes(layers, batch, heads, keys, head_dim, dtype_bytes))
    return MemoryEstimate(
        weights=weight_bytes(bundle, variant) if weights is None else weights,
        activations=activations,
        outputs=outputs,
        kv=kv,
        kv_copies=bundle.kind.device_kv_copies,
        workspace=workspace,
        dtype_bytes=dtype_bytes,
        batch=peak_batch,
        sequence=peak_seq,
    )


def check_memory(estimate: MemoryEstimate, gpu_memory: int | None, gpu_name: str = "the GPU") -> None:
    """Refuse settings that cannot fit: a workspace larger than the GPU, an engine larger than the GPU, or an
    engine plus its workspace larger than the GPU. Without a known GPU memory nothing is refused."""
    if not gpu_memory:
        return
    if estimate.workspace and estimate.workspace >= gpu_memory:
        raise UserError(
            f"--workspace {estimate.workspace / GIB:g} GB is larger than {gpu_name}'s memory ({gpu_memory / GIB:.1f} GiB); "
            "pass a smaller --workspace (or leave it out: TensorRT then uses what is free)"
        )
    if estimate.engine > gpu_memory:
        raise UserError(
            f"the engine needs {estimate.summary()} at its largest profile (batch {estimate.batch}, "
            f"{estimate.sequence} tokens) but {gpu_name} has {gpu_memory / GIB:.1f} GiB; lower the maximum batch or "
            "sequence with --max-shapes"
        )
    if estimate.total > gpu_memory:
        raise UserError(
            f"the engine ({_gib(estimate.engine)}) plus --workspace {estimate.workspace / GIB:g} GB exceeds "
            f"{gpu_name}'s {gpu_memory / GIB:.1f} GiB; pass a smaller --workspace"
        )
