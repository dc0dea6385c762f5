"""The runtime's protobuf walk (`runtime/onnx_scan.py`): named float initializers read without the onnx package,
inline or stored outside the file, exactly as onnx reads them; a name it lacks or a tensor that is no float is a
ScanError."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtpipe.runtime.onnx_scan import ScanError, external_data_locations, float_initializers, node_names


def _model(path, external: bool):
    rng = np.random.default_rng(0)
    small = rng.standard_normal((1, 3, 1, 4)).astype(np.float32)
    big = rng.standard_normal((64, 64)).astype(np.float32)
    ints = np.arange(6, dtype=np.int64)
    inits = [numpy_helper.from_array(a, n) for a, n in ((small, "s"), (big, "w"), (ints, "i"))]
    # float_data, not raw bytes
    inits.append(helper.make_tensor("listed", TensorProto.FLOAT, [2], [1.5, -2.0]))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        inits,
    )
    model = helper.make_model(graph)
    if external:
        onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    else:
        onnx.save(model, path)
    return {"s": small, "w": big, "listed": np.array([1.5, -2.0], np.float32)}


@pytest.mark.parametrize("external", [False, True])
def test_named_float_initializers_read_as_onnx_reads_them(tmp_path, external):
    path = tmp_path / "m.onnx"
    want = _model(path, external)
    got = float_initializers(path, {"s", "w", "listed"})
    assert set(got) == {"s", "w", "listed"}
    for name, value in want.items():
        assert got[name].dtype == np.float32
        np.testing.assert_array_equal(got[name], value)
    assert bool(external_data_locations(path)) == external
    with pytest.raises(ScanError, match="no float initializer 'i'"):  # an int64 tensor is not one
        float_initializers(path, {"s", "i"})
    with pytest.raises(ScanError, match="no float initializer 'missing'"):
        float_initializers(path, {"missing"})


@pytest.mark.parametrize("external", [False, True])
def test_node_names_are_the_graphs_in_order(tmp_path, external):
    path = tmp_path / "m.onnx"
    _model(str(path), external)
    model = onnx.load(str(path), load_external_data=False)
    model.graph.node.extend(
        [
            helper.make_node("Relu", ["y"], ["z"], name="/pair_rows/relu"),
            helper.make_node("Neg", ["z"], ["n"]),
        ]
    )
    model.graph.node[0].name = "first"
    onnx.save(model, str(path))
    assert node_names(path) == [n.name for n in model.graph.node] == ["first", "/pair_rows/relu", ""]
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ScanError):
        node_names(tmp_path / "empty.onnx")
