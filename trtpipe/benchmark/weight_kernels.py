"""GPT-2's weight products on each CPU engine at M rows (`bench/weight_kernels.py`): ONNX Runtime's kernels (MatMul,
MatMulInteger, MatMulNBits) against OpenVINO's compile of the same ONNX files (its FullyConnected, with compressed
weights for MatMulNBits), so the roof of a batched decode step's weight products names the engine that reaches it.

The stack is `batch_scaling.layer_stack`: two GPT-2 layers' four weight matrices and the LM head, quantised by the
functions `optimize` calls at its default blocks. OpenVINO compiles a weight-only file the way the runtime's `ov`
backend and OpenVINO prefill do (`ov.compile_config`: f32 hint, activations quantized in groups of the weight
block), and once at OpenVINO's own default group for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ..runtime.ov import compile_config
from .batch_scaling import cpu_session, layer_stack
from .decode import settle

HEAD = 50257  # GPT-2's LM head: 768 × 50257, the largest weight matrix
INT4_BLOCK, INT8_WO_BLOCK = 128, 256  # optimize's default blocks (bench/block_sizes.py)

# (engine, file, OpenVINO group or None): the rows of the table, in its order
KERNELS: dict[str, tuple[str, str, int | None]] = {
    "fp32 MatMul · ONNX Runtime": ("ort", "fp32", None),
    "fp32 · OpenVINO": ("ov", "fp32", None),
    "int8 s8 MatMulInteger · ONNX Runtime": ("ort", "int8 s8", None),
    f"int8-wo MatMulNBits block {INT8_WO_BLOCK} · ONNX Runtime": ("ort", "int8-wo", None),
    f"int8-wo · OpenVINO, group {INT8_WO_BLOCK}": ("ov", "int8-wo", INT8_WO_BLOCK),
    f"int4 MatMulNBits block {INT4_BLOCK} · ONNX Runtime": ("ort", "int4", None),
    f"int4 · OpenVINO, group {INT4_BLOCK}": ("ov", "int4", INT4_BLOCK),
    "int4 · OpenVINO, its default group": ("ov", "int4", 0),
}


def stack_files(folder: Path, layers: int = 2, head: int = HEAD) -> dict[str, Path]:
    """The stack in fp32 and as each variant quantises it, one ONNX file each under `folder`."""
    from ..optimize.int8 import apply_dynamic, weight_matmuls
    from ..optimize.weight_only import quantize_weight_only

    base = layer_stack(layers, head=head)
    copy = lambda: onnx.ModelProto.FromString(base.SerializeToString())  # noqa: E731
    models = {
        "fp32": base,
        "int8 s8": apply_dynamic(
            copy(), {n.name: "per-channel" for n in weight_matmuls(copy())}, per_row=True, weights="s8"
        ),
        "int8-wo": quantize_weight_only(copy(), 8, INT8_WO_BLOCK, lm_head=True, accuracy_level=4)[0],
        "int4": quantize_weight_only(copy(), 4, INT4_BLOCK, lm_head=True, accuracy_level=4)[0],
    }
    files = {}
    for name, model in models.items():
        files[name] = folder / f"stack-{name.replace(' ', '-')}.onnx"
        onnx.save(model, str(files[name]))
    return files


def runners(files: dict[str, Path], threads: int, kernels=KERNELS) -> dict[str, Callable[[np.ndarray], list]]:
    """name → a call of that kernel on one [M, 768] input, returning its outputs as arrays. OpenVINO rows are left
    out where openvino is missing."""
    out = {}
    core = None
    for name, (engine, file, group) in kernels.items():
        if engine == "ort":
            session = cpu_session(str(files[file]), threads)
            out[name] = lambda x, s=session: s.run(None, {"x": x})
            continue
        if core is None:
            try:
                import openvino as ov
            except ImportError:
                continue
            core = ov.Core()
        request = core.compile_model(str(files[file]), "CPU", compile_config(threads, group=group or None))
        request = request.create_infer_request()
        out[name] = lambda x, r=request: list(r.infer({0: x}).values())
    return out


def time_rows(
    calls: dict[str, Callable[[np.ndarray], list]], rows: tuple[int, ...], rounds: int = 3, iters: int = 8
) -> dict[str, dict[int, float]]:
    """Median ms of one call per kernel and M: every kernel and shape warmed first, then `rounds` rounds that
    interleave the kernels, a pause before each kernel's run of `iters` calls (the last engine's threads asleep)."""
    rng = np.random.default_rng(1)
    inputs = {m: rng.standard_normal((m, 768)).astype(np.float32) for m in rows}
    for call in calls.values():
        for m in rows:
            for _ in range(3):
                call(inputs[m])
    samples = {name: {m: [] for m in rows} for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            for m in rows:
                settle()
                call(inputs[m])
                for _ in range(iters):
                    started = time.perf_counter()
                    call(inputs[m])
                    samples[name][m].append(time.perf_counter() - started)
    return {name: {m: float(np.median(v)) * 1e3 for m, v in per.items()} for name, per in samples.items()}


def fastest(timings: dict[str, dict[int, float]], precision: str, m: int) -> tuple[str, float]:
    """(kernel, ms) of the fastest row of `precision` (the name's first word) at M = `m`."""
    rows = {name: per[m] for name, per in timings.items() if name.split()[0] == precision}
    name = min(rows, key=rows.get)
    return name, rows[name]


def row_drift(calls: dict[str, Callable[[np.ndarray], list]], rows: tuple[int, ...]) -> dict[str, float]:
    """Per kernel, the largest |difference| of one row's outputs (the first) between a call of M rows and a call of
    that row alone, over every M in `rows`: 0 where a row's numbers do not depend on the rows it shares a call with
    (ONNX Runtime's MatMulNBits pairs rows at these blocks: `optimize/pair_rows.py`)."""
    x = np.random.default_rng(2).standard_normal((max(rows), 768)).astype(np.float32)
    drift = {}
    for name, call in calls.items():
        alone = [np.asarray(y)[0].copy() for y in call(x[:1])]
        drift[name] = max(
            float(np.abs(np.asarray(y)[0] - a).max()) for m in rows for y, a in zip(call(x[:m]), alone)
        )
    return drift
