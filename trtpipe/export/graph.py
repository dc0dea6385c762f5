"""ONNX graph passes used after export and after every optimisation step.

- dedupe_initializers: identical weights stored once (ALBERT's shared layers survive fusion that re-packs QKV
  per layer, e.g. 119 MiB → 45 MiB for albert-base).
- tie_transposed_weights: a MatMul against the transpose of another initializer (tied embeddings / LM heads that
  constant folding un-tied) becomes Gemm(transB=1) on the original, so the matrix is stored once.
- bypass_weight_identities: `Identity(initializer)` nodes (how torch.onnx exports a parameter used again — ALBERT's
  shared layer in layers 2..12) are removed and their consumers read the initializer itself, so quantizers and
  fusion see every layer's weights as weights, not as activations.
- set_io_shapes: every graph input/output gets exactly the named dims the manifest declares.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TWO_GB = 2**31 - 1024


def initializer_bytes(model: onnx.ModelProto) -> int:
    total = 0
    for init in model.graph.initializer:
        total += (
            int(np.prod(init.dims, dtype=np.int64))
            * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        )
    return total


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _rename_inputs(model: onnx.ModelProto, mapping: dict[str, str]) -> None:
    for graph in _graphs(model.graph):
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name in mapping:
                    node.input[i] = mapping[name]


def bypass_weight_identities(model: onnx.ModelProto) -> int:
    """Remove Identity nodes of the main graph whose input is an initializer (and whose output is not a graph
    output); their consumers, in subgraphs too, read the initializer directly. Returns the number removed."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    mapping: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            mapping[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if mapping:
        del graph.node[:]
        graph.node.extend(keep)
        _rename_inputs(model, mapping)
    return len(mapping)


def dedupe_initializers(model: onnx.ModelProto, min_bytes: int = 1024) -> int:
    """Merge initializers with identical dtype, shape and bytes. Returns the number of bytes saved."""
    graph = model.graph
    keep: dict[tuple, str] = {}
    mapping: dict[str, str] = {}
    saved = 0
    survivors = []
    for init in graph.initializer:
        raw = numpy_helper.to_array(init).tobytes() if not init.raw_data else init.raw_data
        if len(raw) < min_bytes:
            survivors.append(init)
            continue
        key = (init.data_type, tuple(init.dims), hashlib.sha256(raw).digest())
        if key in keep:
            mapping[init.name] = keep[key]
            saved += len(raw)
        else:
            keep[key] = init.name
            survivors.append(init)
    if mapping:
        del graph.initializer[:]
        graph.initializer.extend(survivors)
        _rename_inputs(model, mapping)
        graph_outputs = {o.name for o in graph.output}
        if graph_outputs & set(mapping):
            raise RuntimeError("a graph output is a deduplicated initializer")
    return saved


