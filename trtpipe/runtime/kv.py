"""The one place that lays out a decoder's feeds and its KV cache: prefill and decode inputs, K/V buffers.

Two layouts (DESIGN §3):
- in place (the `kv-inplace` variant, GroupQueryAttention): one [B, H, T, D] buffer per layer and kind, bound as
  both past and present; each row has its own length (`seqlens_k`), so a row is prefilled alone (in chunks, if
  wanted) and any run of rows decodes together.
- ping-pong (the standard interop graph): prompts are left-padded to a common width and masked; past is read at
  the current length from one copy and present (past + the new rows) is written into the other, then they swap.
Host buffers (`KVCache`) serve ONNX Runtime on the CPU; `DeviceKVCache` holds device pointers for ORT-CUDA and
TensorRT. Every buffer is allocated once, up to the request's capacity; no step grows a cache.
"""

from __future__ import annotations

import numpy as np

# ------------------------------------------------------------------------------------------------------ feeds


def kv8_scale_name(layer: int, kind: str) -> str:
    """The initializer that holds layer `layer`'s `kind` ("k" or "v") scales in an int8-cache twin (kv_int8.py)."""
    return f"/kv8/layer{layer}/{kind}_scale"


def kv_names(layers: int) -> list[tuple[int, str, str]]:
    """(buffer index, past input, present output) for every layer and kind, in buffer order."""
    return [
        (2 * layer + k, f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}")
        for layer in range(layers)
        for k, kind in enumerate(("key", "value"))
    ]


def left_padded(prompts: list[list[int]], pad_id: int) -> dict[str, np.ndarray]:
    """Ping-pong prefill: prompts left-padded to the longest, with the mask and positions that skip the padding."""
    batch = len(prompts)
    width = max(len(ids) for ids in prompts)
    input_ids = np.full((batch, width), pad_id, dtype=np.int64)
    mask = np.zeros((batch, width), dtype=np.int64)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = ids
        mask[row, width - len(ids) :] = 1
    positions = np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64)
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}


