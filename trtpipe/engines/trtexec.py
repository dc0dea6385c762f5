"""The `trtexec` command line equivalent to a `trtpipe build` (DESIGN §9), for building on a machine with
TensorRT's command-line tools but not this package.

trtexec builds one optimization profile per group of --minShapes/--optShapes/--maxShapes flags, in order, so GPT-2's
two profiles are two groups (profile 0 = prefill, profile 1 = decode); `--profile=N` then selects the profile an
inference run uses. TensorRT-RTX ships the same kind of tool as `tensorrt_rtx`: its line keeps the shape and memory
flags (RTX networks are always strongly typed and it has no timing cache).
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .profiles import SELECTORS

_FLAGS = {"min": "--minShapes", "opt": "--optShapes", "max": "--maxShapes"}


def shape_spec(shapes: dict[str, dict], selector: str) -> str:
    return ",".join(
        f"{name}:{'x'.join(str(int(d)) for d in bounds[selector])}" for name, bounds in shapes.items()
    )


def trtexec_args(
    onnx: Path | str,
    plan: Path | str,
    profiles: list[dict],
    flavour: str = "trt10",
    workspace: int | None = None,
    builder_level: int | None = None,
    timing_cache: Path | str | None = None,
    version_compatible: bool = False,
    hardware_compatible: bool = False,
    tf32: bool = True,
) -> list[str]:
    tool = "trtexec" if flavour == "trt10" else "tensorrt_rtx"
    args = [tool, f"--onnx={onnx}", f"--saveEngine={plan}"]
    if flavour == "trt10":
        args.append("--stronglyTyped")
    for profile in profiles:
        for selector in SELECTORS:
            args.append(f"{_FLAGS[selector]}={shape_spec(profile['shapes'], selector)}")
    if workspace:
        args.append(f"--memPoolSize=workspace:{max(1, workspace >> 20)}M")
    if builder_level is not None:
        args.append(f"--builderOptimizationLevel={builder_level}")
    if flavour == "trt10":
        if timing_cache:
            args.append(f"--timingCacheFile={timing_cache}")
        if version_compatible:
            args.append("--versionCompatible")
        if hardware_compatible:
            args.append("--hardwareCompatibilityLevel=ampere+")
        if not tf32:
            args.append("--noTF32")
        args.append("--skipInference")
    return args


def trtexec_command(*args, **kwargs) -> str:
    """The same as trtexec_args, as one shell-quoted line."""
    return shlex.join(trtexec_args(*args, **kwargs))
