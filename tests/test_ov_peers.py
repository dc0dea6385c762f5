"""The OpenVINO peers of bench/openvino_peers.py: plain OpenVINO on the bundle's model.onnx, NNCF int8, the MatMul counts
the section prints, and the openvino-genai worker's protocol (its venv is bench-only: the protocol is tested with
this interpreter: a command that fails is answered with an error line, never a crash)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("openvino")


def test_plain_openvino_row_matches_the_ov_backend(make_bundle):
    from trtpipe.benchmark.encode import fixed_feeds
    from trtpipe.benchmark.ov_peers import OvPeerRow
    from trtpipe.runtime import Bundle, open_session

    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    feed = fixed_feeds(bundle, 2, 16, count=1)[0]
    peer = OvPeerRow(bundle.model_path("fp32"), 2, "f32", "OpenVINO (f32)", "f32")
    ours = open_session(bundle, backend="ov", threads=2).run(feed)
    got = peer.run(feed)
    assert set(ours) <= set(got)
    for name, value in ours.items():
        np.testing.assert_allclose(got[name], value, atol=1e-5)
    assert peer.precision == "f32"


def test_nncf_int8_quantises_the_matmuls(make_bundle):
    pytest.importorskip("nncf")
    from trtpipe.benchmark.encode import fixed_feeds
    from trtpipe.benchmark.ov_peers import OvPeerRow, nncf_int8
    from trtpipe.optimize.variants import calibration_feeds
    from trtpipe.runtime import Bundle, open_session

    bundle = Bundle.load(make_bundle("tiny-bert", "embed"))
    path, info = nncf_int8(bundle, calibration_feeds(bundle, ["A short sentence about lists."] * 8, batch=4))
    assert (
        info["int8_weight"] > 0
        and info["matmuls"] == info["int8_weight"] + info["int8_activation"] + info["float"]
    )
    feed = fixed_feeds(bundle, 2, 16, count=1)[0]
    got = OvPeerRow(path, 2, "f32", "NNCF", "int8").run(feed)["sentence_embedding"]
    ref = open_session(bundle, threads=2).run(feed)["sentence_embedding"]
    cosine = np.sum(got * ref, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert cosine.min() > 0.9


def test_qdq_matmul_kinds_counts_both_inputs_dequantised(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from trtpipe.benchmark.ov_peers import qdq_matmul_kinds

    def init(name, dtype, dims, values):
        return helper.make_tensor(name, dtype, dims, values)

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y1"]),
        helper.make_node("MatMul", ["x", "w"], ["y2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, [1, 2]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, [1, 2]),
        ],
        [
            init("s", TensorProto.FLOAT, [], [0.1]),
            init("z", TensorProto.INT8, [], [0]),
            init("wq", TensorProto.INT8, [2, 2], [1, 2, 3, 4]),
            init("w", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0]),
        ],
    )
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert qdq_matmul_kinds(tmp_path / "m.onnx") == {"matmuls": 2, "int8": 1, "float": 1}


def test_first_divergence():
    from trtpipe.benchmark.ov_peers import first_divergence

    assert first_divergence([1, 2, 3], [1, 2, 3]) == 3
    assert first_divergence([1, 2, 4], [1, 2, 3]) == 2
    assert first_divergence([5], [1, 2]) == 0
    assert first_divergence([1, 2], [1, 2, 3]) == 2


def test_missing_genai_venv_is_one_line_naming_the_target(monkeypatch, tmp_path):
    from trtpipe.benchmark import ov_peers
    from trtpipe.runtime import UserError

    monkeypatch.setattr(ov_peers, "GENAI_VENV", tmp_path / "nope")
    with pytest.raises(UserError, match="make bench-peers"):
        ov_peers.genai_python()


def test_worker_answers_every_command_with_one_json_line():
    """Run by this interpreter (no openvino_genai here): a command that fails is an error line, the worker goes
    on, and quit ends it with exit 0."""
    commands = [{"op": "info"}, {"op": "generate", "name": "x", "ids": [1], "new_tokens": 1}, {"op": "quit"}]
    done = subprocess.run(
        [sys.executable, str(ROOT / "trtpipe" / "benchmark" / "ov_genai_worker.py")],
        input="".join(json.dumps(c) + "\n" for c in commands),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == 2
    assert answers[0]["ok"] is True or "openvino_genai" in answers[0]["error"]
    assert answers[1]["ok"] is False and answers[1]["error"].startswith(("ModuleNotFoundError", "KeyError"))


def test_worker_protocol_answers_each_line_and_names_the_error(monkeypatch):
    """The loop the three peer workers share: one answer per command, a failing op is an error line with the
    library's own framing lines skipped, blank lines ignored, quit stops before the lines after it."""
    import io

    sys.path.insert(0, str(ROOT / "trtpipe" / "benchmark"))
    try:
        import worker_protocol
    finally:
        sys.path.remove(str(ROOT / "trtpipe" / "benchmark"))

    def broken(cmd):
        raise RuntimeError("Exception from src/core.cpp:1:\nthe real reason\nCheck 'x' failed at y")

    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    commands = [
        {"op": "echo", "x": 1},
        {"op": "broken"},
        {"op": "nope"},
        {"op": "quit"},
        {"op": "echo", "x": 2},
    ]
    lines = [json.dumps(c) + "\n" for c in commands]
    code = worker_protocol.serve(
        {"echo": lambda cmd: {"x": cmd["x"]}, "broken": broken},
        lines=["\n", *lines],
        skip=("Exception from", "Check '"),
    )
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0 and answers[0] == {"ok": True, "x": 1}
    assert answers[1] == {"ok": False, "error": "RuntimeError: the real reason"}
    assert answers[2]["ok"] is False and answers[2]["error"].startswith("KeyError") and len(answers) == 3
