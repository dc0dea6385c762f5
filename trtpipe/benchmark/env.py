"""The environment a benchmark ran in: CPU, cores, threads, memory, GPU, library versions (read from package
metadata, so nothing heavy is imported)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from importlib import metadata

PACKAGES = (
    "trtpipe",
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx",
    "torch",
    "transformers",
    "optimum",
    "optimum-onnx",
    "onnxruntime-genai",
    "tokenizers",
    "tensorrt",
    "tensorrt-rtx",
    "cuda-python",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the instruction sets a CPU kernel picks from, as /proc/cpuinfo names them (VMs called "AMD EPYC" differ here)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16")


def isa_flags() -> list[str]:
    """The ISA_FLAGS this CPU has, in that order."""
    from .floors import cpu_flags

    have = cpu_flags()[1]
    return [flag for flag in ISA_FLAGS if flag in have]


def gpus() -> list[dict]:
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,compute_cap",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 4:
            rows.append(
                {"name": parts[0], "driver": parts[1], "memory": parts[2], "compute_capability": parts[3]}
            )
    return rows


def environment(threads: int | None = None) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    memory = None
    try:
        import psutil

        memory = psutil.virtual_memory().total
        physical = psutil.cpu_count(logical=False)
    except ImportError:
        physical = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": isa_flags(),
        "machine": platform.machine(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "logical_cores": os.cpu_count(),
        "physical_cores": physical,
        "threads": threads,
        "memory_bytes": memory,
        "gpus": gpus(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
