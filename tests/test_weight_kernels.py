"""bench/weight_kernels.py's measurements: the stack's files per variant, one call per kernel and engine, the
interleaved timings, the fastest row per precision and the row drift."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from trtpipe.benchmark.weight_kernels import KERNELS, fastest, row_drift, runners, stack_files, time_rows


@pytest.fixture(scope="module")
def small_stack(tmp_path_factory):
    """One GPT-2 layer's weight matrices and a 64-wide head: the real shapes, a small LM head."""
    return stack_files(tmp_path_factory.mktemp("stack"), layers=1, head=64)


def test_each_file_holds_its_variants_kernel(small_stack):
    ops = {
        name: Counter(n.op_type for n in onnx.load(str(path)).graph.node)
        for name, path in small_stack.items()
    }
    assert ops["fp32"]["MatMul"] == 5
    assert ops["int8 s8"]["MatMulInteger"] == 5 and not ops["int8 s8"]["MatMul"]
    for name, bits, block in (("int4", 4, 128), ("int8-wo", 8, 256)):
        nodes = [n for n in onnx.load(str(small_stack[name])).graph.node if n.op_type == "MatMulNBits"]
        assert len(nodes) == 5 and not ops[name]["MatMul"]
        attrs = {(a.name, a.i) for n in nodes for a in n.attribute}
        assert ("bits", bits) in attrs and ("block_size", block) in attrs


def test_every_kernel_runs_and_is_timed_at_every_row_count(small_stack):
    calls = runners(small_stack, threads=1)
    try:
        import openvino  # noqa: F401

        assert set(calls) == set(KERNELS)
    except ImportError:
        assert set(calls) == {name for name, (engine, _, _) in KERNELS.items() if engine == "ort"}
    x = np.random.default_rng(0).standard_normal((3, 768)).astype(np.float32)
    reference = calls["fp32 MatMul · ONNX Runtime"](x)
    for name, call in calls.items():
        out = call(x)
        # every output of the stack (both layer outputs, the head's logits), 3 rows each, near the fp32 values
        assert [np.asarray(y).shape for y in out] == [np.asarray(y).shape for y in reference], name
        logits, want = np.asarray(out[-1]), np.asarray(reference[-1])
        assert (
            np.all(np.isfinite(logits)) and np.abs(logits - want).max() < 0.25 * np.abs(want).max() + 1e-3
        ), name
    timings = time_rows(calls, (1, 2), rounds=1, iters=1)
    assert set(timings) == set(calls)
    assert all(ms > 0 for per in timings.values() for ms in per.values())
    # the same row alone and among others: rounding at most (another row's values would differ by ~1)
    drift = row_drift(calls, (1, 2, 3))
    assert set(drift) == set(calls) and all(0 <= d < 1e-3 for d in drift.values()), drift


def test_fastest_picks_the_lowest_ms_of_that_precision_only():
    timings = {
        "int4 MatMulNBits · ONNX Runtime": {1: 1.0, 8: 4.0},
        "int4 · OpenVINO": {1: 2.0, 8: 3.0},
        "int8-wo · OpenVINO": {1: 0.1, 8: 0.1},  # another precision: never picked for int4
    }
    assert fastest(timings, "int4", 1) == ("int4 MatMulNBits · ONNX Runtime", 1.0)
    assert fastest(timings, "int4", 8) == ("int4 · OpenVINO", 3.0)
