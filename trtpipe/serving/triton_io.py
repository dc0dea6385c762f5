"""Triton Python-backend I/O for trtpipe models: request tensors → text and per-row numbers, answers → output
tensors, exceptions → error responses (a UserError is the client's fault: INVALID_ARG, HTTP 400).

Imported only inside Triton's Python backend stub (it needs `triton_python_backend_utils`).
"""

from __future__ import annotations

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from ..runtime import UserError


def params(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


def threads(setting: str, config: dict, generation: bool = False) -> int | None:
    """Intra-op threads per instance. "auto": half the CPUs, shared among the model's instances (at least 1).
    The other half is for Triton's HTTP/gRPC threads, the batcher and the stubs' IPC, which ONNX Runtime's
    (spin-waiting) workers on every core compete with: on 2 cores, 1 thread per instance served 2.2x the
    requests/s of 2 (docs/serving.md). A generation instance gets all its share of the CPUs: its one engine thread
    does all the work while the server's threads mostly wait (2 threads decoded 1.7x the tokens/s of 1 here)."""
    if setting in ("", "default"):
        return None
    if setting != "auto":
        return max(1, int(setting))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group") or [{}]) or 1
    return max(1, cpus // ((1 if generation else 2) * instances))


def error_response(exc: BaseException):
    """An error response: UserError → invalid argument (HTTP 400), anything else → internal (500)."""
    kind = pb_utils.TritonError
    if isinstance(exc, UserError):
        code = getattr(kind, "INVALID_ARG", None)
        message = str(exc)
    else:
        code = getattr(kind, "INTERNAL", None)
        message = f"internal error: {exc.__class__.__name__}: {exc}"
    try:
        error = kind(message, code) if code is not None else kind(message)
    except TypeError:  # older Python backends take the message only
        error = kind(message)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def texts(request, name: str, required: bool = True) -> list[str] | None:
    """A BYTES input as one str per row (rows = the request's batch)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        if required:
            raise UserError(f"input {name!r} is missing")
        return None
    values = tensor.as_numpy().reshape(-1)
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, str):
            texts.append(value)
            continue
        try:
            texts.append(bytes(value).decode("utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"input {name!r} row {index + 1} is not UTF-8 text") from None
    return texts


def row_values(request, name: str, rows: int) -> np.ndarray | None:
    """An optional numeric per-row input, one value per row."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    values = tensor.as_numpy().reshape(-1)
    if len(values) != rows:
        raise UserError(f"input {name!r} has {len(values)} values for {rows} rows; give one per row")
    return values


def bytes_array(strings: list[str]) -> np.ndarray:
    return np.array([s.encode("utf-8") for s in strings], dtype=np.object_).reshape(-1, 1)


def tensor(name: str, value: np.ndarray):
    return pb_utils.Tensor(name, value)