def tie_transposed_weights(model: onnx.ModelProto, min_elements: int = 4096) -> int:
    """Rewrite MatMul(X, B) where B == A.T for another initializer A as Gemm(X2d, A, transB=1). Returns bytes saved."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    by_shape: dict[tuple, list[str]] = {}
    for name, init in inits.items():
        if len(init.dims) == 2 and int(np.prod(init.dims)) >= min_elements:
            by_shape.setdefault(tuple(init.dims), []).append(name)
    replacements: dict[str, str] = {}  # transposed copy -> original
    matmul_weights = {
        node.input[1] for node in graph.node if node.op_type == "MatMul" and node.input[1] in inits
    }
    for name in sorted(matmul_weights):
        init = inits[name]
        if len(init.dims) != 2 or int(np.prod(init.dims)) < min_elements:
            continue
        rows, cols = init.dims
        for other in by_shape.get((cols, rows), []):
            if other == name or other in matmul_weights:
                continue
            if np.array_equal(numpy_helper.to_array(init), numpy_helper.to_array(inits[other]).T):
                replacements[name] = other
                break
    if not replacements:
        return 0
    saved = 0
    new_nodes = []
    used_elsewhere: set[str] = set()
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in replacements:
            x, b = node.input[0], node.input[1]
            a = replacements[b]
            rows = inits[a].dims[1]
            base = node.name or f"tied_{b}"
            flat_shape = f"{base}/flat_shape"
            new_nodes += [
                helper.make_node(
                    "Constant",
                    [],
                    [flat_shape],
                    value=numpy_helper.from_array(np.array([-1, rows], np.int64)),
                ),
                helper.make_node("Reshape", [x, flat_shape], [f"{base}/x2d"]),
                helper.make_node("Gemm", [f"{base}/x2d", a], [f"{base}/y2d"], name=f"{base}/Gemm", transB=1),
                helper.make_node("Shape", [x], [f"{base}/x_shape"]),
                helper.make_node(
                    "Constant", [], [f"{base}/zero"], value=numpy_helper.from_array(np.array([0], np.int64))
                ),
                helper.make_node(
                    "Constant",
                    [],
                    [f"{base}/minus1"],
                    value=numpy_helper.from_array(np.array([-1], np.int64)),
                ),
                helper.make_node(
                    "Slice", [f"{base}/x_shape", f"{base}/zero", f"{base}/minus1"], [f"{base}/lead"]
                ),
                helper.make_node(
                    "Constant",
                    [],
                    [f"{base}/vocab"],
                    value=numpy_helper.from_array(np.array([inits[a].dims[0]], np.int64)),
                ),
                helper.make_node("Concat", [f"{base}/lead", f"{base}/vocab"], [f"{base}/y_shape"], axis=0),
                helper.make_node("Reshape", [f"{base}/y2d", f"{base}/y_shape"], list(node.output)),
            ]
            continue
        used_elsewhere.update(i for i in node.input if i in replacements)
        new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    dropped = [name for name in replacements if name not in used_elsewhere]
    survivors = [init for init in graph.initializer if init.name not in dropped]
    for name in dropped:
        saved += (
            int(np.prod(inits[name].dims)) * helper.tensor_dtype_to_np_dtype(inits[name].data_type).itemsize
        )
    del graph.initializer[:]
    graph.initializer.extend(survivors)
    return saved


def share_packed_weights(model: onnx.ModelProto) -> int:
    """Where fusion packed Q, K and V of most layers into one [C, 3N] weight but left a layer unfused (ALBERT's
    first layer reads the embedding projection, not a LayerNorm, so ORT's attention fusion skips it), that layer's
    three MatMuls carry copies of the packed weight's column slices. Rewrite them as one MatMul on the packed
    weight + Split, so the weights are stored once. Returns bytes saved."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    slices: dict[bytes, tuple[str, int, int]] = {}
    for name, init in inits.items():
        if len(init.dims) == 2 and init.dims[1] % 3 == 0 and init.dims[0] * init.dims[1] >= 3 * 4096:
            array = numpy_helper.to_array(init)
            width = array.shape[1] // 3
            for part in range(3):
                block = np.ascontiguousarray(array[:, part * width : (part + 1) * width])
                slices[hashlib.sha256(block.tobytes()).digest() + str(block.shape).encode()] = (
                    name,
                    part,
                    width,
                )
    if not slices:
        return 0
    by_input: dict[str, list[tuple[onnx.NodeProto, str, int]]] = {}
    for node in graph.node:
        if node.op_type == "MatMul" and node.input[1] in inits:
            array = numpy_helper.to_array(inits[node.input[1]])
            hit = slices.get(
                hashlib.sha256(np.ascontiguousarray(array).tobytes()).digest() + str(array.shape).encode()
            )
            if hit:
                by_input.setdefault(node.input[0], []).append((node, hit[0], hit[1]))
    saved = 0
    for x, hits in by_input.items():
        packed = {p for _, p, _ in hits}
        parts = {part for _, _, part in hits}
        if len(hits) != 3 or len(packed) != 1 or parts != {0, 1, 2}:
            continue
        packed_name = packed.pop()
        ordered = sorted(hits, key=lambda h: h[2])
        first = ordered[0][0]
        base = f"{first.name or packed_name}/shared_qkv"
        index = list(graph.node).index(first)
        width = inits[packed_name].dims[1] // 3
        split = numpy_helper.from_array(np.array([width] * 3, np.int64), f"{base}/split")
        graph.initializer.append(split)
        new = [
            helper.make_node("MatMul", [x, packed_name], [f"{base}/qkv"], name=f"{base}/MatMul"),
            helper.make_node(
                "Split",
                [f"{base}/qkv", split.name],
                [h[0].output[0] for h in ordered],
                axis=-1,
                name=f"{base}/Split",
            ),
        ]
        for node, _, _ in hits:
            saved += int(np.prod(inits[node.input[1]].dims)) * 4
            graph.node.remove(node)
        for offset, node in enumerate(new):
            graph.node.insert(index + offset, node)
    if saved:
        used = {i for node in graph.node for i in node.input}
        keep = [i for i in graph.initializer if i.name in used]
        del graph.initializer[:]
        graph.initializer.extend(keep)
    return saved


def set_io_shapes(model: onnx.ModelProto, inputs: list[dict], outputs: list[dict]) -> None:
    """Give graph inputs and outputs exactly the dims of the manifest specs (named or fixed)."""
    dtypes = {
        "int64": TensorProto.INT64,
        "int32": TensorProto.INT32,
        "float32": TensorProto.FLOAT,
        "float16": TensorProto.FLOAT16,
        "bool": TensorProto.BOOL,
    }
    for values, specs in ((model.graph.input, inputs), (model.graph.output, outputs)):
        by_name = {spec["name"]: spec for spec in specs}
        for value in values:
            spec = by_name.get(value.name)
            if spec is None:
                continue
            tensor_type = value.type.tensor_type
            tensor_type.elem_type = dtypes[spec["dtype"]]
            tensor_type.shape.ClearField("dim")
            for dim in spec["shape"]:
                entry = tensor_type.shape.dim.add()
                if isinstance(dim, int):
                    entry.dim_value = dim
                else:
                    entry.dim_param = dim


def io_specs(model: onnx.ModelProto) -> tuple[list[dict], list[dict]]:
    """Read input/output specs (name, dtype, dims) from a graph, in manifest form."""
    names = {
        TensorProto.INT64: "int64",
        TensorProto.INT32: "int32",
        TensorProto.FLOAT: "float32",
        TensorProto.FLOAT16: "float16",
        TensorProto.BOOL: "bool",
    }
    init_names = {init.name for init in model.graph.initializer}

    def spec(value) -> dict:
        tensor_type = value.type.tensor_type
        dims = [d.dim_param if d.dim_param else int(d.dim_value) for d in tensor_type.shape.dim]
        return {"name": value.name, "dtype": names.get(tensor_type.elem_type, "float32"), "shape": dims}

    return (
        [spec(v) for v in model.graph.input if v.name not in init_names],
        [spec(v) for v in model.graph.output],
    )


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike, force_external: bool = False) -> list[str]:
    """Save `model`; weights go to `<name>.data` only when the file would pass protobuf's 2 GB limit.
    Returns the files written (relative names)."""
    path = Path(path)
    external = force_external or model.ByteSize() > TWO_GB
    data_name = path.name + ".data"
    if (path.parent / data_name).exists():
        (path.parent / data_name).unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        return [path.name, data_name]
    onnx.save_model(model, str(path))
    return [path.name]


def load_onnx(path: str | os.PathLike, load_external: bool = True) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=load_external)


def check_onnx(path: str | os.PathLike) -> None:
    onnx.checker.check_model(str(path))


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def strip_doc_strings(model: onnx.ModelProto) -> None:
    for graph in _graphs(model.graph):
        for node in graph.node:
            node.doc_string = ""
    model.graph.doc_string = ""
