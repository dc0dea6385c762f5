"""Per-row dynamic int8 activations: a row's answer does not depend on the rows batched with it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from trtpipe.benchmark.batch_scaling import layer_stack
from trtpipe.optimize.int8 import apply_dynamic, is_decoder_graph, weight_matmuls
from trtpipe.optimize.int8_rows import per_row_activations
from trtpipe.runtime import Bundle


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[-1]


def test_per_row_rounding_makes_a_row_independent_of_its_batch_and_stays_close_to_fp32():
    base = layer_stack(layers=1)
    plan = {n.name: "per-channel" for n in weight_matmuls(base)}
    per_tensor = apply_dynamic(base, plan, per_row=False)
    per_row = apply_dynamic(base, plan, per_row=True)
    assert not any(n.op_type == "DynamicQuantizeLinear" for n in per_row.graph.node)
    assert Counter(n.op_type for n in per_row.graph.node)["MatMulInteger"] == 4
    x = np.random.default_rng(0).standard_normal((8, 768)).astype(np.float32)
    x[5] *= 40  # one loud row in the batch
    reference = _run(base, x)
    for model, invariant in ((per_tensor, False), (per_row, True)):
        batched, alone = _run(model, x), _run(model, x[:1])
        assert (
            np.array_equal(batched[:1], alone) is invariant
        )  # per tensor, the loud row moves row 0's rounding
    error = np.abs(_run(per_row, x) - reference).max(axis=-1) / np.abs(reference).max(axis=-1)
    assert error.max() < 0.05, error  # every row at int8 precision, the loud one included


def test_decoder_graphs_get_per_row_activations_and_encoders_keep_ort_s(make_bundle):
    decoder = onnx.load(str(Bundle.load(make_bundle("tiny-gpt2", "generate")).model_path("kv-inplace")))
    encoder = onnx.load(str(Bundle.load(make_bundle("tiny-bert", "embed")).model_path("fp32")))
    assert is_decoder_graph(decoder) and not is_decoder_graph(encoder)
    for model, rows in ((decoder, True), (encoder, False)):
        quantized = apply_dynamic(model, {n.name: "per-tensor" for n in weight_matmuls(model)})
        ops = Counter(n.op_type for n in quantized.graph.node)
        assert (ops["DynamicQuantizeLinear"] == 0) is rows and ops["MatMulInteger"] > 0
    assert per_row_activations(encoder) == 0  # nothing to rewrite in a float graph
