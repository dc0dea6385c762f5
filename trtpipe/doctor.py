"""`trtpipe doctor`: what is installed, what the machine has, which backends can run here, what clashes, and what
to install for each backend. It probes without importing the heavy libraries (package metadata, nvidia-smi);
only onnxruntime is imported, to list its execution providers, and openvino where installed, to ask its CPU device.
"""

from __future__ import annotations

import platform
import re
import sys
from dataclasses import asdict, dataclass, field

from .runtime.ov import openvino_info
from .runtime.trt.platform import Gpu, nvidia_gpus, run_nvidia_smi

PACKAGES = (
    "numpy",
    "tokenizers",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "tensorrt",
    "tensorrt-cu12",
    "tensorrt-cu13",
    "tensorrt-rtx",
    "cuda-python",
    "cuda-bindings",
    "torch",
    "transformers",
    "onnx",
    "onnxscript",
    "optimum-onnx",
    "onnxruntime-genai",
)
DATACENTER_CCS = ("9.0", "10.0", "10.3")


@dataclass
class Problem:
    severity: str  # error | warning | info
    message: str
    fix: str


@dataclass
class Backend:
    name: str
    ok: bool
    missing: list[str]
    install: str
    what: str


@dataclass
class Diagnosis:
    python: str
    platform: str
    packages: dict[str, str | None]
    providers: list[str]
    gpus: list[dict]
    driver_cuda: str | None
    cuda_runtime: str | None
    backends: list[Backend] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    openvino: dict | None = None  # version, CPU name, optimisation capabilities (runtime/ov.py openvino_info)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


def installed_packages(names=PACKAGES) -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def ort_providers() -> list[str]:
    try:
        import onnxruntime
    except Exception:  # missing, or a broken mix of onnxruntime and onnxruntime-gpu
        return []
    try:
        return list(onnxruntime.get_available_providers())
    except Exception:
        return []


def driver_cuda_version() -> str | None:
    """The newest CUDA the driver supports ("CUDA Version: 12.8" in nvidia-smi's header)."""
    text = run_nvidia_smi([])
    match = re.search(r"CUDA Version:\s*([\d.]+)", text or "")
    return match.group(1) if match else None


