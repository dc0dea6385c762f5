"""Read the external-data locations, a few named float initializers and the node names out of an ONNX file without
the onnx package (the runtime stays lean).

A minimal protobuf wire-format walk over ModelProto → GraphProto → TensorProto (initializers, sparse initializers
and tensors inside node attributes, subgraphs included); raw weight bytes are skipped by length, and read only for
the initializers `float_initializers` is asked for (the int8 KV cache's scales, `prefill.py`).
"""

from __future__ import annotations

import mmap
from contextlib import contextmanager
from pathlib import Path

# field numbers from onnx.proto
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_NAME, NODE_ATTRIBUTE = 3, 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 5, 6, 10, 11, 22, 23
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TENSOR_NAME, TENSOR_EXTERNAL_DATA = 8, 13
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_FLOAT_DATA, TENSOR_RAW_DATA = 1, 2, 4, 9
FLOAT = 1  # TensorProto.FLOAT
ENTRY_KEY, ENTRY_VALUE = 1, 2


class ScanError(ValueError):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if pos >= end or shift > 63:
            raise ScanError("truncated or malformed protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Yield (field number, wire type, value start, value end or varint value) over one message."""
    pos = start
    while pos < end:
        tag, pos = _varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, None
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ScanError("truncated protobuf field")
            yield number, wire, pos, pos + length
            pos += length
        else:
            raise ScanError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ScanError("truncated protobuf message")


def _entry(buf, start: int, end: int) -> tuple[str | None, str | None]:
    """(key, value) of one StringStringEntryProto (a tensor's external-data entry)."""
    key = value = None
    for n, w, x, y in _fields(buf, start, end):
        if w == 2 and n == ENTRY_KEY:
            key = bytes(buf[x:y]).decode("utf-8", "replace")
        elif w == 2 and n == ENTRY_VALUE:
            value = bytes(buf[x:y]).decode("utf-8", "replace")
    return key, value


def _tensor(buf, start: int, end: int, out: list[tuple[str, str]]) -> None:
    name = ""
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == TENSOR_NAME:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif number == TENSOR_EXTERNAL_DATA:
            key, value = _entry(buf, a, b)
            if key == "location" and value is not None:
                out.append((name, value))


def _sparse(buf, start: int, end: int, out) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if wire == 2 and number in (SPARSE_VALUES, SPARSE_INDICES):
            _tensor(buf, a, b, out)


def _graph(buf, start: int, end: int, out, depth: int) -> None:
    if depth > 32:
        raise ScanError("subgraphs nested too deeply")
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number == GRAPH_INITIALIZER:
            _tensor(buf, a, b, out)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse(buf, a, b, out)
        elif number == GRAPH_NODE:
            for n, w, x, y in _fields(buf, a, b):
                if w == 2 and n == NODE_ATTRIBUTE:
                    _attribute(buf, x, y, out, depth)


def _attribute(buf, start: int, end: int, out, depth: int) -> None:
    for number, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        if number in (ATTR_T, ATTR_TENSORS):
            _tensor(buf, a, b, out)
        elif number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
            _sparse(buf, a, b, out)
        elif number in (ATTR_G, ATTR_GRAPHS):
            _graph(buf, a, b, out, depth + 1)


@contextmanager
def _mapped(path: Path):
    """The file memory-mapped read-only (an empty one is a ScanError: it has no ModelProto, and mmap refuses it)."""
    if path.stat().st_size == 0:
        raise ScanError("empty file")
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        yield buf


def _graph_fields(buf, field: int):
    """(start, end) of every length-delimited field number `field` of the main graph (GraphProto)."""
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == MODEL_GRAPH and wire == 2:
            for n, w, x, y in _fields(buf, a, b):
                if n == field and w == 2:
                    yield x, y


def external_data_locations(path: str | Path) -> list[tuple[str, str]]:
    """[(tensor name, location)] for every tensor stored outside the .onnx file."""
    out: list[tuple[str, str]] = []
    with _mapped(Path(path)) as buf:
        for number, wire, a, b in _fields(buf, 0, len(buf)):
            if number == MODEL_GRAPH and wire == 2:
                _graph(buf, a, b, out, 0)
    return out


def _float(buf, start: int, end: int, folder: Path, names: set[str]):
    """(name, its float32 array, or None when it is not a float tensor or not one of `names`) of one TensorProto."""
    import numpy as np

    name, dims, dtype, data, external = "", [], None, None, {}
    for number, wire, a, b in _fields(buf, start, end):
        if number == TENSOR_NAME and wire == 2:
            name = bytes(buf[a:b]).decode("utf-8", "replace")
        elif number == TENSOR_DIMS and wire == 0:
            dims.append(a)
        elif number == TENSOR_DIMS and wire == 2:  # packed
            pos = a
            while pos < b:
                value, pos = _varint(buf, pos, b)
                dims.append(value)
        elif number == TENSOR_DATA_TYPE and wire == 0:
            dtype = a
        elif number in (TENSOR_RAW_DATA, TENSOR_FLOAT_DATA) and wire == 2:
            data = (a, b)  # read only if it is asked for
        elif number == TENSOR_EXTERNAL_DATA and wire == 2:
            key, value = _entry(buf, a, b)
            external[key] = value
    if dtype != FLOAT or name not in names:
        return name, None
    if data is not None:
        data = bytes(buf[data[0] : data[1]])
    elif "location" in external:
        with open(folder / external["location"], "rb") as handle:
            handle.seek(int(external.get("offset") or 0))
            data = handle.read(int(external["length"]) if external.get("length") else -1)
    count = int(np.prod(dims)) if dims else 1
    if data is None or len(data) != 4 * count:
        raise ScanError(
            f"initializer {name!r} holds {0 if data is None else len(data)} bytes, not {count} floats"
        )
    return name, np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32)


def float_initializers(path: str | Path, names: set[str]) -> dict:
    """{name: float32 array} for the graph initializers named in `names` (a ScanError names any missing one)."""
    path = Path(path)
    found: dict = {}
    with _mapped(path) as buf:
        for x, y in _graph_fields(buf, GRAPH_INITIALIZER):
            name, value = _float(buf, x, y, path.parent, names)
            if value is not None:
                found[name] = value
    missing = sorted(set(names) - set(found))
    if missing:
        raise ScanError(f"{path.name} has no float initializer {missing[0]!r}")
    return found


def node_names(path: str | Path) -> list[str]:
    """The names of the main graph's nodes, in order ("" for a node without one)."""
    names: list[str] = []
    with _mapped(Path(path)) as buf:
        for x, y in _graph_fields(buf, GRAPH_NODE):
            name = ""  # a node without a name has no name field
            for f, k, c, d in _fields(buf, x, y):
                if f == NODE_NAME and k == 2:
                    name = bytes(buf[c:d]).decode("utf-8", "replace")
            names.append(name)
    return names
