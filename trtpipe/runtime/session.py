"""The Session contract and the backend switches: `open_session` (any graph) and `open_decoder` (GPT-2 decoding).

Every backend (ONNX Runtime on CPU/CUDA/TensorRT-EP, OpenVINO on the CPU, TensorRT engines, and the PyTorch
reference that lives in trtpipe.parity) has the same small surface, Polygraphy-style: `run(feeds) -> outputs`.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

import numpy as np

from .bundle import Bundle
from .errors import UserError

BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "trt", "ov")


@runtime_checkable
class Session(Protocol):
    backend: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


def open_session(
    bundle: Bundle | str | os.PathLike,
    backend: str = "ort-cpu",
    variant: str | None = None,
    threads: int | None = None,
    verify: bool = True,
) -> Session:
    """Open `bundle` (a Bundle or its path) on `backend`; `variant` picks an ONNX variant or engine precision."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be ≥ 1 (got {threads})")
    if backend == "trt":
        from .trt.session import TrtSession

        return TrtSession.from_bundle(bundle, variant=variant, verify=verify)
    if backend == "ov":
        from .ov import OvSession

        return OvSession.from_bundle(bundle, variant=variant, threads=threads, verify=verify)
    from .ort import OrtSession

    return OrtSession.from_bundle(bundle, backend=backend, variant=variant, threads=threads, verify=verify)


def open_decoder(
    bundle: Bundle,
    backend: str = "ort-cpu",
    variant: str | None = None,
    threads: int | None = None,
    kv: str = "auto",
):
    """The decoder runner for a GPT-2 bundle on `backend`, and the variant it runs: the in-place KV twin of the
    variant where ONNX Runtime on the CPU has one (kv="auto" or "inplace"), else the interop graph (ping-pong)."""
    if kv not in ("auto", "inplace", "pingpong"):
        raise UserError(f"kv must be auto, inplace or pingpong (got {kv!r})")
    if kv == "inplace" and backend == "ov":
        raise UserError(
            "the in-place KV graph runs on ONNX Runtime only; with --backend ov use kv=pingpong (or auto), "
            "or use --backend ort-cpu"
        )
    base = variant or "fp32"
    inplace_name = "kv-inplace" if base == "fp32" else f"{base}.kv-inplace"
    inplace = backend == "ort-cpu" and kv != "pingpong" and inplace_name in bundle.variants
    if kv == "inplace" and not inplace:
        raise UserError(
            f"no {inplace_name} variant in {bundle.path} for backend {backend}; "
            f"create it with `trtpipe optimize {bundle.path} --precision {base}` or use kv=pingpong"
        )
    if backend == "trt":
        from .trt.decoder import TrtDecoder

        return TrtDecoder.from_bundle(bundle, variant=base), base
    if backend == "ort-cuda":
        from .ort_cuda import OrtCudaDecoder

        return OrtCudaDecoder.from_bundle(bundle, variant=base, threads=threads), base
    from .decoder import DecoderRunner

    chosen = inplace_name if inplace else base
    session = open_session(bundle, backend=backend, variant=chosen, threads=threads)
    return DecoderRunner(bundle, session, inplace), chosen
