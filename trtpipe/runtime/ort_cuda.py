"""GPT-2 decoding on ONNX Runtime's CUDA provider with the KV cache kept on the device.

`OrtCudaDecoder` has the decoder-runner interface of `Generator` (vocab, layers, heads, head_dim, inplace=False,
new_cache, prefill, decode), like `TrtDecoder`. The standard interop graph reads past_key_values and writes present
(past + the new rows); here both live in two flat device buffers per tensor (OrtValues on "cuda") bound through
IOBinding: past is a [B, H, P, D] view of one copy, present is written into the other, then they swap — no cache
bytes cross PCIe. Only the token ids, mask and positions go up and the [B, V] logits come down each step.
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle
from .errors import UserError
from .kv import DeviceKVCache
from .ort import OrtSession

_NP = {"float32": np.float32, "float16": np.float16}


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
        self.kv_names = kv.kv_names(self.layers)

    @classmethod
    def from_bundle(
        cls, bundle: Bundle, variant: str | None = None, threads: int | None = None, verify: bool = True
    ) -> OrtCudaDecoder:
        session = OrtSession.from_bundle(
            bundle, backend="ort-cuda", variant=variant or "fp32", threads=threads, verify=verify
        )
        return cls(bundle, session)

    def new_cache(self, batch: int, capacity: int) -> DeviceKVCache:
        size = batch * self.heads * capacity * self.head_dim
        values = [
            [
                self.ort.OrtValue.ortvalue_from_shape_and_type([size], self.kv_dtype, "cuda", self.device_id)
                for _ in self.kv_names
            ]
            for _ in range(2)
        ]
        pointers = [[value.data_ptr() for value in copy] for copy in values]
        return DeviceKVCache(
            pointers, batch, self.heads, self.head_dim, capacity, self.kv_dtype, owners=values
        )

    def _run(
        self, feeds: dict[str, np.ndarray], cache: DeviceKVCache, past_len: int, new_len: int
    ) -> np.ndarray:
        batch = cache.batch
        io = self.session.session.io_binding()
        for name, value in feeds.items():
            io.bind_cpu_input(name, np.ascontiguousarray(value))
        for index, past, present in self.kv_names:
            io.bind_input(
                past, "cuda", self.device_id, self.kv_dtype, list(cache.shape(past_len)), cache.past(index)
            )
            io.bind_output(
                present,
                "cuda",
                self.device_id,
                self.kv_dtype,
                list(cache.shape(past_len + new_len)),
                cache.present(index),
            )
        logits = np.empty((batch, 1, self.vocab), dtype=self.session.output_dtypes.get("logits", np.float32))
        io.bind_output("logits", "cpu", 0, logits.dtype, list(logits.shape), logits.ctypes.data)
        io.synchronize_inputs()
        self.session.session.run_with_iobinding(io)
        io.synchronize_outputs()
        cache.swap()
        return logits.reshape(batch, self.vocab).astype(np.float32, copy=False)

    def prefill(
        self, prompts: list[list[int]], cache: DeviceKVCache, pad_id: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompts → (logits [B, V], attention mask [B, P])."""
        feeds = kv.left_padded(prompts, pad_id)
        width = feeds["input_ids"].shape[1]
        if width > cache.capacity:
            raise UserError(
                f"a prompt of {width} tokens does not fit the cache of {cache.capacity} positions"
            )
        logits = self._run(feeds, cache, 0, width)
        cache.length = width
        return logits, feeds["attention_mask"]

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: DeviceKVCache, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """One token per row; `lengths` is implied by the mask."""
        del lengths
        if cache.length + 1 > cache.capacity:
            raise UserError(
                f"the KV cache holds {cache.capacity} positions; this step needs {cache.length + 1}"
            )
        feeds = kv.next_step(tokens, mask)
        logits = self._run(feeds, cache, cache.length, 1)
        cache.length += 1
        return logits, feeds["attention_mask"]
