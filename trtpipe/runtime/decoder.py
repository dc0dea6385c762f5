"""`DecoderRunner`: one GPT-2 graph on ONNX Runtime (CPU), step by step, on host KV buffers it binds in place.

The runner interface that `Generator` drives (vocab, layers, heads, head_dim, inplace, new_cache, prefill,
decode) is shared with `OrtCudaDecoder` and `TrtDecoder`; the feeds and the buffers come from `kv.py`.
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle
from .kv import KVCache


def cache_dtype(session) -> np.dtype:
    """The K/V buffers' element type an ONNX Runtime session takes: int8 for an int8 cache (`<precision>.kv8-inplace`,
    `optimize/kv_int8.py`), else float32 (every other GPT-2 graph keeps its cache in float32)."""
    inputs = session.session.get_inputs() if hasattr(getattr(session, "session", None), "get_inputs") else []
    for value in inputs:
        if value.name.startswith("past_key_values."):
            return np.dtype(np.int8) if value.type == "tensor(int8)" else np.dtype(np.float32)
    return np.dtype(np.float32)


class DecoderRunner:
    """Runs one decoder graph on caller-owned buffers (ORT IOBinding) or, for sessions without it, plain `run`."""

    def __init__(self, bundle: Bundle, session, inplace: bool, prefiller=None):
        self.bundle = bundle
        self.session = session
        self.inplace = inplace
        self.prefiller = prefiller  # in place only: another engine runs the prompts (`prefill.py`)
        self.prefill_batches = prefiller is not None  # it runs a step's prompts as one pass (`prefill_rows`)
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        self.binding = hasattr(session, "session") and hasattr(session.session, "io_binding")
        self.cache_dtype = cache_dtype(session)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return KVCache(
            self.layers, batch, self.heads, self.head_dim, capacity, self.inplace, self.cache_dtype
        )

    # -- one graph call
    def _run(
        self,
        feeds: dict,
        cache: KVCache,
        past_len: int,
        new_len: int,
        batch: int,
        row: int,
        logits: np.ndarray,
    ) -> None:
        if not self.binding:
            self._run_plain(feeds, cache, past_len, new_len, batch, row, logits)
            return
        # feeds were built here from validated prompts (ids inside the vocabulary, lengths inside the positions)
        if cache.inplace and row == 0 and logits is cache.step_logits:
            # in-place decode: the KV buffers and the logits buffer never move, so their bindings are made once
            # per row count and only the four small inputs are rebound each step
            io = cache.bindings.get(batch)
            if io is None:
                io = cache.bindings[batch] = self._bind(cache, past_len, new_len, batch, row, logits)
            for name, value in feeds.items():
                io.bind_cpu_input(name, value)
            self.session.session.run_with_iobinding(io)
            return
        io = self._bind(cache, past_len, new_len, batch, row, logits)
        for name, value in feeds.items():
            io.bind_cpu_input(name, value)
        self.session.session.run_with_iobinding(io)
        cache.swap()

    def _bind(self, cache: KVCache, past_len: int, new_len: int, batch: int, row: int, logits: np.ndarray):
        """An IOBinding of the K/V buffers (past and present) and the [B, V] logits buffer."""
        io = self.session.session.io_binding()
        dtype = cache.dtype
        for index, past, present in cache.names():
            if cache.inplace:
                src = dst = cache.view(0, index, 0, batch, row)
            else:
                src = cache.view(cache.current, index, past_len, batch, row)
                dst = cache.view(1 - cache.current, index, past_len + new_len, batch, row)
            io.bind_input(past, "cpu", 0, dtype, list(src.shape), src.ctypes.data)
            io.bind_output(present, "cpu", 0, dtype, list(dst.shape), dst.ctypes.data)
        out = logits[:batch].reshape(batch, 1, self.vocab)
        io.bind_output("logits", "cpu", 0, out.dtype, list(out.shape), out.ctypes.data)
        return io

    def _run_plain(
        self, feeds: dict, cache: KVCache, past_len: int, new_len: int, batch: int, row: int, logits
    ) -> None:
        for index, past, _ in cache.names():
            feeds[past] = np.ascontiguousarray(cache.view(cache.current, index, past_len, batch, row))
        outputs = self.session.run(feeds)
        logits[:batch] = outputs["logits"][:, -1, :]
        for index, _, present in cache.names():
            value = outputs[present]
            if cache.inplace:
                cache.view(0, index, 0, batch, row)[...] = value
            else:
                cache.view(1 - cache.current, index, past_len + new_len, batch, row)[...] = value
        cache.swap()

    # -- steps
    def prefill(self, prompts: list[list[int]], cache: KVCache, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Run the prompts; returns (logits [B, V], attention mask [B, P]) — the mask is None in place."""
        batch = len(prompts)
        logits = np.empty((batch, self.vocab), dtype=np.float32)
        if self.inplace:
            # GQA attends [0, seqlens_k]: each row is prefilled alone into its slice of the buffers (no padding).
            for row, ids in enumerate(prompts):
                self.prefill_row(ids, cache, row, 0, logits[row : row + 1])
            return logits, None
        feeds = kv.left_padded(prompts, pad_id)
        width = feeds["input_ids"].shape[1]
        self._run(feeds, cache, 0, width, batch, 0, logits)
        cache.length = width
        return logits, feeds["attention_mask"]

    def prefill_row(self, ids: list[int], cache: KVCache, row: int, past: int, logits: np.ndarray) -> None:
        """In place: run `ids` for one row after `past` cached tokens (a whole prompt, or one chunk of it); the
        logits of its last token go to `logits` [1, V]."""
        if self.prefiller is not None:
            self.prefiller.prefill_row(ids, cache, row, past, logits)
            return
        self._run(kv.inplace_prefill(ids, past), cache, past, len(ids), 1, row, logits)

    def prefill_rows(
        self, pieces: list[tuple[list[int], int, int]], cache: KVCache, logits: np.ndarray
    ) -> None:
        """Every piece (ids, row, past) of one step in the prefill engine's batched passes (`prefill.py`; where
        `prefill_batches`); piece i's last logits go to `logits[i]`."""
        self.prefiller.prefill_rows(pieces, cache, logits)

    def decode(
        self,
        tokens: np.ndarray,
        lengths: np.ndarray,
        cache: KVCache,
        mask: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One step for every row. `lengths` = valid tokens per row before this step."""
        batch = len(tokens)
        if self.inplace:
            if cache.step_logits is None:
                cache.step_logits = np.empty((cache.batch, self.vocab), dtype=np.float32)
            logits = cache.step_logits
            self._run(kv.inplace_decode(tokens, lengths), cache, cache.capacity, 1, batch, 0, logits)
            return logits[:batch].copy(), None
        logits = np.empty((batch, self.vocab), dtype=np.float32)
        feeds = kv.next_step(tokens, mask)
        self._run(feeds, cache, cache.length, 1, batch, 0, logits)
        cache.length += 1
        return logits, feeds["attention_mask"]
