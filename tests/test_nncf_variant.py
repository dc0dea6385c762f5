"""int8-nncf: NNCF's static int8 for the `ov` backend, gated on OpenVINO, recorded like every variant; ALBERT's shared
weights stay shared; the search keeps weights float until the calibration gate passes; decoders are refused."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.optimize.nncf_int8 import int8_matmuls, quantize_nncf_gated
from trtpipe.optimize.variants import calibration_feeds, optimize_bundle, read_texts
from trtpipe.runtime import Bundle, UserError, open_session

pytest.importorskip("nncf")
pytest.importorskip("openvino")

runner = CliRunner()


@pytest.fixture(scope="module")
def nncf_bundles(make_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("nncf")
    out = {}
    for preset, task in (("tiny-albert", "classify"), ("tiny-bert", "embed")):
        path = root / f"{preset}-{task}"
        shutil.copytree(make_bundle(preset, task), path)
        optimize_bundle(path, "int8-nncf", force=True)  # force: the verdict is recorded either way
        out[preset] = Bundle.load(path)
    return out


def test_the_variant_is_recorded_with_its_recipe_and_an_openvino_gate(nncf_bundles):
    for bundle in nncf_bundles.values():
        entry = bundle.variants["int8-nncf"]
        assert entry["file"] == "model.int8-nncf.onnx" and entry["made_from"] == "fp32"
        assert entry["gate"]["backend"] == "ov" and entry["gate"]["verdict"] in ("pass", "fail")
        report = entry["report"]
        assert report["quantizer"].startswith("nncf ") and "TRANSFORMER" in report["recipe"]
        assert "overflow_fix=ENABLE" in report["recipe"]  # 7-bit weights in every layer (AVX2 CPUs)
        assert report["int8_weight_matmuls"] > 0 and report["plans_tried"]
        bundle.model_path("int8-nncf")  # sha256 verified
    # both pass their gates on OpenVINO at the first rung (measured: ALBERT labels 1.000, BERT cosine 0.9996 /
    # 0.9989); without the overflow fix tiny BERT failed at every rung on an AVX2 CPU (0.98 / 0.96)
    for bundle in nncf_bundles.values():
        entry = bundle.variants["int8-nncf"]
        assert entry["gate"]["verdict"] == "pass" and entry["report"]["fp32_nodes"] == [], entry["gate"]


def test_albert_keeps_one_int8_copy_of_each_shared_weight(nncf_bundles):
    bundle = nncf_bundles["tiny-albert"]
    fp32 = bundle.model_path("fp32").stat().st_size
    size = bundle.model_path("int8-nncf").stat().st_size
    assert size < 0.5 * fp32, (size, fp32)  # int8 weights, stored once however many layers read them
    model = onnx.load(str(bundle.model_path("int8-nncf")))
    counts = int8_matmuls(model)
    layers = bundle.model["num_layers"]
    assert counts["int8_weight_matmuls"] >= 4 * layers  # every layer's projections, shared ones too


def test_ov_and_ort_run_it_and_agree_with_fp32(nncf_bundles):
    bundle = nncf_bundles["tiny-albert"]
    from trtpipe.optimize.gate import encoder_batches

    feed = encoder_batches(bundle, read_texts(None, 8, "heldout"))[0]
    reference = open_session(bundle, backend="ort-cpu").run(feed)["logits"]
    ov = open_session(bundle, backend="ov", variant="int8-nncf").run(feed)["logits"]
    ort = open_session(bundle, backend="ort-cpu", variant="int8-nncf").run(feed)["logits"]
    np.testing.assert_allclose(ov, ort, atol=5e-2)  # the same QDQ graph on two runtimes
    assert (ov.argmax(-1) == reference.argmax(-1)).mean() >= 0.75
    assert not np.allclose(ov, reference, atol=1e-6)  # it is quantised


def test_the_search_keeps_the_worst_weights_float_until_the_gate_passes(make_bundle):
    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    feeds = calibration_feeds(bundle, read_texts(None, 16, "train"))
    verdicts = iter([False, False, True])
    model, report = quantize_nncf_gated(bundle.model_path("fp32"), feeds, lambda _: next(verdicts))
    tried = report["plans_tried"]
    assert [t["passed_calibration"] for t in tried] == [False, False, True]
    floats = [t["float_weight_nodes"] for t in tried]
    assert floats[0] == 0 and floats[0] < floats[1] < floats[2]
    assert len(report["fp32_nodes"]) == floats[-1]
    names = {n.name: n for n in model.graph.node}
    produced = {o: n for n in model.graph.node for o in n.output}
    for name in report["fp32_nodes"]:  # a kept weight reads its float initializer, not a DequantizeLinear
        weight = names[name].input[1]
        assert weight not in produced or produced[weight].op_type != "DequantizeLinear"


def test_a_decoder_is_refused_in_one_line(make_bundle):
    path = make_bundle("tiny-gpt2", "generate")
    with pytest.raises(UserError, match="int8-wo or int4"):
        optimize_bundle(path, "int8-nncf")
    result = runner.invoke(app, ["optimize", str(path), "--precision", "int8-nncf"])
    assert result.exit_code == 2 and "int8-wo or int4" in result.output
    assert "int8-nncf" not in Bundle.load(path).variants
