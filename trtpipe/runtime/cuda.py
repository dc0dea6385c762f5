"""GPT-2 decoding on ONNX Runtime's CUDA provider with the KV cache kept on the device.

`OrtCudaDecoder` has the decoder-runner interface of `Generator` (vocab, layers, heads, head_dim, inplace=False,
new_cache, prefill, decode), like `TrtDecoder`. The standard interop graph reads past_key_values and writes present
(past + the new rows); here both live in two flat device buffers per tensor (OrtValues on "cuda") bound through
IOBinding: past is a [B, H, P, D] view of one copy, present is written into the other, then they swap — no cache
bytes cross PCIe. Only the token ids, mask and positions go up and the [B, V] logits come down each step.
"""

from __future__ import annotations

import numpy as np

from .bundle import Bundle
from .errors import UserError
from .ort import OrtSession

_NP = {"float32": np.float32, "float16": np.float16}


class DeviceCache:
    """Ping-pong K/V buffers (OrtValues on the GPU), sized to `capacity` positions."""

    inplace = False

    def __init__(self, values: list[list], batch: int, heads: int, head_dim: int, capacity: int, dtype):
        self.values = values  # [copy][2 * layer + kind] → OrtValue of B·H·capacity·D elements
        self.batch, self.heads, self.head_dim, self.capacity = batch, heads, head_dim, capacity
        self.dtype = np.dtype(dtype)
        self.current = 0
        self.length = 0

    @property
    def nbytes(self) -> int:
        per = self.batch * self.heads * self.capacity * self.head_dim * self.dtype.itemsize
        return per * sum(len(copy) for copy in self.values)

    def ptr(self, copy: int, index: int) -> int:
        return self.values[copy][index].data_ptr()

    def shape(self, length: int) -> list[int]:
        return [self.batch, self.heads, length, self.head_dim]

    def swap(self) -> None:
        self.current = 1 - self.current


class OrtCudaDecoder:
    """The decoder-runner interface on ONNX Runtime + CUDA, KV on the device (see the module docstring)."""

    inplace = False

    def __init__(self, bundle: Bundle, session: OrtSession, device_id: int = 0):
        if session.backend != "ort-cuda":
            raise UserError("OrtCudaDecoder needs an ort-cuda session")
        self.bundle = bundle
        self.session = session
        self.ort = session.ort
        self.device_id = device_id
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.vocab = bundle.limits["vocab_size"]
        specs = {s["name"]: s for s in (session.specs or bundle.manifest["inputs"])}
        self.kv_dtype = _NP.get(specs.get("past_key_values.0.key", {}).get("dtype", "float32"), np.float32)
        self.kv_names = [
            (2 * layer + k, f"past_key_values.{layer}.{kind}", f"present.{layer}.{kind}")
            for layer in range(self.layers)
            for k, kind in enumerate(("key", "value"))
        ]

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, variant: str | None = None, threads: int | None = None, verify: bool = True
    ) -> OrtCudaDecoder:
        session = OrtSession.from_bundle(
            bundle, backend="ort-cuda", variant=variant or "fp32", threads=threads, verify=verify
        )
        return cls(bundle, session)

    def new_cache(self, batch: int, capacity: int) -> DeviceCache:
        size = batch * self.heads * capacity * self.head_dim
        values = [
            [
                self.ort.OrtValue.ortvalue_from_shape_and_type([size], self.kv_dtype, "cuda", self.device_id)
                for _ in self.kv_names
            ]
            for _ in range(2)
        ]
        return DeviceCache(values, batch, self.heads, self.head_dim, capacity, self.kv_dtype)

    def _run(
        self, feeds: dict[str, np.ndarray], cache: DeviceCache, past_len: int, new_len: int
    ) -> np.ndarray:
        batch = cache.batch
        io = self.session.session.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        src, dst = cache.current, 1 - cache.current
        for index, past, present in self.kv_names:
            io.bind_input(
                past, "cuda", self.device_id, self.kv_dtype, cache.shape(past_len), cache.ptr(src, index)
            )
            io.bind_output(
                present,
                "cuda",
                self.device_id,
                self.kv_dtype,
                cache.shape(past_len + new_len),
                cache.ptr(dst, index),
            )
        logits = np.empty((batch, 1, self.vocab), dtype=self.session.output_dtypes.get("logits", np.float32))
        io.bind_output("logits", "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
        io.synchronize_inputs()
        self.session.session.run_with_iobinding(io)
        io.synchronize_outputs()
        cache.swap()
        return logits.reshape(batch, self.vocab).astype(np.float32, copy=False)

    def prefill(
        self, prompts: list[list[int]], cache: DeviceCache, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompts → (logits [B, V], attention mask [B, P])."""
        batch = len(prompts)
        width = max(len(ids) for ids in prompts)
        if width > cache.capacity:
            raise UserError(
                f"a prompt of {width} tokens does not fit the cache of {cache.capacity} positions"
            )
        input_ids = np.full((batch, width), pad_id, dtype=np.int64)
        mask = np.zeros((batch, width), dtype=np.int64)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = ids
            mask[row, width - len(ids) :] = 1
        positions = np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64)
        logits = self._run(
            {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}, cache, 0, width
        )
        cache.length = width
        return logits, mask

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: DeviceCache, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One token per row; `lengths` is implied by the mask."""
        del lengths
        batch = len(tokens)
        if cache.length + 1 > cache.capacity:
            raise UserError(
                f"the KV cache holds {cache.capacity} positions; this step needs {cache.length + 1}"
            )
        mask = np.concatenate([mask, np.ones((batch, 1), dtype=np.int64)], axis=1)
        feeds = {
            "input_ids": np.asarray(tokens, dtype=np.int64).reshape(batch, 1),
            "attention_mask": mask,
            "position_ids": (mask.sum(-1, keepdims=True) - 1).astype(np.int64),
        }
        logits = self._run(feeds, cache, cache.length, 1)
        cache.length += 1
        return logits, mask
