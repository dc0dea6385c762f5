"""The TensorRT stage: an ONNX variant of a bundle → `engines/<variant>.<flavour>-<target>.plan` + a manifest entry.

One builder, two flavours (DESIGN §9): `trt10` (TensorRT 10, builds on and for the GPU at hand) and `rtx`
(TensorRT-RTX: builds ahead of time on a CPU-only machine for RTX compute capabilities, JIT-compiles at first load).
Networks are strongly typed — the ONNX variant decides precision. The variant is parsed first (TensorRT's own
parser names any node it cannot take); a rebuild is skipped when nothing changed (`plan.up_to_date`); the plan and
the manifest are written atomically under the bundle's lock.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from ..console import progress
from ..runtime.errors import UserError
from ..runtime.store import bundle_transaction, clean_stale, temp_name
from ..runtime.trt.platform import FLAVOUR_NAMES, import_flavour, last_error, trt_logger
from .lint import parse_onnx
from .plan import BuildOptions, BuildPlan, BuildResult, cuda_version, plan_build, up_to_date
from .progress import BuildProgress, cancel_on_interrupt, make_monitor


def _configure(trt, builder, config, plan: BuildPlan) -> None:
    flags = plan.flags
    if flags["workspace_bytes"]:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, flags["workspace_bytes"])
    config.builder_optimization_level = flags["builder_optimization_level"]
    if not flags["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.flavour == "rtx":
        if not plan.portable:
            members = {f"{cc.replace('.', '')}": cc for cc in plan.compute_capabilities}
            config.num_compute_capabilities = len(members)
            for index, digits in enumerate(members):
                if not config.set_compute_capability(getattr(trt.ComputeCapability, f"SM{digits}"), index):
                    raise UserError(f"TensorRT-RTX refused compute capability {members[digits]}")
    else:
        if flags["version_compatible"]:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if flags["hardware_compatibility"] == "ampere+":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    for index, profile in enumerate(plan.profiles):
        shapes = builder.create_optimization_profile()
        for name, bounds in profile["shapes"].items():
            shapes.set_shape(name, tuple(bounds["min"]), tuple(bounds["opt"]), tuple(bounds["max"]))
        added = config.add_optimization_profile(shapes)
        if added != index:
            raise UserError(
                f"TensorRT rejected optimization profile {index} ({profile['name']}): {profile['shapes']}"
            )


def _load_timing_cache(config, path: Path | None):
    data = b""
    if path is not None and path.is_file():
        data = path.read_bytes()
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=True)
    return cache


def _save_timing_cache(config, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    with open(tmp, "wb") as handle:
        handle.write(memoryview(cache.serialize()))
    os.replace(tmp, path)


def _write_plan(blob, target: Path) -> tuple[str, int]:
    view = memoryview(blob)
    digest = hashlib.sha256()
    chunk = 1 << 26
    with open(target, "wb") as handle:
        for start in range(0, len(view), chunk):
            piece = view[start : start + chunk]
            digest.update(piece)
            handle.write(piece)
        handle.flush()
        os.fsync(handle.fileno())
    return digest.hexdigest(), len(view)


def build_engine(bundle_path: Path | str, options: BuildOptions) -> BuildResult:
    """Build (or skip, when up to date) one engine and record it in the bundle's manifest."""
    plan = plan_build(bundle_path, options)
    fresh, reason = up_to_date(plan)
    if fresh and not options.overwrite:
        return BuildResult(
            plan.bundle.path, plan.file, plan.bundle.engines[plan.file], True, reason, plan=plan
        )
    trt = import_flavour(plan.flavour)
    logger = trt_logger(trt)
    started = time.perf_counter()
    builder, network, parser, findings = parse_onnx(trt, plan.onnx, logger)
    if findings:
        first = findings[0]
        more = f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""
        raise UserError(
            f"{FLAVOUR_NAMES[plan.flavour]} cannot parse {plan.onnx.name}: node {first.node} ({first.op}): "
            f"{first.reason}{more}; `trtpipe lint {plan.bundle.path} --variant {plan.variant}` lists every node"
        )
    config = builder.create_builder_config()
    _configure(trt, builder, config, plan)
    if plan.flavour == "trt10":
        _load_timing_cache(config, plan.timing_cache)
    state = None
    with progress(transient=True) as bar:
        bar.add_task(
            f"building {plan.file} ({FLAVOUR_NAMES[plan.flavour]} {plan.tensorrt_version}, "
            f"{'forced rebuild' if fresh else reason})",
            total=None,
        )
        state = BuildProgress(bar)
        monitor = make_monitor(trt, state)
        config.progress_monitor = monitor
        with cancel_on_interrupt(state):
            blob = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    del parser
    if blob is None:
        if state.cancelled:
            raise KeyboardInterrupt
        raise UserError(
            f"{FLAVOUR_NAMES[plan.flavour]} could not build {plan.variant} for {plan.target}: {last_error(logger)}"
        )
    if plan.flavour == "trt10" and plan.timing_cache is not None:
        _save_timing_cache(config, plan.timing_cache)
    entry = _entry(plan, seconds, state)
    with bundle_transaction(plan.bundle.path) as (locked, stage):
        clean_stale(locked.path / "engines", ".")  # temp files of a killed build
        source = locked.variants.get(plan.variant, {})
        if source.get("sha256", {}).get(source.get("file")) != plan.onnx_sha256:
            raise UserError(f"{plan.onnx.name} changed while the engine was being built; run the build again")
        tmp = stage(locked.path / plan.file)
        entry["sha256"], entry["bytes"] = _write_plan(blob, tmp)
        locked.manifest.setdefault("engines", {})[plan.file] = entry
    del blob
    return BuildResult(plan.bundle.path, plan.file, entry, False, reason, seconds, plan=plan)


def _entry(plan: BuildPlan, seconds: float, state: BuildProgress) -> dict:
    gpu = plan.gpu if plan.flavour == "trt10" else None
    entry = {
        "flavour": plan.flavour,
        "variant": plan.variant,
        "precision": plan.bundle.variants[plan.variant].get("precision", plan.variant),
        "target": plan.target,
        "compute_capabilities": plan.compute_capabilities,
        "portable": plan.portable,
        "gpu": gpu.name if gpu else None,
        "tensorrt_version": plan.tensorrt_version,
        "cuda_version": cuda_version(plan.flavour),
        "driver_version": gpu.driver if gpu else None,
        "profiles": plan.profiles,
        "onnx": plan.bundle.variants[plan.variant]["file"],
        "onnx_sha256": plan.onnx_sha256,
        "flags": plan.flags,
        "build_args": plan.build_args,
        "build_seconds": round(seconds, 3),
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "memory_estimate": plan.estimate.to_dict(),
        "progress": {"phases": state.phases, "steps": state.steps},
        "trtexec": plan.trtexec,
    }
    return entry
