"""Every decision of a TensorRT build, made before TensorRT runs and testable without it: the flavour, the
target, the profiles, the flags, the memory check, the equivalent trtexec line, and whether the engine the bundle
already has is up to date."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.paths import sha256_file
from ..runtime.trt.platform import (
    FLAVOUR_INSTALL,
    FLAVOURS,
    RTX_DEFAULT_CCS,
    RTX_KNOWN_CCS,
    Gpu,
    import_flavour,
    module_available,
    nvidia_gpus,
    slug,
)
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


def cuda_version(flavour: str) -> str | None:
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
