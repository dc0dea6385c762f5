"""Hardware roofs measured in the same run: DRAM read bandwidth, and the compute roof for fp32 and int8.

- read bandwidth: summing a 512 MiB float32 array split across `threads` Python threads (numpy releases the GIL);
  the best of a few passes.
- compute roof: the machine's, not one engine's. A 2048³ GEMM timed on every engine installed (ONNX Runtime,
  OpenVINO, torch/oneDNN, numpy/OpenBLAS; int8 through ONNX Runtime's MatMulInteger and OpenVINO's int8 GEMM) with
  `threads` threads, beside the nominal peak (cores × vector lanes × FMA units × 2 × clock, from /proc/cpuinfo).
  The roof is the higher of the two, and says which set it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..runtime.cpu import cpuinfo

GEMM_N = 2048


def dram_read_bandwidth(threads: int = 2, mib: int = 512, passes: int = 4) -> float:
    """Bytes per second."""
    data = np.ones(mib * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(passes):
        workers = [threading.Thread(target=np.sum, args=(part,)) for part in parts]
        started = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, data.nbytes / (time.perf_counter() - started))
    return best


@dataclass
class Roof:
    """The compute roof of one precision: the measured GEMM of each engine (FLOP/s or int8 OP/s, None with the
    reason where it could not run), the nominal peak, and the higher of them."""

    precision: str
    engines: dict[str, float | None] = field(default_factory=dict)
    why_not: dict[str, str] = field(default_factory=dict)
    nominal: float | None = None
    nominal_note: str = ""

    @property
    def fastest(self) -> tuple[str, float]:
        measured = {k: v for k, v in self.engines.items() if v}
        engine = max(measured, key=measured.get)
        return engine, measured[engine]

    @property
    def value(self) -> float:
        return max(self.fastest[1], self.nominal or 0.0)

    @property
    def source(self) -> str:
        engine, rate = self.fastest
        if self.nominal and self.nominal > rate:
            return f"nominal peak ({self.nominal_note})"
        return f"{engine} {GEMM_N}³ GEMM"

    def describe(self) -> str:
        engine, rate = self.fastest
        unit = "GFLOP/s" if self.precision == "fp32" else "GOP/s"
        text = f"{self.precision} roof {self.value / 1e9:.0f} {unit}, set by {self.source}"
        if self.nominal and self.nominal > rate:
            text += f"; fastest measured: {engine} {rate / 1e9:.0f} {unit} ({rate / self.nominal:.0%} of it)"
        return text


def _time(run: Callable[[], object], repeats: int = 3) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _gemm_graph(precision: str, n: int):
    from onnx import TensorProto, helper

    if precision == "fp32":
        node = helper.make_node("MatMul", ["a", "b"], ["c"])
        types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.FLOAT)
        nodes = [node]
    else:  # u8 activations × s8 weights → int32, as the dynamic int8 variants run
        nodes = [helper.make_node("MatMulInteger", ["a", "b"], ["c"])]
        types = (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
    graph = helper.make_graph(
        nodes,
        "gemm",
        [
            helper.make_tensor_value_info("a", types[0], [n, n]),
            helper.make_tensor_value_info("b", types[1], [n, n]),
        ],
        [helper.make_tensor_value_info("c", types[2], [n, n])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _inputs(precision: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    if precision == "fp32":
        return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    return rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-127, 127, (n, n), dtype=np.int8)


def _ort(precision: str, threads: int, n: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = _gemm_graph(precision, n).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    a, b = _inputs(precision, n)
    return 2 * n**3 / _time(lambda: session.run(None, {"a": a, "b": b}))


def _openvino(precision: str, threads: int, n: int) -> float:
    import openvino as ov

    core = ov.Core()
    if precision == "fp32":
        model = core.read_model(_gemm_graph("fp32", n).SerializeToString(), b"")
        hint = {"INFERENCE_PRECISION_HINT": "f32"}
        a, b = _inputs("fp32", n)
    else:  # OpenVINO's int8 GEMM: FakeQuantize on both inputs, which its low-precision passes run as u8 × s8
        from openvino import opset13 as ops

        x, w = ops.parameter([n, n], np.float32), ops.parameter([n, n], np.float32)
        fq_x = ops.fake_quantize(x, 0.0, 255.0, 0.0, 255.0, 256)
        fq_w = ops.fake_quantize(w, -127.0, 127.0, -127.0, 127.0, 255)
        model = ov.Model([ops.matmul(fq_x, fq_w, False, False)], [x, w])
        hint = {}
        a, b = (v.astype(np.float32) for v in _inputs("int8", n))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads, **hint})
    request = compiled.create_infer_request()
    return 2 * n**3 / _time(lambda: request.infer([a, b]))


def _torch(precision: str, threads: int, n: int) -> float:
    import torch

    if precision != "fp32":
        raise RuntimeError("torch has no plain int8 GEMM on the CPU")
    torch.set_num_threads(threads)
    a, b = (torch.from_numpy(v) for v in _inputs("fp32", n))
    return 2 * n**3 / _time(lambda: a @ b)


def _numpy(precision: str, threads: int, n: int) -> float:
    if precision != "fp32":
        raise RuntimeError("numpy has no int8 GEMM (it runs int8 @ int8 in scalar code)")
    from threadpoolctl import threadpool_limits

    a, b = _inputs("fp32", n)
    with threadpool_limits(threads):
        return 2 * n**3 / _time(lambda: a @ b)


ENGINES: dict[str, Callable[[str, int, int], float]] = {
    "ONNX Runtime": _ort,
    "OpenVINO": _openvino,
    "torch (oneDNN)": _torch,
    "numpy (BLAS)": _numpy,
}


def cpu_flags() -> tuple[str, set[str], float | None]:
    """(vendor, flags, clock in Hz) of CPU 0, from /proc/cpuinfo (Linux)."""
    fields = cpuinfo()
    try:
        mhz = float(fields.get("cpu MHz", ""))
    except ValueError:
        mhz = None
    return fields.get("vendor_id", ""), set(fields.get("flags", "").split()), mhz * 1e6 if mhz else None


def cpu_family() -> tuple[int | None, int | None]:
    """(cpu family, model) of CPU 0 from /proc/cpuinfo, (None, None) where it is not there."""
    fields = cpuinfo()
    family, model = fields.get("cpu family", ""), fields.get("model", "")
    return (int(family) if family.isdigit() else None), (int(model) if model.isdigit() else None)


def amd_full_512(family_id: int | None, model: int | None) -> bool:
    """Zen 5 (cpu family 0x1A) executes AVX-512 on full 512-bit datapaths, except its mobile parts (Strix Point,
    models 0x20-0x2F), which split them in two like Zen 4 (cpu family 0x19) does."""
    return family_id == 0x1A and model is not None and not 0x20 <= model <= 0x2F


def nominal_peak(precision: str, threads: int) -> tuple[float | None, str]:
    """threads × fp32 lanes per FMA × FMA units × 2 FLOP × clock (int8 with VNNI: 4 multiply-adds per 32-bit lane).
    FMA units and their width are not in /proc/cpuinfo: Intel's server cores and AMD's Zen 5 (cpu family 26) issue
    two 512-bit FMAs per cycle, Zen 4's AVX-512 two 256-bit ones; the note says which was assumed."""
    vendor, flags, clock = cpu_flags()
    if not clock or not flags:
        return None, "no /proc/cpuinfo"
    if "avx512f" in flags and vendor != "AuthenticAMD":
        lanes, units, what = 16, 2, "2 × 512-bit FMA units"
    elif "avx512f" in flags and amd_full_512(*cpu_family()):
        lanes, units, what = 16, 2, "2 × 512-bit FMA units (AMD Zen 5)"
    elif "avx512f" in flags or "avx2" in flags:
        lanes, units, what = (
            8,
            2,
            "2 × 256-bit FMA units" + (" (AMD runs AVX-512 as 2 × 256)" if "avx512f" in flags else ""),
        )
    else:
        return None, "no AVX2"
    per_lane = 1
    if precision == "int8":
        if not ({"avx512_vnni", "avx_vnni"} & flags):
            return None, "no VNNI"
        per_lane = 4
    peak = threads * lanes * units * 2 * per_lane * clock
    return (
        peak,
        f"{threads} cores × {what} × {'4 int8 MACs per lane (VNNI) × ' if per_lane == 4 else ''}{clock / 1e9:.2f} GHz",
    )


