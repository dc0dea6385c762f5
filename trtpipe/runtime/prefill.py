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

Prompts that prefill in the same step run as one OpenVINO pass (`prefill_rows`, grouped by `passes`): a burst of
8 prompts of 32 tokens reads the weights once at M = 256 instead of eight times at M = 32 (bench/prefill_burst.py).
Pieces of one pass share their past; shorter ones are left-padded to the longest (the padding masked out, each
row's positions its own), so every row's last token is the graph's last position, where its logits come from.
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle
from .errors import UserError

PREFILL_BACKENDS = ("ov",)
WASTE = 0.25  # a batched pass pads at most this share of its tokens
PAD_ID = 0  # any id: padding is masked out


def passes(pieces: list[tuple[list[int], int, int]], waste: float = WASTE) -> list[list[int]]:
    """The indices of `pieces` (ids, row, past) grouped into batched passes: one past per pass, each pass padded to
    its longest piece with at most `waste` of its tokens padding; the longest pieces go first."""
    groups: dict[int, list[int]] = {}
    for index, (_, _, past) in enumerate(pieces):
        groups.setdefault(past, []).append(index)
    out = []
    for members in groups.values():
        members.sort(key=lambda i: -len(pieces[i][0]))
        current, longest, real = [], 0, 0
        for index in members:
            n = len(pieces[index][0])
            if current and (len(current) + 1) * longest - (real + n) > waste * (len(current) + 1) * longest:
                out.append(current)
                current, real = [], 0
            if not current:
                longest = n
            current.append(index)
            real += n
        out.append(current)
    return out


class OvPrefill:
    """Runs prompt tokens on OpenVINO's interop graph of `variant` and writes their K/V in place. With `int8_from`
    (the bundle's int8-cache twin the decoding runs, `optimize/kv_int8.py`), the cache is int8: K/V are quantized
    with that twin's per-channel scales as ONNX Runtime's GroupQueryAttention quantizes them (round half to even,
    saturated), and a chunk's past is read back dequantized."""

    def __init__(
        self, bundle: Bundle, variant: str, threads: int | None = None, int8_from: str | None = None
    ):
        from .ov import OvSession

        self.session = OvSession.from_bundle(bundle, variant=variant, threads=threads)
        self.variant = variant
        model = bundle.model
        self.layers, self.heads, self.head_dim = model["num_layers"], model["num_heads"], model["head_dim"]
        self.names = kv.kv_names(self.layers)
        self.scales = None if int8_from is None else kv8_scales(bundle, int8_from, self.layers)

    def prefill_row(self, ids: list[int], cache: kv.KVCache, row: int, past: int, logits: np.ndarray) -> None:
        """Run `ids` for row `row` after its `past` cached tokens (a whole prompt, or one chunk); their K/V go to
        positions [past, past + len(ids)) of the row's in-place buffers and the last token's logits to `logits`."""
        self._pass([(ids, row, past)], cache, logits, [0])

    def prefill_rows(
        self, pieces: list[tuple[list[int], int, int]], cache: kv.KVCache, logits: np.ndarray
    ) -> None:
        """Every piece (ids, row, past) of one step, batched into as few OpenVINO passes as `passes` allows; piece
        i's last logits go to `logits[i]`."""
        for group in passes(pieces):
            self._pass([pieces[i] for i in group], cache, logits, group)

    def _pass(self, pieces, cache: kv.KVCache, logits: np.ndarray, into: list[int]) -> None:
        """One pass over `pieces` that share one past: [past | padding | ids] per row, the padding masked out."""
        past, width, batch = pieces[0][2], max(len(ids) for ids, _, _ in pieces), len(pieces)
        input_ids = np.full((batch, width), PAD_ID, dtype=np.int64)
        mask = np.ones((batch, past + width), dtype=np.int64)
        positions = np.zeros((batch, width), dtype=np.int64)
        for b, (ids, _, _) in enumerate(pieces):
            pad = width - len(ids)
            input_ids[b, pad:] = ids
            mask[b, past : past + pad] = 0
            positions[b, pad:] = np.arange(past, past + len(ids))
        feeds = {"input_ids": input_ids, "attention_mask": mask, "position_ids": positions}
        for index, name, _ in self.names:  # the graph reads past as its own [B, H, past, D] tensor: a copy
            rows = [cache.view(0, index, 0, 1, row)[:, :, :past, :] for _, row, _ in pieces]
            feeds[name] = self._read(np.concatenate(rows) if batch > 1 else rows[0], index)

        def keep(outputs: dict) -> None:
            logits[into] = outputs["logits"][:, -1]
            for index, _, present in self.names:
                value = outputs[present]
                for b, (ids, row, _) in enumerate(pieces):
                    n = len(ids)
                    new = value[b : b + 1, :, past + width - n :, :]
                    cache.view(0, index, 0, 1, row)[:, :, past : past + n, :] = self._stored(new, index)

        self.session.run_with(feeds, keep)

    def _read(self, cached: np.ndarray, index: int) -> np.ndarray:
        if self.scales is None:
            return np.ascontiguousarray(cached)
        return cached.astype(np.float32) * self.scales[index]

    def _stored(self, value: np.ndarray, index: int) -> np.ndarray:
        if self.scales is None:
            return value
        return np.clip(np.rint(value / self.scales[index]), -128, 127).astype(np.int8)

    def close(self) -> None:
        self.session.close()


def kv8_scales(bundle: Bundle, name: str, layers: int) -> list[np.ndarray]:
    """The per-channel scales [1, H, 1, D] of the int8-cache twin `name`, in buffer order (`kv.kv_names`), read from
    its graph's initializers without the onnx package."""
    from .onnx_scan import ScanError, float_initializers

    wanted = [kv.kv8_scale_name(index // 2, "kv"[index % 2]) for index, _, _ in kv.kv_names(layers)]
    try:
        found = float_initializers(bundle.model_path(name), set(wanted))
    except (OSError, ScanError) as exc:
        raise UserError(
            f"cannot read the int8 KV scales of {bundle.path}'s {name} ({exc}); rebuild it with `trtpipe optimize "
            f"{bundle.path} --precision kv8 --overwrite`"
        ) from None
    return [found[w] for w in wanted]


def open_prefill(
    bundle: Bundle,
    prefill_backend: str | None,
    backend: str,
    inplace: bool,
    variant: str,
    threads,
    int8_from: str | None = None,
):
    """The prefill runner `prefill_backend` names, or None to prefill on the decoding backend itself; `int8_from`:
    the int8-cache twin the decoding runs, whose scales it quantizes with."""
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
    return OvPrefill(bundle, variant, threads, int8_from)
