"""Triton Python-backend I/O for trtpipe models: request tensors → text and per-row numbers, answers → output
tensors, exceptions → error responses (a UserError is the client's fault: INVALID_ARG, HTTP 400, in the words of
the request: its input names, and no switch the request cannot pass, such as truncate).

Imported only inside Triton's Python backend stub (it needs `triton_python_backend_utils`).
"""

from __future__ import annotations

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from ..runtime import UserError
from ..runtime.request import EngineStopped


def params(config: dict) -> dict[str, str]:
    return {key: value.get("string_value", "") for key, value in (config.get("parameters") or {}).items()}


LIGHT_FLOPS_PER_TOKEN = 1e6  # below this a forward pass is too small to split across threads


def flops_per_token(model: dict) -> float:
    """Forward FLOPs of one token through the transformer layers (2 × the per-layer matmul weights, counted once
    per layer even where ALBERT shares them), from a bundle manifest's `model` summary; embeddings cost none."""
    hidden = int(model.get("hidden_size") or 0)
    layers = int(model.get("num_layers") or 0)
    inner = int(model.get("intermediate_size") or 4 * hidden)
    return 2.0 * layers * (4 * hidden * hidden + 2 * hidden * inner)


def threads(setting: str, config: dict, light: bool = False) -> int | None:
    """Intra-op threads per instance. "auto": the CPUs shared among the model's instances (at least 1), or half of
    that for a `light` model (under LIGHT_FLOPS_PER_TOKEN, a tiny test model). Measured on 2 cores, 8 clients of
    real mixed-length text (docs/serving.md): MiniLM served 1.58x the requests/s with 2 threads than with 1, the demo
    BERT 1.52x; only the tiny BERT, whose forward pass is shorter than Triton's own per-request work, served more
    with 1 (1.31x) leaving a core to the HTTP threads, the batcher and the stubs' IPC. Generation decodes 1.7x the
    tokens/s with 2 threads than with 1."""
    if setting in ("", "default"):
        return None
    if setting != "auto":
        return max(1, int(setting))
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    instances = sum(int(g.get("count", 1)) for g in config.get("instance_group") or [{}]) or 1
    return max(1, cpus // ((2 if light else 1) * instances))


def error_response(exc: BaseException):
    """An error response: UserError → invalid argument (HTTP 400), a stopped engine or server → unavailable (gRPC
    UNAVAILABLE; the wheel's HTTP endpoint answers it 400 too), anything else → internal (500)."""
    kind = pb_utils.TritonError
    if isinstance(exc, EngineStopped):
        code = getattr(kind, "UNAVAILABLE", None)
        message = str(exc)
    elif isinstance(exc, UserError):
        code = getattr(kind, "INVALID_ARG", None)
        message = exc.render(switch=False)  # field names are the input names; Triton has no `truncate` input
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
