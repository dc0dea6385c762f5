"""Which TensorRT 10 engine Triton's tensorrt backend serves for a bundle (--engine, or the only one of the
variant), checked for presence, sha256 and the batch it is asked to take."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.paths import sha256_file


def pick_engine(bundle: Bundle, variant: str | None, engine: str | None) -> tuple[str, dict]:
    """The TensorRT 10 engine to serve: `engine` (--engine), or the only trt10 engine of the variant."""
    variant = variant or "fp32"
    build = f"trtpipe build {bundle.path}"
    engines = bundle.engines
    if engine:
        if engine not in engines:
            listed = ", ".join(sorted(engines)) or "none"
            raise UserError(
                f"bundle {bundle.path} has no engine {engine!r} (has: {listed}); build it with `{build}`"
            )
        candidates = {engine: engines[engine]}
    else:
        candidates = {
            f: e for f, e in engines.items() if e.get("variant", Path(f).name.split(".")[0]) == variant
        }
    trt10 = {f: e for f, e in candidates.items() if e.get("flavour") == "trt10"}
    if not trt10:
        if candidates:
            flavours = ", ".join(sorted({str(e.get("flavour")) for e in candidates.values()}))
            raise UserError(
                f"bundle {bundle.path} has only {flavours} engines for {variant}; Triton's tensorrt backend loads "
                f"TensorRT 10 plans only (rtx plans need the TensorRT-RTX runtime): build a trt10 engine with "
                f"`{build}` on a machine with the serving GPU, or use --backend onnxruntime"
            )
        raise UserError(
            f"bundle {bundle.path} has no TensorRT engine for variant {variant}; build one with `{build}` "
            "(on a machine with the serving GPU), or use --backend onnxruntime"
        )
    if len(trt10) > 1:
        raise UserError(
            f"bundle {bundle.path} has {len(trt10)} TensorRT 10 engines for {variant} ({', '.join(sorted(trt10))}); "
            "choose the one built for the serving GPU with --engine FILE"
        )
    engine, entry = next(iter(trt10.items()))
    path = bundle.file(engine)
    if not path.is_file():
        raise UserError(
            f"bundle {bundle.path}: engine {engine} is listed but missing; rebuild it with `{build}`"
        )
    if isinstance(entry.get("sha256"), str) and sha256_file(path) != entry["sha256"]:
        raise UserError(
            f"bundle {bundle.path}: engine {engine} does not match its sha256; rebuild it with `{build}`"
        )
    return engine, entry


def profile_max_batch(entry: dict) -> int | None:
    """The largest batch every optimisation profile accepts, where the manifest records profile shapes
    (any {"min": [...], "opt": [...], "max": [B, ...]} under `profiles`)."""
    found: list[int] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            shape = node.get("max")
            if isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape):
                found.append(shape[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(entry.get("profiles"))
    return min(found) if found else None


def check_profile(bundle: Bundle, engine: str, entry: dict, max_batch: int) -> None:
    limit = profile_max_batch(entry)
    if limit is not None and max_batch > limit:
        raise UserError(
            f"engine {engine} of {bundle.path} accepts batches up to {limit}, below --max-batch {max_batch}; "
            f"pass --max-batch {limit}, or rebuild the engine with a larger profile (`trtpipe build {bundle.path}`)"
        )
