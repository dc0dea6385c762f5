"""`SlotDecoder`: in-flight batching on the interop (ping-pong) GPT-2 graph, for backends without the in-place one.

`BatchEngine` drives a runner through three calls: `new_cache(slots, capacity)`, `prefill_row(ids, cache, row,
past, logits)` and `decode(tokens, lengths, cache, mask)`. On ONNX Runtime's CPU the in-place KV graph
(GroupQueryAttention, a length per row) answers them directly. OpenVINO runs only the interop graph, whose past is
one [B, H, W, D] tensor per layer and kind with an attention mask [B, W + 1], so here the rows share a width:

- a prompt is prefilled alone (batch 1, in chunks, into the row's own buffers), and joins the shared buffers,
  right-aligned, at its first decode step: its columns are always the last `length` ones, the rest masked;
- every decode step runs rows [0, B), all of them running (BatchEngine packs them there, `packing.py`), on the
  shared past and appends one column (the present the graph returns, copied once, is the next step's past); rows
  past B (prefilling on their own buffers, or left) are dropped from the shared tensors;
- the width moves in buckets of 32 columns, so the graph sees a new shape once every 32 steps rather than every
  step (OpenVINO prepares its kernels per shape): each step drops the free column on the left (one copy of the
  K/V), a full width grows by a bucket, and columns no row uses any more (a long request left) are dropped.

A masked position adds exp(min − max) = 0 to the softmax and 0 · V to the sum, so a row gets what it gets alone
up to the order the engine's kernels add in (tests: token for token on the tiny bundles).
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle

BUCKET = 32  # columns the shared width grows or shrinks by (`SlotCache.settle`)


class SlotCache:
    """The shared [B, H, W, D] K/V tensors and mask [B, W] of the running rows, and each prefilling row's own."""

    def __init__(self, layers: int, slots: int, heads: int, head_dim: int, capacity: int, dtype=np.float32):
        self.layers, self.slots, self.heads, self.head_dim = layers, slots, heads, head_dim
        self.capacity = capacity
        self.dtype = np.dtype(dtype)
        self.kv = [np.zeros((0, heads, 0, head_dim), self.dtype) for _ in range(2 * layers)]
        self.mask = np.zeros((0, 0), np.int64)
        self.own: dict[int, list[np.ndarray]] = {}  # row → its K/V while it prefills ([1, H, n, D] each)
        self.joined = np.zeros(slots, bool)  # the row's K/V lives in the shared tensors

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @property
    def nbytes(self) -> int:
        own = sum(b.nbytes for buffers in self.own.values() for b in buffers)
        return sum(b.nbytes for b in self.kv) + own

    def reset(self, row: int) -> None:
        self.own.pop(row, None)
        if self.joined[row]:
            self.joined[row] = False
            self.mask[row] = 0

    def fit(self, rows: int, width: int) -> None:
        """Grow the shared tensors to at least `rows` rows and `width` columns (new ones zero and masked; old
        columns keep their place from the right)."""
        if rows <= self.rows and width <= self.width:
            return
        rows, width = max(rows, self.rows), max(width, self.width)
        shift = width - self.width
        mask = np.zeros((rows, width), np.int64)
        mask[: self.rows, shift:] = self.mask
        for index, old in enumerate(self.kv):
            new = np.zeros((rows, self.heads, width, self.head_dim), self.dtype)
            new[: old.shape[0], :, shift:, :] = old
            self.kv[index] = new
        self.mask = mask

    def join(self, row: int) -> None:
        """Move a prefilled row's K/V into the shared tensors, right-aligned."""
        own = self.own.pop(row)
        length = own[0].shape[2]
        self.fit(row + 1, length)
        for buffer, value in zip(self.kv, own):
            buffer[row, :, self.width - length :, :] = value[0]
        self.mask[row] = 0
        self.mask[row, self.width - length :] = 1
        self.joined[row] = True

    def settle(self, rows: int) -> None:
        """Before a step: the width its past will have. Engines such as OpenVINO's CPU plugin prepare their kernels
        for each new shape (at 16 rows, measured: a step at a new width costs 2-6× one at the width before), so
        the width moves in steps of `BUCKET` columns: widened on the left when no column is free, narrowed when
        more than two buckets are; in between each step drops the free column on the left (`decode`)."""
        used = np.flatnonzero(self.mask[:rows].any(axis=0))
        needed = self.width - int(used[0]) if len(used) else 0
        room = self.capacity - 1  # the step's present is one wider
        if needed >= self.width and self.width < room:
            self.fit(rows, min(needed + BUCKET, room))
        elif self.width - needed > 2 * BUCKET or self.width > room:
            self.trim(self.width - min(needed + BUCKET, room))

    def swap_rows(self, a: int, b: int, length_a: int = 0, length_b: int = 0) -> None:
        """Exchange rows `a` and `b`: their own buffers (prefilling) or their rows of the shared tensors and mask
        (joined). The lengths are not needed here: a row's mask says which of its columns count."""
        if self.joined[a] or self.joined[b]:
            self.fit(max(a, b) + 1, 0)
            for buffer in self.kv:
                buffer[[a, b]] = buffer[[b, a]]
            self.mask[[a, b]] = self.mask[[b, a]]
        self.joined[[a, b]] = self.joined[[b, a]]
        own_a, own_b = self.own.pop(a, None), self.own.pop(b, None)
        if own_b is not None:
            self.own[a] = own_b
        if own_a is not None:
            self.own[b] = own_a

    def trim(self, keep_from: int) -> None:
        self.kv = [np.ascontiguousarray(b[:, :, keep_from:, :]) for b in self.kv]
        self.mask = np.ascontiguousarray(self.mask[:, keep_from:])


