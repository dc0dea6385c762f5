"""ONNX Runtime sessions: CPU, CUDA (device-resident I/O through IOBinding) and ORT's TensorRT execution provider."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import cpu
from .bundle import Bundle
from .errors import UserError
from .feeds import CheckedFeeds

_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
_ORT_TO_NP = {
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(bool)": np.bool_,
}


def import_ort():
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "onnxruntime is not installed: `pip install trtpipe[cpu]` (CPU) or `pip install trtpipe[gpu]` (NVIDIA GPU)"
        ) from None
    return onnxruntime


def _providers(ort, backend: str, bundle: Bundle | None, variant: str) -> list:
    wanted = _PROVIDERS[backend]
    available = ort.get_available_providers()
    if wanted not in available:
        raise UserError(
            f"backend {backend} needs ONNX Runtime's {wanted}, which this onnxruntime lacks (has: {', '.join(available)}); "
            "install `pip install trtpipe[gpu]` (onnxruntime-gpu, after `pip uninstall onnxruntime`) and see `trtpipe doctor`"
        )
    if backend == "ort-cpu":
        return ["CPUExecutionProvider"]
    if backend == "ort-cuda":
        return [
            ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"}),
            "CPUExecutionProvider",
        ]
    options = {"trt_timing_cache_enable": True, "trt_engine_cache_enable": True}
    if bundle is not None:
        cache = bundle.path / "engines" / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        options.update(trt_engine_cache_path=str(cache), trt_timing_cache_path=str(cache))
    if variant == "fp16":
        options["trt_fp16_enable"] = True
    if variant == "int8-qdq":
        options["trt_int8_enable"] = True
    return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]


SPIN_ENV = "TRTPIPE_ORT_SPIN"


SPIN_SETTINGS = {  # TRTPIPE_ORT_SPIN value → ONNX Runtime session config entries
    "0": {"session.intra_op.allow_spinning": "0"},
    "1": {"session.intra_op.allow_spinning": "1"},
    "stop": {"session.force_spinning_stop": "1"},
}
_SPIN_ALIASES = {"off": "0", "false": "0", "no": "0", "on": "1", "true": "1", "yes": "1"}


def spinning(spin: str | None = None) -> dict[str, str]:
    """ONNX Runtime's intra-op threads spin between the parallel parts of a run and for a moment after it (its
    default: the next run starts sooner). A process that runs several sessions in turn, or ONNX Runtime beside
    another engine, pays for the spinning after a run: those threads share the cores with whatever runs next
    (GPT-2 int4 TTFT at prompt 32, measured: 39.7 ms right after another session's run, 16.2 after a 0.2 s pause).
    TRTPIPE_ORT_SPIN=stop keeps the spinning inside a run and stops it at the end of each (`bench/ort_spin.py`);
    0 turns it off altogether (slower small runs); unset keeps ONNX Runtime's default. A session opened with
    `spin=` (the same values) takes that instead."""
    given = spin is not None
    value = (spin if given else os.environ.get(SPIN_ENV, "")).strip().lower()
    if not value:
        return {}
    value = _SPIN_ALIASES.get(value, value)
    if value not in SPIN_SETTINGS:
        what = f"spin={spin!r}" if given else f"{SPIN_ENV}={value!r}"
        raise UserError(
            f"{what} is not a setting: use stop (stop spinning after each run), 0 (no spinning) or 1"
            + ("" if given else ", or unset it")
        )
    return SPIN_SETTINGS[value]


class OrtSession(CheckedFeeds):
    """An ONNX Runtime InferenceSession behind the Session contract. `run` is thread-safe."""

    def __init__(
        self,
        model_path: str | Path,
        backend: str = "ort-cpu",
        threads: int | None = None,
        specs: list[dict] | None = None,
        limits: dict | None = None,
        bundle: Bundle | None = None,
        variant: str = "fp32",
        optimization: str = "all",
        spin: str | None = None,
    ):
        ort = import_ort()
        self.ort = ort
        self.backend = backend
        self.variant = variant
        self.specs = specs
        self.limits = limits
        options = ort.SessionOptions()
        options.log_severity_level = 3
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        options.graph_optimization_level = levels[optimization]
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        for key, value in spinning(spin).items():
            options.add_session_config_entry(key, value)
        self.threads = threads
        providers = _providers(ort, backend, bundle, variant)
        try:
            self.session = ort.InferenceSession(str(model_path), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind exception types for bad files
            text = str(exc).splitlines()[0][:300] if str(exc) else exc.__class__.__name__
            raise UserError(
                f"ONNX Runtime could not load {model_path} ({text}); the file is corrupt or truncated: "
                "re-export the bundle with `trtpipe export ... --overwrite`"
            ) from None
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.output_dtypes = {o.name: _ORT_TO_NP.get(o.type, np.float32) for o in self.session.get_outputs()}
        self.device = "cuda" if backend in ("ort-cuda", "ort-trt") else "cpu"

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        backend: str = "ort-cpu",
        variant: str | None = None,
        threads: int | None = None,
        verify: bool = True,
        spin: str | None = None,
    ) -> OrtSession:
        variant = variant or "fp32"
        if variant in bundle.variants:
            entry = bundle.variants[variant]
            if backend != "ort-cpu" and entry.get("ort_only_cpu"):
                raise UserError(f"variant {variant} runs on the CPU provider only; use --backend ort-cpu")
            cpu.require(bundle.path, variant, entry)
            if not bundle.runs_on(variant, backend):
                only = bundle.only_on(variant)
                raise UserError(
                    f"variant {variant} is {entry.get('compute', variant)} compute of {entry['file']} on "
                    f"{' / '.join(only)} only; use --backend {only[0]} (or --variant fp32 on {backend})"
                )
        path = bundle.model_path(variant, verify=verify)
        specs = bundle.variants[variant].get("inputs") or bundle.manifest["inputs"]
        return cls(
            path,
            backend=backend,
            threads=threads,
            specs=specs,
            limits=bundle.limits,
            bundle=bundle,
            variant=variant,
            spin=spin,
        )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = self.check(feeds)
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))

    def run_into(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Run with caller-owned output buffers (IOBinding); outputs not given are allocated by ORT and dropped."""
        feeds = self.check(feeds)
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            buffer = outputs.get(name)
            if buffer is None:
                binding.bind_output(name, "cpu")
                continue
            binding.bind_output(name, "cpu", 0, buffer.dtype, list(buffer.shape), buffer.ctypes.data)
        self.session.run_with_iobinding(binding)

    def close(self) -> None:
        self.session = None

    def __repr__(self) -> str:
        return f"OrtSession(backend={self.backend!r}, variant={self.variant!r}, inputs={self.input_names})"