def measure_roof(precision: str, threads: int = 2, n: int = GEMM_N) -> Roof:
    roof = Roof(precision)
    roof.nominal, roof.nominal_note = nominal_peak(precision, threads)
    for name, run in ENGINES.items():
        try:
            roof.engines[name] = run(precision, threads, n)
        except Exception as exc:  # a peer that is missing or cannot run this precision: said, not hidden
            roof.engines[name] = None
            roof.why_not[name] = (
                f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}" if str(exc) else type(exc).__name__
            )
    if not any(roof.engines.values()):
        raise RuntimeError(f"no engine ran the {precision} GEMM here: {roof.why_not}")
    return roof


def roofs_markdown(roofs: list[Roof]) -> str:
    """A table of every engine's GEMM per precision, the nominal peak, and which set the roof."""
    lines = [
        f"| precision | {' | '.join(ENGINES)} | nominal peak | roof, set by |",
        "|---|" + "---|" * (len(ENGINES) + 2),
    ]
    for roof in roofs:
        unit = "GFLOP/s" if roof.precision == "fp32" else "GOP/s"
        cells = [
            f"{value / 1e9:.0f}" if value else f"not measured ({roof.why_not.get(name, '?')})"
            for name, value in roof.engines.items()
        ]
        nominal = (
            f"{roof.nominal / 1e9:.0f} ({roof.nominal_note})" if roof.nominal else f"— ({roof.nominal_note})"
        )
        lines.append(
            f"| {roof.precision} ({unit}) | {' | '.join(cells)} | {nominal} | {roof.value / 1e9:.0f}, {roof.source} |"
        )
    return "\n".join(lines) + "\n"


def gemm_rate(threads: int = 2, n: int = GEMM_N) -> float:
    """FLOP per second of the fp32 compute roof (the higher of the fastest engine's GEMM and the nominal peak)."""
    return measure_roof("fp32", threads, n).value
