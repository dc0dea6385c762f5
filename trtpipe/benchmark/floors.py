"""Hardware floors measured in the same run: DRAM read bandwidth and fp32 GEMM rate.

- read bandwidth: summing a 512 MiB float32 array split across `threads` Python threads (numpy releases the GIL);
  the best of a few passes.
- GEMM rate: ONNX Runtime's own fp32 MatMul on 2048³ with `threads` intra-op threads.
"""

from __future__ import annotations

import threading
import time

import numpy as np


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


def gemm_rate(threads: int = 2, n: int = 2048, repeats: int = 3) -> float:
    """FLOP per second of ORT's fp32 MatMul."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph(
        [node],
        "gemm",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    session.run(None, {"a": a, "b": b})
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, {"a": a, "b": b})
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best
