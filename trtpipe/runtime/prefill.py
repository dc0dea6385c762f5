"""`OvPrefill`: prompts run on OpenVINO, tokens decode on ONNX Runtime's in-place KV cache (`prefill_backend="ov"`).

The two engines are fastest at different shapes. Measured on a 2-core AVX-512 VNNI EPYC, GPT-2 124M int4: a
512-token prompt takes ONNX Runtime's MatMulNBits (int8 activations, block 32) 252 ms and OpenVINO, running the
same bundle's interop ONNX of the same weights, 155-178 ms (its CPU plugin quantizes activations per group of 32 as
well); one decode step takes ONNX Runtime 2.4 ms on the in-place graph and OpenVINO's ping-pong graph 1.3-1.6×
that (docs/benchmarks.md). So here a prompt (or one chunk of it) runs on OpenVINO's interop graph, and its K/V,
the `present` that graph returns, is copied into the row's slice of the in-place buffers, where ONNX Runtime's
GroupQueryAttention decodes from it. Both engines compute the same weights; what they differ by is the order they
add in and their activation rounding (tests: greedy tokens equal to ONNX Runtime alone at fp32 on the tiny bundles,
the gates' agreement at int8/int4).

It costs a second compiled copy of the weights (OpenVINO keeps its own) and one copy of the prompt's K/V per
chunk; `bench/prefill_split.py` measures both.
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle
from .errors import UserError

PREFILL_BACKENDS = ("ov",)


class OvPrefill:
    """Runs a row's prompt tokens on OpenVINO's interop graph of `variant` and writes their K/V in place."""

    def __init__(self, bundle: Bundle, variant: str, threads: int | None = None):
        from .ov import OvSession

        self.session = OvSession.from_bundle(bundle, variant=variant, threads=threads)
        self.variant = variant
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.names = kv.kv_names(self.layers)

    def prefill_row(self, ids: list[int], cache: kv.KVCache, row: int, past: int, logits: np.ndarray) -> None:
        """Run `ids` for row `row` after its `past` cached tokens (a whole prompt, or one chunk); their K/V go to
        positions [past, past + len(ids)) of the row's in-place buffers and the last token's logits to `logits`."""
        n = len(ids)
        feeds = kv.chunk(ids, past)
        for index, name, _ in self.names:
            # the interop graph reads past as its own [1, H, past, D] tensor: a copy of the row's first columns
            feeds[name] = np.ascontiguousarray(cache.view(0, index, 0, 1, row)[:, :, :past, :])

        def keep(outputs: dict) -> None:
            logits[0] = outputs["logits"][0, -1]
            for index, _, present in self.names:
                cache.view(0, index, 0, 1, row)[:, :, past : past + n, :] = outputs[present][:, :, past:, :]

        self.session.run_with(feeds, keep)

    def close(self) -> None:
        self.session.close()


def open_prefill(
    bundle: Bundle, prefill_backend: str | None, backend: str, inplace: bool, variant: str, threads
):
    """The prefill runner `prefill_backend` names, or None to prefill on the decoding backend itself."""
    if prefill_backend in (None, "", backend):
        return None
    if prefill_backend not in PREFILL_BACKENDS:
        raise UserError(
            f"prefill backend {prefill_backend!r} is not one: use {' or '.join(PREFILL_BACKENDS)}, or leave it out "
            "to prefill on the decoding backend"
        )
    if backend != "ort-cpu" or not inplace:
        raise UserError(
            f"--prefill-backend {prefill_backend} feeds ONNX Runtime's in-place KV cache: it needs --backend ort-cpu "
            f"and the bundle's in-place variant (got --backend {backend}"
            f"{'' if inplace else ', ping-pong KV'}); leave --prefill-backend out otherwise"
        )
    return OvPrefill(bundle, variant, threads)
