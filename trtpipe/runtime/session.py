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
from .prefill import open_prefill

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
    spin: str | None = None,
) -> Session:
    """Open `bundle` (a Bundle or its path) on `backend`; `variant` picks an ONNX variant or engine precision.
    `spin` (ONNX Runtime backends): its intra-op threads' spinning, stop / 0 / 1 (`ort.spinning`)."""
    if not isinstance(bundle, Bundle):
        bundle = Bundle.load(bundle)
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads must be ≥ 1 (got {threads})")
    if spin is not None and not backend.startswith("ort-"):
        raise UserError(
            f"spin= sets ONNX Runtime's threads; backend {backend} has none of those (leave it out)"
        )
    if backend == "trt":
        from .trt.session import TrtSession

        return TrtSession.from_bundle(bundle, variant=variant, verify=verify)
    if backend == "ov":
        from .ov import OvSession

        return OvSession.from_bundle(bundle, variant=variant, threads=threads, verify=verify)
    from .ort import OrtSession

    return OrtSession.from_bundle(
        bundle, backend=backend, variant=variant, threads=threads, verify=verify, spin=spin
    )


def int8_twin(base: str) -> str:
    """The name of weight variant `base`'s int8-cache twin (`optimize --precision kv8`)."""
    return "kv8-inplace" if base == "fp32" else f"{base}.kv8-inplace"


def int8_cache(bundle: Bundle, base: str, backend: str, kv: str, kv_cache: str) -> str:
    """The int8-cache twin of weight variant `base` that `kv_cache="int8"` asks for, or a UserError naming the fix."""
    if kv_cache != "int8":
        raise UserError(f"kv_cache must be fp32 or int8 (got {kv_cache!r})")
    if backend != "ort-cpu" or kv == "pingpong":
        raise UserError(
            "the int8 KV cache runs in place on ONNX Runtime's CPU provider: use --backend ort-cpu, kv auto or "
            "inplace; or leave the cache at fp32"
        )
    name = int8_twin(base)
    command = f"trtpipe optimize {bundle.path} --precision kv8"
    if name not in bundle.variants:
        raise UserError(
            f"{bundle.path} has no {name} variant (an int8 KV cache for {base}); create it with `{command}`"
        )
    reason = bundle.stale(name)
    if reason is not None:
        raise UserError(
            f"the {name} variant of {bundle.path} is stale ({reason}); rebuild it with `{command} --overwrite`"
        )
    return name


def open_decoder(
    bundle: Bundle,
    backend: str = "ort-cpu",
    variant: str | None = None,
    threads: int | None = None,
    kv: str = "auto",
    prefill_backend: str | None = None,
    spin: str | None = None,
    kv_cache: str = "fp32",
):
    """The decoder runner for a GPT-2 bundle on `backend`, and the variant it runs: the in-place KV twin of the
    variant where ONNX Runtime on the CPU has one (kv="auto" or "inplace"), else the interop graph (ping-pong).
    `kv_cache="int8"`: the twin with an int8 cache (`<precision>.kv8-inplace`, `optimize --precision kv8`), in place
    on ort-cpu only.
    `prefill_backend="ov"` runs the prompts on OpenVINO instead (`prefill.py`; ort-cpu in place only); `spin`:
    ONNX Runtime's threads (ort-cpu; `ort.spinning`)."""
    if kv not in ("auto", "inplace", "pingpong"):
        raise UserError(f"kv must be auto, inplace or pingpong (got {kv!r})")
    if kv == "inplace" and backend == "ov":
        raise UserError(
            "the in-place KV graph runs on ONNX Runtime only; with --backend ov use kv=pingpong (or auto), "
            "or use --backend ort-cpu"
        )
    base = variant or "fp32"
    inplace_name = "kv-inplace" if base == "fp32" else f"{base}.kv-inplace"
    if kv_cache != "fp32":
        inplace_name = int8_cache(bundle, base, backend, kv, kv_cache)
    inplace = backend == "ort-cpu" and kv != "pingpong" and inplace_name in bundle.variants
    if kv == "inplace" and not inplace:
        raise UserError(
            f"no {inplace_name} variant in {bundle.path} for backend {backend}; "
            f"create it with `trtpipe optimize {bundle.path} --precision {base}` or use kv=pingpong"
        )
    int8_from = inplace_name if kv_cache != "fp32" else None  # OpenVINO's prefill quantizes with its scales
    prefiller = open_prefill(
        bundle, prefill_backend, backend, inplace, base, threads, int8_from
    )  # None: here
    if spin is not None and backend != "ort-cpu":
        raise UserError(
            f"spin= sets the threads of ONNX Runtime's CPU provider; backend {backend} decodes elsewhere"
        )
    if backend == "trt":
        from .trt.decoder import TrtDecoder

        return TrtDecoder.from_bundle(bundle, variant=base), base
    if backend == "ort-cuda":
        from .ort_cuda import OrtCudaDecoder

        return OrtCudaDecoder.from_bundle(bundle, variant=base, threads=threads), base
    from .decoder import DecoderRunner

    chosen = inplace_name if inplace else base
    session = open_session(bundle, backend=backend, variant=chosen, threads=threads, spin=spin)
    return DecoderRunner(bundle, session, inplace, prefiller), chosen
