"""Parity catches real differences: perturbed outputs and tampered graphs fail, with the numbers to debug them."""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.parity import compare_arrays
from trtpipe.runtime.paths import sha256_file


def test_compare_reports_first_mismatch_and_stats():
    ref = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    same = compare_arrays("x", ref, ref.copy(), 1e-4, 1e-4)
    assert same.passed and same.max_abs == 0 and same.cosine > 0.999999
    bad = ref.copy()
    bad[1, 2, 3] += 1e-2
    stats = compare_arrays("x", ref, bad, 1e-4, 1e-4)
    assert not stats.passed
    assert stats.first_mismatch == [1, 2, 3] and stats.mismatches == 1
    assert abs(stats.max_abs - 1e-2) < 1e-6
    nan = ref.copy()
    nan[0, 0, 0] = np.nan
    stats = compare_arrays("x", ref, nan, 1e-4, 1e-4)
    assert not stats.passed and stats.nan == 1
    masked = compare_arrays("x", ref, bad, 1e-4, 1e-4, valid=np.array([True, False])[:, None, None])
    assert masked.passed  # the perturbation sits in an ignored (padding) row
    assert not compare_arrays("x", ref, ref[:1], 1e-4, 1e-4).passed


def test_tampered_graph_fails_parity_with_exit_1(make_bundle, copy_bundle):
    """Simulate a broken exporter: add noise to one weight matrix and re-hash; parity must catch it."""
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    model = onnx.load(str(path / "model.onnx"))
    last_matmul = [n.input[1] for n in model.graph.node if n.op_type == "MatMul"][-1]  # the last FFN output
    init = next(i for i in model.graph.initializer if i.name == last_matmul)
    array = numpy_helper.to_array(init).copy()
    array += np.random.default_rng(0).normal(0, 1e-2, array.shape).astype(array.dtype)
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(path / "model.onnx"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["variants"]["fp32"]["sha256"]["model.onnx"] = sha256_file(path / "model.onnx")
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["parity", str(path)])
    assert result.exit_code == 1, result.output
    assert "parity FAILED" in result.output and "first at" in result.output
    stored = json.loads((path / "manifest.json").read_text())["variants"]["fp32"]["parity"]["ort-cpu"]
    assert stored["verdict"] == "fail"


def test_parity_refuses_when_source_weights_changed(make_bundle, copy_bundle):
    path = copy_bundle(make_bundle("tiny-bert", "embed"))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["source"]["seed"] = 1  # a different seed rebuilds different weights
    (path / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(app, ["parity", str(path)])
    assert result.exit_code == 2 and "changed since export" in result.output