def next_step(tokens: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Ping-pong decode: one token per row; the mask grows by one column and positions follow it."""
    batch = len(tokens)
    mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
    return {
        "input_ids": np.asarray(tokens, dtype=np.int64).reshape(batch, 1),
        "attention_mask": mask,
        "position_ids": (mask.sum(-1, keepdims=True) - 1).astype(np.int64),
    }


def chunk(ids: list[int], past: int = 0) -> dict[str, np.ndarray]:
    """Ping-pong, one row, no padding: its tokens after `past` cached ones (a whole prompt, or a chunk of one)."""
    n = len(ids)
    return {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "attention_mask": np.ones((1, past + n), dtype=np.int64),
        "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
    }


def inplace_prefill(ids: list[int], past: int = 0) -> dict[str, np.ndarray]:
    """In place: one row's tokens (a whole prompt, or a chunk of one after `past` cached tokens)."""
    n = len(ids)
    return {
        "input_ids": np.asarray([ids], dtype=np.int64),
        "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
        "seqlens_k": np.array([past + n - 1], dtype=np.int32),
        "total_sequence_length": np.array(past + n, dtype=np.int32),
    }


def inplace_decode(tokens: np.ndarray, lengths: np.ndarray) -> dict[str, np.ndarray]:
    """In place: one token per row; `lengths` = cached tokens per row before this step."""
    batch = len(tokens)
    return {
        "input_ids": np.asarray(tokens, dtype=np.int64).reshape(batch, 1),
        "position_ids": lengths.astype(np.int64).reshape(batch, 1),
        "seqlens_k": lengths.astype(np.int32),
        "total_sequence_length": np.array(int(lengths.max()) + 1, dtype=np.int32),
    }


def fused_step(
    tokens: np.ndarray, lengths: np.ndarray, chunk_ids: list[int], chunk_past: int
) -> dict[str, np.ndarray]:
    """The fused step graph (`fused.py`): R rows' tokens after `lengths` cached ones, then a prompt chunk after
    `chunk_past` of its own, packed into one sequence [1, R + C]; logits at the R rows and the chunk's last token."""
    rows, count = len(tokens), len(chunk_ids)
    return {
        "input_ids": np.concatenate([np.asarray(tokens), np.asarray(chunk_ids)]).astype(np.int64)[None],
        "position_ids": np.concatenate([lengths, np.arange(chunk_past, chunk_past + count)]).astype(np.int64)[
            None
        ],
        "seqlens_k": np.asarray(lengths, dtype=np.int32),
        "total_sequence_length": np.array(int(np.max(lengths)) + 1, dtype=np.int32),
        "chunk_seqlens_k": np.array([chunk_past + count - 1], dtype=np.int32),
        "chunk_total_sequence_length": np.array(chunk_past + count, dtype=np.int32),
        "logit_positions": np.concatenate([np.arange(rows), [rows + count - 1]]).astype(np.int64),
    }


def empty_past(layers: int, heads: int, head_dim: int, batch: int = 1, dtype=np.float32) -> dict:
    """Zero-length past_key_values for every layer: the interop graph's prefill (no cache yet)."""
    return {past: np.zeros((batch, heads, 0, head_dim), dtype=dtype) for _, past, _ in kv_names(layers)}


def full_sequence(ids: list[int], layers: int, heads: int, head_dim: int) -> dict[str, np.ndarray]:
    """The uncached oracle's feeds: the whole sequence, no padding, an empty past."""
    return {**chunk(ids), **empty_past(layers, heads, head_dim)}


# --------------------------------------------------------------------------------------------------- caches


class KVCache:
    """Host K/V buffers for one request or one slot table: in place (one copy) or ping-pong (two)."""

    def __init__(
        self,
        layers: int,
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        inplace: bool,
        dtype=np.float32,
    ):
        self.layers, self.batch, self.heads, self.head_dim = layers, batch, heads, head_dim
        self.capacity = capacity
        self.inplace = inplace
        self.dtype = np.dtype(dtype)
        size = batch * heads * capacity * head_dim
        copies = 1 if inplace else 2
        self.buffers = [[np.zeros(size, dtype=self.dtype) for _ in range(2 * layers)] for _ in range(copies)]
        self.current = 0  # ping-pong: which copy holds past
        self.length = 0
        self.bindings: dict = {}  # in place: decode-step IOBindings by row count, made once and reused
        self.step_logits: np.ndarray | None = None  # in place: the decode step's logits buffer
        self.fused_logits: np.ndarray | None = None  # in place: the fused step's (`fused.py`)

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for copy in self.buffers for b in copy)

    def names(self) -> list[tuple[int, str, str]]:
        return kv_names(self.layers)

    def view(self, copy: int, index: int, length: int, batch: int | None = None, row: int = 0) -> np.ndarray:
        """A contiguous [B, H, length, D] view (ping-pong) or the whole [B, H, T, D] buffer row(s) (in place)."""
        batch = self.batch if batch is None else batch
        flat = self.buffers[copy][index]
        if self.inplace:
            per_row = self.heads * self.capacity * self.head_dim
            return flat[row * per_row : (row + batch) * per_row].reshape(
                batch, self.heads, self.capacity, self.head_dim
            )
        count = batch * self.heads * length * self.head_dim
        return flat[:count].reshape(batch, self.heads, length, self.head_dim)

    def swap(self) -> None:
        if not self.inplace:
            self.current = 1 - self.current

    def swap_rows(self, a: int, b: int, length_a: int, length_b: int) -> None:
        """In place: exchange the cached tokens of rows `a` and `b` (their first `length_a` / `length_b` positions;
        GroupQueryAttention reads nothing past a row's length, so the rest need not move)."""
        if not self.inplace:
            raise ValueError("rows of a ping-pong cache share one length and are not swapped")
        for index in range(2 * self.layers):
            first, second = self.view(0, index, 0, 1, a), self.view(0, index, 0, 1, b)
            kept = first[:, :, :length_a].copy()
            first[:, :, :length_b] = second[:, :, :length_b]
            second[:, :, :length_a] = kept


class DeviceKVCache:
    """Ping-pong K/V buffers on a GPU for one request: `pointers[copy][index]` are device addresses ([B, H, T, D]);
    `owners` keeps alive whatever owns them (ONNX Runtime OrtValues; TensorRT pools free their own)."""

    inplace = False

    def __init__(
        self,
        pointers: list[list[int]],
        batch: int,
        heads: int,
        head_dim: int,
        capacity: int,
        dtype,
        owners: object = None,
    ):
        self.pointers = pointers
        self.owners = owners
        self.batch, self.heads, self.head_dim, self.capacity = batch, heads, head_dim, capacity
        self.dtype = np.dtype(dtype)
        self.current = 0
        self.length = 0

    @property
    def nbytes(self) -> int:
        return kv_buffer_bytes(
            self.batch, self.heads, self.capacity, self.head_dim, self.dtype.itemsize
        ) * sum(len(copy) for copy in self.pointers)

    def shape(self, length: int) -> tuple[int, int, int, int]:
        return (self.batch, self.heads, length, self.head_dim)

    def past(self, index: int) -> int:
        return self.pointers[self.current][index]

    def present(self, index: int) -> int:
        return self.pointers[1 - self.current][index]

    def swap(self) -> None:
        self.current = 1 - self.current


def kv_buffer_bytes(batch: int, heads: int, length: int, head_dim: int, itemsize: int) -> int:
    """Bytes of one K or V buffer [B, H, T, D]; a ping-pong pool holds 2 copies × 2 kinds × layers of these."""
    return batch * heads * length * head_dim * itemsize
