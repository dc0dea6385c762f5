"""The TensorRT stage: an ONNX variant of a bundle → `engines/<variant>.<flavour>-<target>.plan` + a manifest entry.

One builder, two flavours (DESIGN §9): `trt10` (TensorRT 10, builds on and for the GPU at hand) and `rtx`
(TensorRT-RTX: builds ahead of time on a CPU-only machine for RTX compute capabilities, JIT-compiles at first load).
Networks are strongly typed — the ONNX variant decides precision. Encoders get one profile; GPT-2 gets one engine
with two (0 prefill, 1 decode). Before building: the variant is parsed (op-support lint with TensorRT's own parser)
and a memory estimate refuses settings that cannot fit. An IProgressMonitor drives a progress bar. A rebuild is
skipped when nothing changed; the plan and the manifest are written atomically under the bundle's lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..console import info, progress, warn
from ..runtime.bundle import Bundle, bundle_transaction, clean_stale, sha256_file, temp_name
from ..runtime.errors import CheckFailed, UserError
from ..runtime.trt import (
    FLAVOUR_INSTALL,
    FLAVOUR_NAMES,
    FLAVOURS,
    RTX_DEFAULT_CCS,
    RTX_KNOWN_CCS,
    Gpu,
    import_flavour,
    last_error,
    module_available,
    nvidia_gpus,
    slug,
    trt_logger,
)
from .lint import parse_onnx
from .memory import GIB, MemoryEstimate, check_memory, estimate_memory
from .profiles import default_profiles, profiles_from_flags, read_profile_file, shape_flags, validate_profiles
from .trtexec import trtexec_command

ENGINE_VARIANTS = ("fp32", "fp16", "int8-qdq")


@dataclass
class BuildOptions:
    variant: str = "fp32"
    flavour: str | None = None  # trt10 | rtx | None (trt10 with a GPU and TensorRT 10, else rtx)
    min_shapes: str | None = None
    opt_shapes: str | None = None
    max_shapes: str | None = None
    profile_from: Path | None = None
    workspace_gb: float | None = None
    builder_level: int | None = None
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compatible: bool = False
    compute_capabilities: str | None = None  # rtx: "8.6,8.9"
    tf32: bool = True
    gpu_memory_gb: float | None = None  # memory of the target GPU, for ahead-of-time builds
    overwrite: bool = False


@dataclass
class BuildPlan:
    """Every decision of a build, made before TensorRT runs (and testable without it)."""

    bundle: Bundle
    variant: str
    flavour: str
    target: str
    compute_capabilities: list[str]
    portable: bool
    file: str
    onnx: Path
    onnx_sha256: str
    profiles: list[dict]
    flags: dict
    build_args: list[str]
    estimate: MemoryEstimate
    gpu: Gpu | None
    tensorrt_version: str | None
    timing_cache: Path | None
    trtexec: str

    def key(self) -> dict:
        """What an existing engine must match for the build to be skipped."""
        return {
            "flavour": self.flavour,
            "variant": self.variant,
            "target": self.target,
            "compute_capabilities": self.compute_capabilities,
            "onnx_sha256": self.onnx_sha256,
            "profiles": self.profiles,
            "flags": self.flags,
            "tensorrt_version": self.tensorrt_version,
        }


@dataclass
class BuildResult:
    bundle: Path
    file: str
    entry: dict
    skipped: bool
    reason: str
    seconds: float = 0.0
    plan: BuildPlan | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {
            "bundle": str(self.bundle),
            "file": self.file,
            "skipped": self.skipped,
            "reason": self.reason,
            "seconds": round(self.seconds, 3),
            "entry": self.entry,
        }


# ------------------------------------------------------------------------------------------------- decisions


def resolve_flavour(requested: str | None, need_library: bool = True) -> str:
    """The flavour to build; refuses one that cannot build here, naming what is missing and `trtpipe doctor`."""
    gpus = nvidia_gpus()
    has = {f: module_available(m) for f, m in FLAVOURS.items()}
    if requested is not None and requested not in FLAVOURS:
        raise UserError(f"unknown --flavour {requested!r}; choose trt10 (TensorRT 10) or rtx (TensorRT-RTX)")
    if not need_library:
        return requested or ("trt10" if has["trt10"] or not has["rtx"] else "rtx")
    if requested == "trt10" or (requested is None and has["trt10"] and gpus):
        if not has["trt10"]:
            raise UserError(
                f"--flavour trt10 needs TensorRT 10: `{FLAVOUR_INSTALL['trt10']}`; see `trtpipe doctor`"
            )
        if not gpus:
            raise UserError(
                "TensorRT 10 builds need an NVIDIA GPU and none was found (nvidia-smi); build ahead of time with "
                "--flavour rtx (TensorRT-RTX) or run on a GPU machine; see `trtpipe doctor`"
            )
        return "trt10"
    if not has["rtx"]:
        if requested == "rtx":
            raise UserError(
                f"--flavour rtx needs TensorRT-RTX: `{FLAVOUR_INSTALL['rtx']}`; see `trtpipe doctor`"
            )
        raise UserError(
            "no TensorRT to build with: `pip install trtpipe[rtx]` (TensorRT-RTX, builds without a GPU) or "
            "`pip install trtpipe[gpu]` (TensorRT 10, needs a GPU); see `trtpipe doctor`"
        )
    return "rtx"


def parse_compute_capabilities(text: str | None) -> list[str]:
    """ "8.6,8.9" / "sm86,sm89" / "86" → ["8.6", "8.9"], checked against what TensorRT-RTX can target."""
    if not text:
        return []
    out = []
    for part in (p.strip().lower() for p in text.split(",") if p.strip()):
        digits = part.removeprefix("sm").replace("_", "").replace(".", "")
        if not digits.isdigit() or len(digits) not in (2, 3):
            raise UserError(
                f"--compute-capabilities {part!r} is not a compute capability; write e.g. 8.6,8.9"
            )
        cc = f"{digits[:-1]}.{digits[-1]}"
        if cc not in RTX_KNOWN_CCS:
            raise UserError(
                f"TensorRT-RTX cannot target compute capability {cc}; choose from {', '.join(RTX_KNOWN_CCS)} "
                "(RTX-class GPUs: Turing, Ampere, Ada, Blackwell)"
            )
        if cc not in out:
            out.append(cc)
    return out


def _check_options(options: BuildOptions, flavour: str) -> None:
    if options.builder_level is not None and not 0 <= options.builder_level <= 5:
        raise UserError(f"--builder-level must be 0-5 (got {options.builder_level})")
    if options.workspace_gb is not None and options.workspace_gb <= 0:
        raise UserError(f"--workspace must be > 0 GB (got {options.workspace_gb:g})")
    if options.gpu_memory_gb is not None and options.gpu_memory_gb <= 0:
        raise UserError(f"--gpu-memory must be > 0 GB (got {options.gpu_memory_gb:g})")
    if options.profile_from and (options.min_shapes or options.opt_shapes or options.max_shapes):
        raise UserError("give either --profile-from FILE or --min/--opt/--max-shapes, not both")
    if flavour == "rtx":
        for given, name in (
            (options.version_compatible, "--version-compatible"),
            (options.hardware_compatible, "--hardware-compatible"),
            (options.timing_cache, "--timing-cache"),
        ):
            if given:
                raise UserError(
                    f"{name} is a TensorRT 10 option; TensorRT-RTX plans are portable across RTX GPUs by default "
                    "(choose targets with --compute-capabilities) and keep no timing cache"
                )
    elif options.compute_capabilities:
        raise UserError(
            "--compute-capabilities is for TensorRT-RTX ahead-of-time builds; TensorRT 10 builds for the GPU it runs "
            "on (add --hardware-compatible for any Ampere-or-newer GPU)"
        )


def choose_profiles(bundle: Bundle, options: BuildOptions) -> list[dict]:
    if options.profile_from:
        return read_profile_file(Path(options.profile_from), bundle, options.variant)
    profiles = profiles_from_flags(
        bundle, options.min_shapes, options.opt_shapes, options.max_shapes, options.variant
    )
    return validate_profiles(bundle, profiles, options.variant)


def _cuda_version(flavour: str) -> str | None:
    """The CUDA major version the installed TensorRT wheel is built for (tensorrt_rtx_cu13 → "13")."""
    from importlib import metadata

    prefix = {"trt10": ("tensorrt_cu", "tensorrt-cu"), "rtx": ("tensorrt_rtx_cu", "tensorrt-rtx-cu")}[flavour]
    for dist in metadata.distributions():
        name = (dist.metadata.get("Name") or "").lower()
        for p in prefix:
            match = re.fullmatch(re.escape(p) + r"(\d+)(?:[_-].*)?", name)
            if match:
                return match.group(1)
    return None


def plan_build(
    bundle_path: Path | str | Bundle, options: BuildOptions, need_library: bool = True
) -> BuildPlan:
    """All the decisions of a build. need_library=False plans without TensorRT (for --print-trtexec)."""
    bundle = bundle_path if isinstance(bundle_path, Bundle) else Bundle.load(bundle_path)
    variant = options.variant or "fp32"
    if variant not in ENGINE_VARIANTS:
        raise UserError(
            f"TensorRT builds the fp32, fp16 and int8-qdq variants; {variant!r} is for ONNX Runtime "
            f"(choose --variant {' | '.join(ENGINE_VARIANTS)})"
        )
    entry = bundle.variant(variant)  # a missing variant → "create it with `trtpipe optimize … --precision …`"
    if entry.get("ort_only"):
        raise UserError(
            f"variant {variant} of {bundle.path} uses ONNX Runtime-only ops; TensorRT cannot build it"
        )
    flavour = resolve_flavour(options.flavour, need_library)
    _check_options(options, flavour)
    trt_version = getattr(import_flavour(flavour), "__version__", None) if need_library else None
    profiles = choose_profiles(bundle, options)
    gpus = nvidia_gpus()
    gpu = gpus[0] if gpus else None
    portable = False
    if flavour == "rtx":
        ccs = parse_compute_capabilities(options.compute_capabilities)
        if ccs:
            target = "-".join("sm" + cc.replace(".", "") for cc in ccs)
        else:
            ccs, portable, target = list(RTX_DEFAULT_CCS), True, "sm80plus"
    elif options.hardware_compatible:
        ccs, target = [gpu.compute_capability if gpu else "8.0"], "ampere-plus"
    elif gpu is not None:
        ccs, target = [gpu.compute_capability], f"{slug(gpu.name)}-{gpu.sm}"
    else:  # planning a trtexec line on a machine without a GPU
        ccs, target = [], "gpu"
    file = f"engines/{variant}.{flavour}-{target}.plan"
    onnx = bundle.model_path(variant)
    onnx_sha = entry["sha256"].get(entry["file"]) or sha256_file(onnx)
    workspace = int(options.workspace_gb * GIB) if options.workspace_gb else None
    estimate = estimate_memory(bundle, variant, profiles, workspace=workspace)
    gpu_memory = (
        int(options.gpu_memory_gb * GIB) if options.gpu_memory_gb else (gpu.memory_bytes if gpu else None)
    )
    gpu_name = (
        f"the {options.gpu_memory_gb:g} GB target GPU"
        if options.gpu_memory_gb
        else (gpu.name if gpu else "the GPU")
    )
    check_memory(estimate, gpu_memory, gpu_name)
    timing_cache = None
    if flavour == "trt10":
        timing_cache = (
            Path(options.timing_cache) if options.timing_cache else bundle.path / "engines" / "timing.cache"
        )
    flags = {
        "strongly_typed": True,
        "workspace_bytes": workspace,
        "builder_optimization_level": 3 if options.builder_level is None else options.builder_level,
        "tf32": options.tf32,
        "version_compatible": options.version_compatible,
        "hardware_compatibility": "ampere+" if options.hardware_compatible else "none",
        "timing_cache": flavour == "trt10",
    }
    build_args = _build_args(bundle, variant, flavour, profiles, options)
    trtexec = trtexec_command(
        onnx,
        bundle.path / file,
        profiles,
        flavour=flavour,
        workspace=workspace,
        builder_level=options.builder_level,
        timing_cache=timing_cache,
        version_compatible=options.version_compatible,
        hardware_compatible=options.hardware_compatible,
        tf32=options.tf32,
    )
    return BuildPlan(
        bundle=bundle,
        variant=variant,
        flavour=flavour,
        target=target,
        compute_capabilities=ccs,
        portable=portable,
        file=file,
        onnx=onnx,
        onnx_sha256=onnx_sha,
        profiles=profiles,
        flags=flags,
        build_args=build_args,
        estimate=estimate,
        gpu=gpu,
        tensorrt_version=trt_version,
        timing_cache=timing_cache,
        trtexec=trtexec,
    )


def _build_args(
    bundle: Bundle, variant: str, flavour: str, profiles: list[dict], options: BuildOptions
) -> list[str]:
    """CLI arguments that rebuild this engine (recorded in the manifest for the runtime's rebuild hint)."""
    args = ["--variant", variant, "--flavour", flavour]
    if profiles != default_profiles(bundle, variant):
        for sel, value in shape_flags(profiles, bundle.is_decoder).items():
            args += [f"--{sel}-shapes", value]
    if options.workspace_gb:
        args += ["--workspace", f"{options.workspace_gb:g}"]
    if options.builder_level is not None:
        args += ["--builder-level", str(options.builder_level)]
    if options.timing_cache:
        args += ["--timing-cache", str(options.timing_cache)]
    if options.version_compatible:
        args.append("--version-compatible")
    if options.hardware_compatible:
        args.append("--hardware-compatible")
    if options.compute_capabilities:
        args += ["--compute-capabilities", ",".join(parse_compute_capabilities(options.compute_capabilities))]
    if not options.tf32:
        args.append("--no-tf32")
    return args


def up_to_date(plan: BuildPlan) -> tuple[bool, str]:
    """(True, why) when the bundle already holds this exact engine; else (False, what differs)."""
    existing = plan.bundle.engines.get(plan.file)
    if not isinstance(existing, dict):
        return False, "new engine"
    changed = [k for k, v in plan.key().items() if existing.get(k) != v]
    if changed:
        return False, f"{', '.join(changed)} changed"
    path = plan.bundle.path / plan.file
    if (
        not path.is_file()
        or path.stat().st_size != existing.get("bytes")
        or sha256_file(path) != existing.get("sha256")
    ):
        return False, "plan file missing or modified"
    return True, "up to date (same ONNX, profiles, flags and TensorRT version)"


# --------------------------------------------------------------------------------------------------- building


class _Progress:
    """Drives a rich progress bar from TensorRT's IProgressMonitor callbacks (called from builder threads)."""

    def __init__(self, bar):
        self.bar = bar
        self.lock = threading.Lock()
        self.tasks: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.depth: dict[str, int] = {}
        self.phases = 0
        self.steps = 0
        self.cancelled = False

    def start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self.phases += 1
            depth = 0 if parent is None else self.depth.get(parent, 0) + 1
            self.depth[name] = depth
            if depth <= 1:
                self.totals[name] = max(1, int(steps))
                self.tasks[name] = self.bar.add_task(("  " * depth) + name, total=self.totals[name])

    def step(self, name: str, step: int) -> bool:
        with self.lock:
            self.steps += 1
            task = self.tasks.get(name)
            if task is not None:
                self.bar.update(task, completed=int(step) + 1)
            return not self.cancelled

    def finish(self, name: str) -> None:
        with self.lock:
            task = self.tasks.pop(name, None)
            depth = self.depth.pop(name, 0)
            if task is None:
                return
            total = self.totals.pop(name, 1)
            if depth > 0:
                self.bar.remove_task(task)
            else:
                self.bar.update(task, completed=total)


def make_monitor(trt, state: _Progress):
    """An IProgressMonitor of the flavour's module that forwards to `state` and never raises into TensorRT."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            with contextlib.suppress(Exception):
                state.start(str(phase_name), parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            try:
                return state.step(str(phase_name), step)
            except Exception:
                return True

        def phase_finish(self, phase_name):
            with contextlib.suppress(Exception):
                state.finish(str(phase_name))

    return Monitor()


@contextlib.contextmanager
def _cancel_on_interrupt(state: _Progress):
    """Ctrl-C during a build asks TensorRT to stop at the next step (it holds the thread until then)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        state.cancelled = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
        state = _Progress(bar)
        monitor = make_monitor(trt, state)
        config.progress_monitor = monitor
        with _cancel_on_interrupt(state):
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


def _entry(plan: BuildPlan, seconds: float, state: _Progress) -> dict:
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
        "cuda_version": _cuda_version(plan.flavour),
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


# ------------------------------------------------------------------------------------------------- defaults


def bundles_in(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(
            f"{out_dir} is not a directory of bundles; run `make export` (or `trtpipe export-defaults`) first"
        )
    found = sorted(p for p in out_dir.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    if not found:
        raise UserError(
            f"no bundles in {out_dir}; run `make export` (or `trtpipe export-defaults --out {out_dir}`) first"
        )
    return found


def build_defaults(out_dir: Path, flavour: str = "rtx", overwrite: bool = False) -> list[BuildResult]:
    """What `make engines` runs: an engine per bundle and TensorRT variant (fp32, and fp16 / int8-qdq where they
    exist), skipping what is up to date. A failed fp32 build fails the run; a lossy variant that this TensorRT
    cannot build is reported and skipped."""
    results: list[BuildResult] = []
    failures: list[str] = []
    for path in bundles_in(out_dir):
        bundle = Bundle.load(path)
        for variant in (v for v in ENGINE_VARIANTS if v in bundle.variants):
            try:
                result = build_engine(
                    path, BuildOptions(variant=variant, flavour=flavour, overwrite=overwrite)
                )
            except UserError as exc:
                if variant == "fp32":
                    failures.append(f"{path.name} {variant}: {exc}")
                else:
                    warn(f"{path.name} {variant}: not built: {exc}")
                continue
            status = "up to date" if result.skipped else f"built in {result.seconds:.1f}s"
            info(f"{path.name}: {result.file} {status}")
            results.append(result)
    if failures:
        raise CheckFailed("engine builds failed:\n  " + "\n  ".join(failures))
    return results


def describe_plan(plan: BuildPlan) -> list[tuple[str, str]]:
    rows = [
        ("engine", f"{plan.bundle.path}/{plan.file}"),
        ("flavour", f"{FLAVOUR_NAMES[plan.flavour]} {plan.tensorrt_version or ''}".strip()),
        ("target", f"{plan.target} (compute capability {', '.join(plan.compute_capabilities) or '?'})"),
        ("variant", plan.variant),
        ("memory", plan.estimate.summary()),
    ]
    return rows


__all__ = [
    "BuildOptions",
    "BuildPlan",
    "BuildResult",
    "build_defaults",
    "build_engine",
    "plan_build",
    "resolve_flavour",
    "up_to_date",
]