class SlotDecoder:
    """BatchEngine's runner on the interop graph of any host session with `run` (OpenVINO; see the module
    docstring)."""

    inplace = False

    def __init__(self, bundle: Bundle, session):
        self.bundle = bundle
        self.session = session
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        self.names = kv.kv_names(self.layers)
        self.run_with = getattr(session, "run_with", None)  # OpenVINO: views of its outputs, copied once

    def new_cache(self, slots: int, capacity: int) -> SlotCache:
        return SlotCache(self.layers, slots, self.heads, self.head_dim, capacity)

    def prefill_row(self, ids: list[int], cache: SlotCache, row: int, past: int, logits: np.ndarray) -> None:
        """Run `ids` for one row after `past` tokens of its own (a whole prompt, or one chunk of it) on its own
        buffers; the logits of its last token go to `logits` [1, V]."""
        if past == 0:
            cache.reset(row)
        own = cache.own.get(row)
        feeds = kv.chunk(ids, past)
        if own is None:
            feeds.update(kv.empty_past(self.layers, self.heads, self.head_dim, dtype=cache.dtype))
        else:
            feeds.update({name: own[index] for index, name, _ in self.names})

        def keep(outputs: dict) -> list[np.ndarray]:
            logits[0] = outputs["logits"][0, -1]
            return [np.array(outputs[present]) for _, _, present in self.names]

        cache.own[row] = self._run(feeds, keep)

    def decode(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray,
        cache: SlotCache,
        mask: np.ndarray | None = None,
    ) -> tuple[np.ndarray, None]:
        """One step for rows [0, B), every one running. `lengths` (their tokens so far) is what the mask of a
        joined row already counts, so positions come from the mask (`kv.next_step`). Returns the logits [B, V]."""
        batch = len(tokens)
        for row in np.flatnonzero(~cache.joined[:batch]):  # a prompt's first step: its own buffers join
            cache.join(int(row))
        cache.fit(batch, 0)
        cache.settle(batch)
        feeds = kv.next_step(tokens, cache.mask[:batch])
        feeds.update({name: cache.kv[index][:batch] for index, name, _ in self.names})
        step_mask = feeds["attention_mask"]  # what the cache keeps
        # the free column on the left is dropped to keep the width (and so the graph's shapes) where it was
        start = 0 if step_mask[:, 0].any() else 1

        def keep(outputs: dict) -> tuple[np.ndarray, list[np.ndarray]]:  # one copy of each present
            presents = [
                np.ascontiguousarray(outputs[present][:, :, start:, :]) for _, _, present in self.names
            ]
            return np.array(outputs["logits"][:, -1, :]), presents

        logits, presents = self._run(feeds, keep)
        # rows past the batch are not running (they left, or prefill on their own buffers): dropped
        cache.kv = presents
        cache.mask = np.ascontiguousarray(step_mask[:, start:])
        cache.joined[batch:] = False
        return logits, None

    def _run(self, feeds: dict, keep):
        return self.run_with(feeds, keep) if self.run_with else keep(self.session.run(feeds))
