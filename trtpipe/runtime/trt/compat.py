"""Will this engine run here? The manifest guard: flavour, TensorRT version, GPU and source ONNX of an engine entry
checked against the machine, each refusal naming the exact command that rebuilds it; and the choice among a
bundle's engines."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..bundle import Bundle
from ..errors import UserError, with_article
from .platform import FLAVOUR_NAMES, FLAVOURS, Gpu, installed_version, module_available, nvidia_gpus

# Options that only one flavour takes, with how many values follow each.
_FLAVOUR_ONLY = {
    "rtx": {"--compute-capabilities": 1},
    "trt10": {"--version-compatible": 0, "--hardware-compatible": 0, "--timing-cache": 1},
}


def rebuild_command(bundle_path: Path | str, entry: dict, flavour: str | None = None) -> str:
    """The exact command that rebuilds an engine entry (optionally for another flavour)."""
    args = list(entry.get("build_args") or ["--variant", entry.get("variant", "fp32")])
    built = entry.get("flavour", "rtx")
    flavour = flavour or built
    if flavour != built:
        args = _drop_options(args, _FLAVOUR_ONLY.get(built, {}))
    if "--flavour" in args:
        args[args.index("--flavour") + 1] = flavour
    else:
        args += ["--flavour", flavour]
    return shlex.join(["trtpipe", "build", str(bundle_path), *args, "--overwrite"])


def _drop_options(args: list[str], options: dict[str, int]) -> list[str]:
    out, skip = [], 0
    for arg in args:
        if skip:
            skip -= 1
        elif arg in options:
            skip = options[arg]
        else:
            out.append(arg)
    return out


@dataclass(frozen=True)
class Environment:
    """What an engine must match: the flavour's library version and the GPU."""

    flavour: str
    version: str | None
    gpu: Gpu | None


def rtx_supports(entry: dict, cc: str) -> bool:
    ccs = entry.get("compute_capabilities") or []
    if cc in ccs:
        return True
    try:
        major = int(cc.split(".")[0])
    except ValueError:
        return False
    return bool(entry.get("portable")) and major >= 12  # "8.0, 8.6, 8.9, 12.0 and later"


