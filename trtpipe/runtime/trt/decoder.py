"""`TrtDecoder`: GPT-2 on a two-profile TensorRT engine (0 = prefill, 1 = decode) with the KV cache on the device.

It has the decoder-runner interface that `Generator` drives; the feeds and the ping-pong cache come from `kv.py`.
"""

from __future__ import annotations

import collections
import contextlib
import os
from collections.abc import Callable

import numpy as np

from .. import kv
from ..bundle import Bundle
from ..errors import UserError
from ..kv import DeviceKVCache, kv_buffer_bytes
from .compat import rebuild_command
from .profiles import DECODE, PREFILL
from .session import DeviceTensor, TrtSession


class TrtDecoder:
    """The decoder-runner interface of `Generator` on a two-profile GPT-2 engine, with the KV cache on the device.

    prefill: left-padded prompts through profile 0 (empty past); decode: one token per row through profile 1, past
    bound from one device copy and present written into the other. With cuda_graph (TensorRT 10 plans), each decode
    shape (batch, past length, ping-pong side) is captured once into a CUDA graph and replayed afterwards; TensorRT-RTX
    plans capture whole graphs themselves (IRuntimeConfig.cuda_graph_strategy)."""

    inplace = False

    def __init__(self, session: TrtSession, cuda_graph: bool = False):
        self.session = session
        bundle = session.bundle
        self.bundle = bundle
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        if len(session.profiles) != 2:
            raise UserError(
                f"{bundle.path}/{session.file} has {len(session.profiles)} profile(s); a GPT-2 engine needs two "
                f"(prefill, decode): `{rebuild_command(bundle.path, session.entry)}`"
            )
        self.kv_names = kv.kv_names(self.layers)
        present = session.tensors[self.kv_names[0][2]]
        self.kv_dtype = present.dtype
        decode = session.profiles[DECODE]["shapes"]
        prefill = session.profiles[PREFILL]["shapes"]
        self.max_batch = min(prefill["input_ids"]["max"][0], decode["input_ids"]["max"][0])
        self.max_prompt = prefill["input_ids"]["max"][1]
        self.max_total = decode["attention_mask"]["max"][1]
        self.cuda_graph = cuda_graph and session.flavour == "trt10"
        self.graphs: collections.OrderedDict = collections.OrderedDict()
        self.pool: list[list[int]] = []
        self.pool_batch = 0

    @classmethod
    def from_bundle(cls, bundle: Bundle, variant: str | None = None, cuda_graph: bool = False) -> TrtDecoder:
        cuda_graph = cuda_graph or bool(os.environ.get("TRTPIPE_CUDA_GRAPH"))
        return cls(
            TrtSession.from_bundle(bundle, variant=variant, cuda_graph=cuda_graph), cuda_graph=cuda_graph
        )

    # -- cache
    def new_cache(self, batch: int, capacity: int) -> DeviceKVCache:
        if batch > self.max_batch:
            raise UserError(
                f"a batch of {batch} prompts exceeds the engine's maximum batch {self.max_batch}; send fewer prompts "
                f"or rebuild: `trtpipe build {self.bundle.path} --max-shapes input_ids:{batch}x{self.max_prompt},"
                f"attention_mask:{batch}x{self.max_total}`"
            )
        if capacity > self.max_total:
            raise UserError(
                f"prompt + new tokens = {capacity} exceeds the engine's {self.max_total} positions; "
                "lower max_new_tokens or rebuild the engine with a larger attention_mask maximum",
                fields="max_new_tokens",
            )
        if batch > self.pool_batch:
            self._free_pool()
            size = kv_buffer_bytes(batch, self.heads, self.max_total, self.head_dim, self.kv_dtype.itemsize)
            self.pool = [[self.session.cuda.malloc(size) for _ in self.kv_names] for _ in range(2)]
            self.pool_batch = batch
        return DeviceKVCache(self.pool, batch, self.heads, self.head_dim, capacity, self.kv_dtype)

    def _free_pool(self) -> None:
        for executable in self.graphs.values():
            with contextlib.suppress(Exception):
                self.session.cuda.destroy_graph(executable)
        self.graphs.clear()
        for copy in self.pool:
            for ptr in copy:
                with contextlib.suppress(Exception):
                    self.session.cuda.free(ptr)
        self.pool, self.pool_batch = [], 0

    def _bind(self, cache: DeviceKVCache, past_len: int, new_len: int) -> dict[str, DeviceTensor]:
        bound = {}
        for index, past, present in self.kv_names:
            bound[past] = DeviceTensor(cache.past(index), cache.shape(past_len))
            bound[present] = DeviceTensor(cache.present(index), cache.shape(past_len + new_len))
        return bound

    # -- steps
    def prefill(
        self, prompts: list[list[int]], cache: DeviceKVCache, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompts → (logits [B, V] float32, attention mask [B, P])."""
        batch = len(prompts)
        feeds = kv.left_padded(prompts, pad_id)
        width = feeds["input_ids"].shape[1]
        if width > self.max_prompt:
            raise UserError(
                f"a prompt of {width} tokens exceeds the engine's prefill maximum {self.max_prompt}; shorten it or "
                f"rebuild: `trtpipe build {self.bundle.path} --max-shapes input_ids:{self.max_batch}x{width},"
                f"attention_mask:{self.max_batch}x{self.max_total}`"
            )
        with self.session.lock:
            out = self.session.execute(feeds, self._bind(cache, 0, width), fetch=("logits",), profile=PREFILL)
        cache.swap()
        cache.length = width
        return out["logits"].reshape(batch, self.vocab).astype(np.float32, copy=False), feeds[
            "attention_mask"
        ]

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: DeviceKVCache, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One token per row (profile 1). `lengths` (valid tokens per row) is implied by the mask here."""
        del lengths
        batch = len(tokens)
        past_len = cache.length
        if past_len + 1 > cache.capacity:
            raise UserError(f"the KV cache holds {cache.capacity} positions; this step needs {past_len + 1}")
        feeds = kv.next_step(tokens, mask)
        bound = self._bind(cache, past_len, 1)
        with self.session.lock:
            launch = self._graph_launch((batch, past_len, cache.current)) if self.cuda_graph else None
            out = self.session.execute(feeds, bound, fetch=("logits",), profile=DECODE, launch=launch)
        cache.swap()
        cache.length = past_len + 1
        return out["logits"].reshape(batch, self.vocab).astype(np.float32, copy=False), feeds[
            "attention_mask"
        ]

    def _graph_launch(self, key: tuple) -> Callable[[], bool]:
        """Replay the captured decode step for `key`, or run it plainly once and capture it for next time."""
        session, cuda = self.session, self.session.cuda

        def launch() -> bool:
            executable = self.graphs.get(key)
            if executable is not None:
                self.graphs.move_to_end(key)
                cuda.launch(executable, session.stream)
                return True
            handle = cuda.stream_handle(session.stream)
            if not session.context.execute_async_v3(
                handle
            ):  # a plain run first flushes deferred shape updates
                return False
            cuda.sync(session.stream)
            cuda.begin_capture(session.stream)
            captured = session.context.execute_async_v3(handle)
            executable = cuda.end_capture(session.stream)
            if captured:
                self.graphs[key] = executable
                while len(self.graphs) > 4096:
                    _, old = self.graphs.popitem(last=False)
                    cuda.destroy_graph(old)
            return True

        return launch

    def close(self) -> None:
        self._free_pool()
        self.session.close()
