"""What this CPU can compute, read from /proc/cpuinfo without heavy imports: the check behind int8 variants whose
weights are full-range s8 (`optimize --int8-weights s8`). ONNX Runtime multiplies u8 activations by s8 weights with
VNNI's 32-bit dot product where the CPU has it (avx512_vnni, avx_vnni); x86 CPUs without it add pairs of products in
16 bits with saturation, and full-range s8 weights overflow there. Other architectures accumulate in 32 bits."""

from __future__ import annotations

import platform

VNNI = ("avx512_vnni", "avx_vnni")


def x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cpuinfo() -> dict[str, str]:
    """The first CPU's fields in /proc/cpuinfo (its first value of each key), {} where there is none (not Linux).
    The one reader of that file: the runtime's check below and the benchmark's roofs (benchmark/floors.py)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if not line.strip() and fields:
                    break  # the end of the first CPU's block
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str] | None:
    """The first CPU's flags, None where /proc/cpuinfo does not say (not Linux)."""
    flags = cpuinfo().get("flags")
    return set(flags.split()) if flags is not None else None


def missing(needs: list[str] | tuple[str, ...]) -> list[str]:
    """Of a variant's `cpu_needs`, what this CPU lacks. "vnni" only matters on x86; a CPU whose flags cannot be
    read is given the benefit of the doubt (its answers were gated where the bundle was built)."""
    lacking = []
    if "vnni" in needs and x86():
        flags = cpu_flags()
        if flags is not None and not set(VNNI) & flags:
            lacking.append("vnni")
    return lacking


def require(bundle_path, variant: str, entry: dict) -> None:
    """Refuse, in one line naming the fix, a variant whose `cpu_needs` this CPU lacks."""
    from .errors import UserError

    if missing(entry.get("cpu_needs", [])):
        raise UserError(
            f"variant {variant} has full-range s8 int8 weights, which need a CPU with VNNI ({' or '.join(VNNI)}); "
            f"this one has none and would saturate them: rebuild it here with `trtpipe optimize {bundle_path} "
            f"--precision {variant.split('.')[0]} --overwrite` (u8 weights)"
        )