def cuda_runtime_version() -> str | None:
    try:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart
        err, version = cudart.cudaRuntimeGetVersion()
        return f"{version // 1000}.{(version % 1000) // 10}" if int(err) == 0 else None
    except Exception:
        return None


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def find_problems(
    packages: dict[str, str | None], gpus: list[Gpu], providers: list[str], driver_cuda: str | None
) -> list[Problem]:
    """Known-incompatible or incomplete combinations, each with its fix."""
    problems: list[Problem] = []
    has = {name: version is not None for name, version in packages.items()}
    if has.get("onnxruntime") and has.get("onnxruntime-gpu"):
        problems.append(
            Problem(
                "error",
                f"both onnxruntime {packages['onnxruntime']} and onnxruntime-gpu {packages['onnxruntime-gpu']} are "
                "installed: they share the `onnxruntime` module and the last one installed wins",
                "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install trtpipe[cpu] or trtpipe[gpu] (one)",
            )
        )
    if not has.get("onnxruntime") and not has.get("onnxruntime-gpu"):
        problems.append(
            Problem(
                "error",
                "ONNX Runtime is not installed: no backend can run bundles",
                "pip install trtpipe[cpu]",
            )
        )
    trt_major = _major(packages.get("tensorrt"))
    if has.get("tensorrt") and trt_major is not None and trt_major < 10:
        problems.append(
            Problem(
                "error",
                f"tensorrt {packages['tensorrt']} is older than TensorRT 10",
                "pip install 'tensorrt>=10'",
            )
        )
    if has.get("tensorrt") and not gpus:
        problems.append(
            Problem(
                "warning",
                "tensorrt (TensorRT 10) is installed but there is no NVIDIA GPU: it can neither build nor run engines here",
                "build ahead of time with TensorRT-RTX: pip install trtpipe[rtx]; trtpipe build BUNDLE --flavour rtx",
            )
        )
    if has.get("onnxruntime-gpu") and not gpus:
        problems.append(
            Problem(
                "warning",
                "onnxruntime-gpu is installed but there is no NVIDIA GPU: only its CPU provider works here",
                "pip uninstall -y onnxruntime-gpu && pip install onnxruntime (or trtpipe[cpu])",
            )
        )
    if gpus and "CUDAExecutionProvider" not in providers:
        problems.append(
            Problem(
                "info",
                "a GPU is present but ONNX Runtime has no CUDAExecutionProvider (backends ort-cuda, ort-trt)",
                "pip uninstall -y onnxruntime && pip install trtpipe[gpu]",
            )
        )
    if (
        (has.get("tensorrt") or has.get("tensorrt-rtx"))
        and gpus
        and not (has.get("cuda-python") or has.get("cuda-bindings"))
    ):
        problems.append(
            Problem(
                "error",
                "TensorRT is installed but cuda-python is not: backend trt needs it for device buffers and streams",
                "pip install 'cuda-python>=12.6'",
            )
        )
    if has.get("tensorrt-rtx") and any(g.compute_capability in DATACENTER_CCS for g in gpus):
        names = ", ".join(sorted({g.name for g in gpus if g.compute_capability in DATACENTER_CCS}))
        problems.append(
            Problem(
                "warning",
                f"TensorRT-RTX plans run on RTX-class GPUs, not on {names}",
                "build TensorRT 10 engines here: pip install trtpipe[gpu]; trtpipe build BUNDLE --flavour trt10",
            )
        )
    driver_major = _major(driver_cuda)
    if driver_major is not None:
        for name in ("cuda-python", "cuda-bindings", "tensorrt-cu12", "tensorrt-cu13"):
            major = (
                _major(packages.get(name)) if name.startswith("cuda") else _major(name.rsplit("cu", 1)[-1])
            )
            if has.get(name) and major is not None and major > driver_major:
                problems.append(
                    Problem(
                        "warning",
                        f"{name} {packages[name]} is built for CUDA {major} but the driver supports CUDA {driver_cuda}",
                        f"update the NVIDIA driver, or install the CUDA {driver_major} build of {name.split('-cu')[0]}",
                    )
                )
    torch = packages.get("torch")
    if torch and "+cpu" not in torch and not gpus and sys.platform.startswith("linux"):
        problems.append(
            Problem(
                "info",
                f"torch {torch} looks like a CUDA build (several GB) on a machine without a GPU",
                "the CPU wheel is enough for export and parity: pip install torch==2.13.0 from PyTorch's CPU index",
            )
        )
    return problems


def backends(packages: dict[str, str | None], gpus: list[Gpu], providers: list[str]) -> list[Backend]:
    has = {name: version is not None for name, version in packages.items()}
    gpu = bool(gpus)

    def row(name, what, needs: dict[str, bool], install: str) -> Backend:
        missing = [k for k, ok in needs.items() if not ok]
        return Backend(name, not missing, missing, install, what)

    export_ok = {p: has.get(p, False) for p in ("torch", "transformers", "onnx", "onnxscript")}
    return [
        row(
            "ort-cpu",
            "run bundles on the CPU",
            {"onnxruntime (CPUExecutionProvider)": "CPUExecutionProvider" in providers},
            "pip install trtpipe[cpu]",
        ),
        row(
            "ort-cuda",
            "run bundles on the GPU through ONNX Runtime",
            {
                "NVIDIA GPU": gpu,
                "onnxruntime-gpu (CUDAExecutionProvider)": "CUDAExecutionProvider" in providers,
            },
            "pip install trtpipe[gpu]  (after pip uninstall onnxruntime)",
        ),
        row(
            "ov",
            "run bundles on the CPU with OpenVINO",
            {"openvino": has.get("openvino", False)},
            "pip install trtpipe[ov]",
        ),
        row(
            "ort-trt",
            "ONNX Runtime's TensorRT execution provider",
            {
                "NVIDIA GPU": gpu,
                "onnxruntime-gpu (TensorrtExecutionProvider)": "TensorrtExecutionProvider" in providers,
                "tensorrt": has.get("tensorrt", False),
            },
            "pip install trtpipe[gpu]",
        ),
        row(
            "trt",
            "run TensorRT engines (trtpipe build)",
            {
                "NVIDIA GPU": gpu,
                "tensorrt or tensorrt-rtx": has.get("tensorrt", False) or has.get("tensorrt-rtx", False),
                "cuda-python": has.get("cuda-python", False) or has.get("cuda-bindings", False),
            },
            "pip install trtpipe[gpu]  (TensorRT 10)  or  trtpipe[rtx] + cuda-python  (RTX GPUs)",
        ),
        row(
            "build rtx",
            "build TensorRT-RTX engines ahead of time (no GPU needed)",
            {"tensorrt-rtx": has.get("tensorrt-rtx", False)},
            "pip install trtpipe[rtx]",
        ),
        row(
            "build trt10",
            "build TensorRT 10 engines for the GPU at hand",
            {"NVIDIA GPU": gpu, "tensorrt": has.get("tensorrt", False)},
            "pip install trtpipe[gpu]",
        ),
        row(
            "export",
            "export checkpoints and check parity against PyTorch",
            {f"{k}": v for k, v in export_ok.items()},
            "pip install torch==2.13.0 (CPU wheel) && pip install trtpipe[export]",
        ),
    ]


