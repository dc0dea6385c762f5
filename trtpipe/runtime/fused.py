"""The fused step on ONNX Runtime's CPU: BatchEngine's running rows and one prompt chunk in one forward pass.

BatchEngine's step is a prompt chunk, then a decode step over the running rows: two passes, so the weights are read
twice. A bundle that has the fused step graph (`<precision>.kv-fused`, written by `trtpipe optimize --precision
kv-fused` from the in-place variant, `optimize/kv_fused.py`) runs the steps that have both as one pass, as vLLM-CPU
does: the R rows' tokens and the chunk's are packed into one sequence, and attention is split per row
(GroupQueryAttention on the rows' in-place buffers, and on the chunk row's slice of the same buffers). The decode
steps of a busy engine run on the same session (`FusedStep.decode`): two sessions taking turns each pay for the
other's spinning threads (measured: 8 int4 streams lost 15 % that way). A lone row's decode and a prompt with no row
decoding keep the in-place graph: a fused pass has two rows at least, whose MatMuls cost more than one row's, and a
request served alone then never switches sessions. `BatchEngine(fused=False)` leaves the fused session out.
"""

from __future__ import annotations

import numpy as np

from . import kv
from .bundle import Bundle
from .errors import UserError
from .kv import KVCache


def fused_name(base: str, kv_cache: str = "fp32") -> str:
    """The fused step variant of weight variant `base` (fp32, int4, ...) with a `kv_cache` (fp32 or int8) cache."""
    kind = "kv8-fused" if kv_cache == "int8" else "kv-fused"
    return kind if base == "fp32" else f"{base}.{kind}"


def open_fused(
    bundle: Bundle,
    base: str,
    want: bool | None,
    backend: str,
    prefill_backend: str | None,
    threads: int | None,
    spin: str | None,
    kv_cache: str = "fp32",
) -> FusedStep | None:
    """The fused step of `base` for BatchEngine, or None where it is not used. `want`: None uses it where the bundle
    has a current one (on ort-cpu, prefilling there); True requires it (a UserError that names the fix); False never."""
    if want is False:
        return None
    if want is not None and want is not True:
        raise UserError(f"fused must be True, False or None (got {want!r})")
    name = fused_name(base, kv_cache)
    fix = f"`trtpipe optimize {bundle.path} --precision {'kv8' if kv_cache == 'int8' else 'kv-fused'}`"
    fix += " (add --overwrite to rebuild it)"
    if backend != "ort-cpu" or prefill_backend is not None:
        if want:
            raise UserError(
                "the fused step runs on ONNX Runtime's CPU provider, prefilling there too: use --backend ort-cpu "
                "without a prefill backend, or fused=False"
            )
        return None
    if name not in bundle.variants:
        if want:
            raise UserError(f"{bundle.path} has no {name} variant; create it with {fix}")
        return None
    reason = bundle.stale(name)
    if reason is not None:
        if want:
            raise UserError(f"the {name} variant of {bundle.path} is stale ({reason}); rebuild it with {fix}")
        return None
    from .session import open_session

    return FusedStep(bundle, open_session(bundle, variant=name, threads=threads, spin=spin))


class FusedStep:
    """One ONNX Runtime session of a fused step graph, run over BatchEngine's in-place `KVCache` (IOBinding: the rows
    and the chunk's row bound in place, bindings made once per layout and kept on the cache). Beside `run` it has
    the runner's `decode`, so that a busy engine runs every decode step on this one session (switching between two
    sessions costs each the other's spinning threads): a decode step of R ≥ 2 rows runs its last row as the chunk.
    GroupQueryAttention cannot take zero rows (ONNX Runtime stops the process with SIGFPE at batch 0): R ≥ 1."""

    def __init__(self, bundle: Bundle, session):
        self.session = session
        self.vocab = bundle.limits["vocab_size"]

    def run(
        self,
        cache: KVCache,
        tokens: np.ndarray,
        lengths: np.ndarray,
        chunk_ids: list[int],
        chunk_past: int,
        chunk_row: int,
        base: int = 0,
    ) -> np.ndarray:
        """R rows' next tokens after `lengths` cached ones (rows [base, base + R)), and the chunk `chunk_ids` after
        `chunk_past` cached tokens in row `chunk_row`, outside those rows. Returns logits [R + 1, V]: the rows', then
        the chunk's last token's (a view, valid until the next run)."""
        rows = len(tokens)
        if (
            rows < 1
            or base + rows > cache.batch
            or not 0 <= chunk_row < cache.batch
            or base <= chunk_row < base + rows
        ):
            raise ValueError(
                f"fused step: rows [{base}, {base + rows}) and chunk row {chunk_row} do not fit {cache.batch} rows"
            )
        if cache.fused_logits is None:
            cache.fused_logits = np.empty((1, cache.batch + 1, self.vocab), dtype=np.float32)
        key = ("fused", rows, chunk_row, base)
        io = cache.bindings.get(key)
        if io is None:
            io = cache.bindings[key] = self._bind(cache, rows, chunk_row, base)
        for name, value in kv.fused_step(tokens, lengths, chunk_ids, chunk_past).items():
            io.bind_cpu_input(name, value)
        self.session.session.run_with_iobinding(io)
        return cache.fused_logits[0, : rows + 1]

    def decode(
        self, tokens: np.ndarray, lengths: np.ndarray, cache: KVCache, mask=None
    ) -> tuple[np.ndarray, None]:
        """The runner's in-place `decode` for rows [0, R), R ≥ 2: the last row is the one-token chunk."""
        rows = len(tokens)
        logits = self.run(cache, tokens[:-1], lengths[:-1], [int(tokens[-1])], int(lengths[-1]), rows - 1)
        return logits, None

    def _bind(self, cache: KVCache, rows: int, chunk_row: int, base: int):
        io = self.session.session.io_binding()
        for index, past, present in cache.names():
            layer_kind = past.removeprefix("past_key_values.")
            for (source, target), view in (
                ((past, present), cache.view(0, index, 0, rows, base)),
                (
                    (f"chunk_past.{layer_kind}", f"chunk_present.{layer_kind}"),
                    cache.view(0, index, 0, 1, chunk_row),
                ),
            ):
                shape = list(view.shape)
                io.bind_input(source, "cpu", 0, cache.dtype, shape, view.ctypes.data)
                io.bind_output(target, "cpu", 0, cache.dtype, shape, view.ctypes.data)
        logits = cache.fused_logits[:, : rows + 1]
        io.bind_output("logits", "cpu", 0, np.float32, list(logits.shape), logits.ctypes.data)
        return io
