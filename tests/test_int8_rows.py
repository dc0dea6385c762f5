"""Per-row dynamic int8 activations: a row's answer does not depend on the rows batched with it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort

from trtpipe.benchmark.batch_scaling import layer_stack
from trtpipe.optimize.int8 import apply_dynamic, weight_matmuls
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


def _encoder_feeds(ids: list[list[int]]) -> dict[str, np.ndarray]:
    """Right-padded encoder inputs for texts of these token ids."""
    width = max(len(row) for row in ids)
    input_ids = np.zeros((len(ids), width), dtype=np.int64)
    mask = np.zeros_like(input_ids)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}


def test_every_dynamic_int8_graph_quantises_per_row_so_a_text_embeds_the_same_in_any_batch(make_bundle):
    decoder = onnx.load(str(Bundle.load(make_bundle("tiny-gpt2", "generate")).model_path("kv-inplace")))
    encoder = onnx.load(str(Bundle.load(make_bundle("tiny-bert", "embed")).model_path("fp32")))
    for model in (decoder, encoder):
        ops = Counter(
            n.op_type
            for n in apply_dynamic(model, {n.name: "per-tensor" for n in weight_matmuls(model)}).graph.node
        )
        assert ops["DynamicQuantizeLinear"] == 0 and ops["MatMulInteger"] > 0
    assert per_row_activations(encoder) == 0  # nothing to rewrite in a float graph
    plan = {n.name: "per-channel" for n in weight_matmuls(encoder)}
    rng = np.random.default_rng(0)
    short = [2, *rng.integers(5, 500, 6).tolist(), 3]
    loud = [2, *rng.integers(5, 500, 60).tolist(), 3]
    alone, batched = _encoder_feeds([short]), _encoder_feeds([short, loud])
    drift = {}
    for per_row in (False, True):
        model = apply_dynamic(encoder, plan, per_row=per_row)
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        names = {i.name for i in session.get_inputs()}
        one = session.run(["sentence_embedding"], {k: v for k, v in alone.items() if k in names})[0][0]
        two = session.run(["sentence_embedding"], {k: v for k, v in batched.items() if k in names})[0][0]
        drift[per_row] = float(np.abs(one - two).max())
    # one scale per tensor: the short text's rounding follows its batch companion and the padding
    assert drift[False] > 1e-3 and drift[True] < 1e-5, drift


def test_an_int8_embedding_bundle_gives_a_text_the_same_vector_alone_or_batched(make_bundle, copy_bundle):
    from trtpipe.optimize.variants import optimize_bundle
    from trtpipe.runtime import load_pipeline

    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    entry = optimize_bundle(path, "int8", force=True)
    assert entry["report"]["activations"].startswith("per row")
    pipeline = load_pipeline(path, variant="int8")
    text, other = "a short text", "another sentence, as short"  # close in length: one batch, little padding
    alone = pipeline.embed([text])[0]
    batched = pipeline.embed([text, other], batch_size=2)[0]
    np.testing.assert_allclose(batched, alone, atol=1e-6)


def _linear_with_bias(seed: int = 0) -> onnx.ModelProto:
    """x [B, S, 64] → MatMul → Add(bias) → MatMul → Add(bias): real (non-zero) biases, as trained models have."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.standard_normal((64, 96)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(96).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((96, 32)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1/MatMul"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1/Add"),
        helper.make_node("MatMul", ["hb", "w2"], ["y"], name="fc2/MatMul"),
        helper.make_node("Add", ["y", "b2"], ["out"], name="fc2/Add"),
    ]
    graph = helper.make_graph(
        nodes,
        "linear-bias",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "S", 64])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["B", "S", 32])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_row_scales_never_multiply_the_bias():
    """ORT fuses MatMulInteger → Cast → Mul → Add(bias) into MatMulIntegerToFloat, whose kernel applies a
    non-scalar A scale after adding the bias (bias × row scale): with trained biases the output was garbage
    (MiniLM sentence cosine 0.64 against fp32). The bias Add must stay out of that fusion."""
    base = _linear_with_bias()
    plan = {n.name: "per-channel" for n in weight_matmuls(base)}
    per_row = apply_dynamic(base, plan, per_row=True)
    x = np.random.default_rng(1).standard_normal((2, 5, 64)).astype(np.float32)
    reference = _run(base, x)
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(
            per_row.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        out = session.run(None, {"x": x})[0]
        error = np.abs(out - reference).max() / np.abs(reference).max()
        assert error < 0.03, (level, error)
        assert np.array_equal(session.run(None, {"x": x[:1, :2]})[0], out[:1, :2])  # a row alone = batched