def diagnose() -> Diagnosis:
    packages = installed_packages()
    gpus = list(nvidia_gpus())
    providers = ort_providers()
    driver_cuda = driver_cuda_version() if gpus else None
    problems = find_problems(packages, gpus, providers, driver_cuda)
    openvino = openvino_info() if packages.get("openvino") else None
    if openvino and openvino.get("error"):
        problems.append(
            Problem(
                "warning",
                f"openvino {openvino['version']} is installed but its CPU device does not load ({openvino['error']})",
                "pip install --force-reinstall 'openvino>=2025.0' (or trtpipe[ov])",
            )
        )
    return Diagnosis(
        python=sys.version.split()[0],
        platform=f"{platform.system()} {platform.machine()}",
        packages=packages,
        providers=providers,
        gpus=[asdict(g) for g in gpus],
        driver_cuda=driver_cuda,
        cuda_runtime=cuda_runtime_version()
        if packages.get("cuda-python") or packages.get("cuda-bindings")
        else None,
        backends=backends(packages, gpus, providers),
        problems=problems,
        openvino=openvino,
    )


def print_diagnosis(diagnosis: Diagnosis) -> None:
    from rich.markup import escape
    from rich.table import Table

    from .console import out

    out.print(f"[bold]trtpipe doctor[/]  Python {diagnosis.python} · {diagnosis.platform}")
    if diagnosis.gpus:
        for gpu in diagnosis.gpus:
            out.print(
                f"GPU {gpu['index']}: {gpu['name']} · compute capability {gpu['compute_capability'] or '?'} · "
                f"{gpu['memory_bytes'] / 2**30:.1f} GiB · driver {gpu['driver']} (CUDA {diagnosis.driver_cuda or '?'})"
            )
    else:
        out.print("GPU: none (nvidia-smi finds no NVIDIA GPU)")
    if diagnosis.cuda_runtime:
        out.print(f"CUDA runtime (cuda-python): {diagnosis.cuda_runtime}")
    out.print(
        f"ONNX Runtime providers: {', '.join(diagnosis.providers) or 'none (onnxruntime not importable)'}"
    )
    ov = diagnosis.openvino
    if ov and not ov.get("error"):
        out.print(
            f"OpenVINO {ov['version']}: {escape(ov['cpu'])} · capabilities {', '.join(ov['capabilities'])} · "
            f"default precision {ov['default_precision']} (the ov backend asks for f32)"
        )
    elif not ov:
        out.print("OpenVINO: not installed (backend ov: pip install trtpipe[ov])")
    packages = Table(title="packages", show_edge=False)
    packages.add_column("package")
    packages.add_column("version")
    for name, version in diagnosis.packages.items():
        packages.add_row(name, escape(version) if version else "[dim]-[/]")
    out.print(packages)
    table = Table(title="backends", show_edge=False)
    for col in ("backend", "", "what", "missing", "install"):
        table.add_column(col)
    for b in diagnosis.backends:
        table.add_row(
            b.name,
            "[green]ok[/]" if b.ok else "[red]no[/]",
            escape(b.what),
            escape(", ".join(b.missing)) or "-",
            "-" if b.ok else escape(b.install),
        )
    out.print(table)
    colours = {"error": "red", "warning": "yellow", "info": "cyan"}
    for problem in diagnosis.problems:
        out.print(
            f"[{colours[problem.severity]}]{problem.severity}:[/] {problem.message}\n  fix: {problem.fix}"
        )
    if not diagnosis.problems:
        out.print("[green]no known problems[/]")