def check_engine(bundle: Bundle, file: str, entry: dict, env: Environment) -> None:
    """Refuse an engine that does not match this machine or the bundle's ONNX, with the command that rebuilds it."""
    flavour = entry.get("flavour")
    variant = entry.get("variant", "fp32")
    if flavour not in FLAVOURS:
        raise UserError(
            f"{bundle.path}/{file}: unknown flavour {flavour!r} in manifest.json; rebuild it: `{rebuild_command(bundle.path, entry, 'rtx')}`"
        )
    source = bundle.variants.get(variant)
    if source is None:
        raise UserError(
            f"{bundle.path}/{file} was built from variant {variant}, which the bundle no longer has; "
            f"recreate it with `trtpipe optimize {bundle.path} --precision {variant}` and rebuild: "
            f"`{rebuild_command(bundle.path, entry)}`"
        )
    current = (source.get("sha256") or {}).get(source.get("file"))
    if entry.get("onnx_sha256") != current:
        raise UserError(
            f"{bundle.path}/{file} was built from a different {source.get('file')} (sha256 {str(entry.get('onnx_sha256'))[:12]}…, "
            f"now {str(current)[:12]}…); rebuild it: `{rebuild_command(bundle.path, entry)}`"
        )
    if env.gpu is None:
        raise UserError(
            "backend trt needs an NVIDIA GPU, and none was found (nvidia-smi); see `trtpipe doctor`"
        )
    gpu = env.gpu
    if flavour != env.flavour:
        raise UserError(
            f"{bundle.path}/{file} is {with_article(FLAVOUR_NAMES[flavour])} plan but this machine runs {FLAVOUR_NAMES[env.flavour]}; "
            f"rebuild it: `{rebuild_command(bundle.path, entry, env.flavour)}`"
        )
    built = str(entry.get("tensorrt_version") or "")
    if flavour == "trt10":
        cc_ok = gpu.compute_capability in (entry.get("compute_capabilities") or [])
        if entry.get("flags", {}).get("hardware_compatibility") == "ampere+":
            cc_ok = _cc_at_least(gpu.compute_capability, "8.0")
        if not cc_ok:
            raise UserError(
                f"{bundle.path}/{file} was built for {entry.get('target')} (compute capability "
                f"{', '.join(entry.get('compute_capabilities') or ['?'])}) but this GPU is {gpu.name} "
                f"(compute capability {gpu.compute_capability}); rebuild it here: `{rebuild_command(bundle.path, entry)}`"
            )
        same = built == (env.version or "")
        if entry.get("flags", {}).get("version_compatible"):
            same = _version_tuple(env.version or "0")[:1] == _version_tuple(built)[:1] and _version_tuple(
                env.version or "0"
            ) >= _version_tuple(built)
        if not same:
            raise UserError(
                f"{bundle.path}/{file} was built with TensorRT {built or '?'} but this is TensorRT {env.version}; "
                f"plans are tied to the TensorRT version that built them: `{rebuild_command(bundle.path, entry)}`"
            )
        return
    # TensorRT-RTX: RTX-class GPUs only.
    if not rtx_supports(entry, gpu.compute_capability):
        if gpu.compute_capability.split(".")[0] in ("9", "10"):
            raise UserError(
                f"{bundle.path}/{file} is a TensorRT-RTX plan, which runs on RTX-class GPUs, not on {gpu.name} "
                f"(compute capability {gpu.compute_capability}); build a TensorRT 10 engine here: "
                f"`{rebuild_command(bundle.path, entry, 'trt10')}`"
            )
        raise UserError(
            f"{bundle.path}/{file} targets compute capability {', '.join(entry.get('compute_capabilities') or ['?'])} "
            f"but {gpu.name} is {gpu.compute_capability}; rebuild it: "
            f"`{rebuild_command(bundle.path, entry)} --compute-capabilities {gpu.compute_capability}`"
        )
    if _version_tuple(built)[:2] != _version_tuple(env.version or "0")[:2]:
        raise UserError(
            f"{bundle.path}/{file} was built with TensorRT-RTX {built or '?'} but this is TensorRT-RTX {env.version}; "
            f"rebuild it: `{rebuild_command(bundle.path, entry)}`"
        )


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text or "")[:4]) or (0,)


def _cc_at_least(cc: str, floor: str) -> bool:
    return _version_tuple(cc) >= _version_tuple(floor)


def current_environment(flavour: str, trt=None) -> Environment:
    gpus = nvidia_gpus()
    version = getattr(trt, "__version__", None) if trt is not None else installed_version(flavour)
    return Environment(flavour, version, gpus[0] if gpus else None)


def engine_entries(bundle: Bundle, variant: str) -> list[tuple[str, dict]]:
    return [(f, e) for f, e in bundle.engines.items() if isinstance(e, dict) and e.get("variant") == variant]


def choose_engine(bundle: Bundle, variant: str) -> tuple[str, dict]:
    """The engine entry for `variant` that this machine can run, or a one-line UserError naming what is missing."""
    entries = engine_entries(bundle, variant)
    if not nvidia_gpus():
        raise UserError(
            "backend trt needs an NVIDIA GPU, and none was found (nvidia-smi); see `trtpipe doctor`"
        )
    installed = [f for f in ("trt10", "rtx") if module_available(FLAVOURS[f])]
    if not installed:
        raise UserError(
            "backend trt needs TensorRT: `pip install trtpipe[gpu]` (TensorRT 10) or `pip install trtpipe[rtx]` "
            "(TensorRT-RTX, RTX GPUs); see `trtpipe doctor`"
        )
    if not entries:
        raise UserError(
            f"{bundle.path} has no TensorRT engine for variant {variant}; build one with "
            f"`trtpipe build {bundle.path} --variant {variant}`"
        )
    first_error: UserError | None = None
    for flavour in installed:
        env = current_environment(flavour)
        for file, entry in sorted(entries, key=lambda fe: fe[1].get("flavour") != flavour):
            try:
                check_engine(bundle, file, entry, env)
            except UserError as exc:
                first_error = first_error or exc
                continue
            return file, entry
    assert first_error is not None
    raise first_error
