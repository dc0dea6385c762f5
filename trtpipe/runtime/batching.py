"""In-flight (continuous) batching for GPT-2: many requests, each with its own settings, share every decode step.

`BatchEngine` owns one in-place KV cache of `slots` rows (GroupQueryAttention; each row has its own length) and a
bounded queue. Each `step()`: finished or cancelled rows leave and free their slot at once; waiting requests take
free slots and are prefilled in chunks (while rows decode, at most `chunk` prompt tokens a step, so a prompt never
stalls them for long; with none decoding, short prompts all at once: `chunks.py`); then one batched decode step
advances every running row. The running rows are kept packed in slots [0, R) (`packing.py`), so a step computes
only the rows that decode; where the bundle has the fused step (`fused.py`), a step with both runs as one pass. A
request keeps its own sampling settings and seeded generator, max_new_tokens and stop strings, so it gets exactly
what it gets alone (`Generator.generate`). The scheduling is plain numpy and Python; `start()` adds the one thread
a server needs to drive `step()`, and `close()` stops it and fails whatever is left with an error (never a hang).
"""

from __future__ import annotations

import collections
import itertools
import os
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from .bundle import Bundle
from .chunks import next_piece, step_pieces
from .errors import UnpairedRows, UserError
from .fused import open_fused
from .generate import Completion, Generator, History, PromptTruncated, Token
from .packing import pack, step_rows
from .paged import ov_runner
from .request import DONE, PREFILL, RUNNING, EngineStopped, QueueFull, Request
from .sampling import Sampling, sample_next
from .text import StopText

BACKENDS = ("ort-cpu", "ov")


class BatchEngine:
    """In-flight batching over one GPT-2 bundle on ONNX Runtime's CPU (the in-place KV variant) or OpenVINO (the
    interop graph, `SlotDecoder`, or with paged=True its PagedAttention model); see the module docstring.

    engine = BatchEngine("bundles/gpt2-generate", slots=8)
    a = engine.submit("The list", max_new_tokens=32)
    b = engine.submit("A class", max_new_tokens=8, sampling=Sampling(temperature=0.8, seed=1))
    engine.run()  # or engine.start() and wait on a.result()
    """

    def __init__(
        self,
        bundle: Bundle | str | os.PathLike,
        variant: str | None = None,
        threads: int | None = None,
        slots: int = 8,
        capacity: int | None = None,
        chunk: int = 64,
        max_queue: int = 64,
        backend: str = "ort-cpu",
        prefill_backend: str | None = None,
        fused: bool | None = None,
        kv_cache: str = "fp32",
        paged: bool = False,  # backend="ov": OpenVINO's PagedAttention model (`paged.py`)
    ):
        if backend not in BACKENDS:
            raise UserError(
                f"in-flight batching runs on {' or '.join(BACKENDS)} (got --backend {backend}); GPU backends "
                "generate one request at a time (`Generator`)"
            )
        kv = "inplace" if backend == "ort-cpu" else "pingpong"
        # beside OpenVINO's prefill, ORT's threads stop spinning after each step (measured, bench/prefill_split.py)
        spin = "stop" if prefill_backend and backend == "ort-cpu" else None
        self.generator = Generator(
            bundle,
            backend=backend,
            variant=variant,
            threads=threads,
            kv=kv,
            prefill_backend=prefill_backend,
            spin=spin,
            kv_cache="fp32" if paged else kv_cache,  # int8: the kv8 twins (fused too); paged: `paged.py`'s
        )
        self.backend = backend
        self.bundle = self.generator.bundle
        positions = self.generator.max_positions
        for name, value, low in (("slots", slots, 1), ("chunk", chunk, 2), ("max_queue", max_queue, 0)):
            if not isinstance(value, (int, np.integer)) or value < low:
                raise UserError(f"{name} must be an integer ≥ {low} (got {value!r})")
        capacity = positions if capacity is None else capacity
        if not isinstance(capacity, (int, np.integer)) or not 2 <= capacity <= positions:
            raise UserError(
                f"capacity must be between 2 and the bundle's {positions} positions (got {capacity!r})"
            )
        self.slots, self.capacity, self.chunk = int(slots), int(capacity), int(chunk)
        self.max_queue, self.runner = max_queue, self.generator.runner
        base = variant or "fp32"  # the fused step (`fused.py`): where the bundle has it, unless fused=False
        if (caveat := self.bundle.unpaired(base)) is not None:  # an old bundle (pair_rows.py)
            warnings.warn(caveat, UnpairedRows, stacklevel=2)
        self.fused = open_fused(self.bundle, base, fused, backend, prefill_backend, threads, spin, kv_cache)
        if backend == "ov" or paged:  # OpenVINO: the interop graph's shared width, or its paged model
            self.runner = ov_runner(self.bundle, self.runner, backend, variant, threads, paged, kv_cache)
        self.cache = self.runner.new_cache(self.slots, self.capacity)
        self.table: list[Request | None] = [None] * self.slots  # slot → request
        self.waiting: collections.deque[Request] = collections.deque()
        self.ids = itertools.count(1)
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)
        self.thread: threading.Thread | None = None
        self.closed = False
        self.prefill_logits = np.empty((self.slots, self.runner.vocab), dtype=np.float32)  # a step's pieces
        # moves: rows moved to pack the running ones (`packing.py`); fused_steps: rows and a chunk in one pass
        counts = ("steps", "tokens", "decode_rows", "prefill_tokens", "moves", "fused_steps")
        self.stats = {**dict.fromkeys(counts, 0), "decode_s": 0.0, "prefill_s": 0.0}

    # -------------------------------------------------------------------------------------------- requests

    def submit(
        self,
        prompt,
        max_new_tokens: int = 64,
        sampling: Sampling | None = None,
        stop: list[str] | None = None,
        stop_ids: list[int] | None = None,
        truncate: bool = False,
        ignore_eos: bool = False,
        listener: Callable[[Request, Token | None], None] | None = None,
        probe: Callable[[], bool] | None = None,
    ) -> Request:
        """Queue one prompt (text or token ids). A request that cannot run here is refused with a UserError that
        names the fix, before it is queued: bad settings, a prompt that does not fit a slot, a full queue.
        `listener(request, token)` hears every token (and `token=None` when a request ends without one);
        `probe()` is asked once per step whether the client went away (then the request is cancelled)."""
        if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
            raise UserError(f"max_new_tokens must be ≥ 1 (got {max_new_tokens})", fields="max_new_tokens")
        sampling = sampling or Sampling()
        if not isinstance(sampling, Sampling):
            raise UserError("sampling must be a trtpipe.runtime.Sampling")
        gen = self.generator
        prepared = gen.prepare([prompt], int(max_new_tokens), truncate, positions=self.capacity)
        for message in prepared.messages:
            warnings.warn(message, PromptTruncated, stacklevel=2)
        ids = prepared.ids[0]
        stops = set(stop_ids or [])
        if gen.eos_id is not None and not ignore_eos:
            stops.add(int(gen.eos_id))
        penalised = sampling.repetition_penalty != 1.0
        history = History([ids], len(ids) + int(max_new_tokens)) if penalised else None
        request = Request(
            id=next(self.ids),
            prompt=prepared.texts[0],
            ids=ids,
            prompt_tokens_dropped=prepared.dropped[0],
            max_new_tokens=int(max_new_tokens),
            sampling=sampling,
            text=StopText(gen.encoder, [s for s in (stop or []) if s], stops),
            rng=np.random.default_rng(sampling.seed),
            history=history,
            listener=listener,
            probe=probe,
        )
        with self.lock:
            if self.closed:
                raise EngineStopped("the generation engine is stopped; no new requests are taken")
            free = sum(r is None for r in self.table)
            if len(self.waiting) - free >= self.max_queue:
                raise QueueFull(
                    f"{len(self.waiting)} requests are already waiting (the queue holds {self.max_queue}); "
                    "retry later, or serve with more slots"
                )
            self.waiting.append(request)
            self.wake.notify()
        return request

    def cancel(self, request: Request) -> None:
        """Stop a request (a client that went away): its slot is freed at the start of the next step."""
        request.cancelled = True
        with self.lock:
            self.wake.notify()

    @property
    def busy(self) -> int:
        return sum(r is not None for r in self.table)

    def idle(self) -> bool:
        with self.lock:
            return not self.waiting and self.busy == 0

    # ----------------------------------------------------------------------------------------------- steps
    def step(self) -> bool:
        """One scheduler iteration: retire, admit, prefill (≤ chunk tokens), decode; False with nothing to do."""
        self._retire()
        self._admit()
        if self.busy == 0:
            return False
        if not self._fused():
            self._prefill()
            self._decode()
        self.stats["steps"] += 1
        return True

    def run(self) -> None:
        """Drive `step()` until every queued request has finished (the synchronous way to use the engine)."""
        while self.step():
            pass

    def generate(self, prompts: list, max_new_tokens: int = 64, **settings) -> list[Completion]:
        """Submit every prompt with the same settings, run them together, return their completions in order."""
        requests = [self.submit(p, max_new_tokens, **settings) for p in prompts]
        if self.thread is None:
            self.run()
        return [r.result() for r in requests]

    def _retire(self) -> None:
        for request in [r for r in self.table if r is not None] + list(self.waiting):
            if request.probe is not None and not request.cancelled and request.state != DONE:
                try:
                    request.cancelled = bool(request.probe())
                except Exception:  # a probe that fails: the client is gone
                    request.cancelled = True
        for slot, request in enumerate(self.table):
            if request is not None and (request.cancelled or request.state == DONE):
                self.table[slot] = None  # free first: whoever hears the end may count the slots
                if request.cancelled and request.state != DONE:
                    self._end(request, "cancelled")
        with self.lock:
            for request in [r for r in self.waiting if r.cancelled]:
                self.waiting.remove(request)
                self._end(request, "cancelled")

    def _admit(self) -> None:
        """Waiting requests take free slots, the highest first: a prompt prefills above the running rows, where
        packing them moves nothing but itself (once, when its prefill ends)."""
        with self.lock:
            for slot in reversed(range(self.slots)):
                if not self.waiting:
                    return
                if self.table[slot] is None:
                    request = self.waiting.popleft()
                    request.slot, request.state = slot, PREFILL
                    self.table[slot] = request

    def _fused(self) -> bool:
        """With the fused step: running rows (packed) and one chunk of the oldest prompt as one pass (`fused.py`). The
        step's prompt tokens are that chunk alone: prefilling the next prompts in passes of their own, as a step
        without the fused graph does, read the weights again for each (measured side by side, bench/fused_budget.py:
        without them fp32 serves the mix 1.03-1.05x faster, int4 as fast, both at a quarter less TPOT p99)."""
        running = [r for r in self.table if r is not None and r.state == RUNNING]
        waiting = sorted((r for r in self.table if r and r.state == PREFILL), key=lambda r: r.id)
        if self.fused is None or not running or not waiting:
            return False
        started = time.perf_counter()
        self.stats["moves"] += pack(self.table, self.cache, running)  # every prompt's row is now ≥ R
        (rows, tokens, lengths), request = step_rows(self.table, len(running)), waiting[0]
        piece = next_piece(request.ids, request.prefilled, self.chunk)  # never a lone token (chunks.py)
        logits = self.fused.run(self.cache, tokens, lengths, piece, request.prefilled, request.slot)
        request.prefilled += len(piece)
        for key, value in (("prefill_tokens", len(piece)), ("decode_rows", len(rows)), ("fused_steps", 1)):
            self.stats[key] += value
        self.stats["decode_s"] += time.perf_counter() - started
        for row, running_request in enumerate(rows):
            self._emit(running_request, logits[row])
        if request.prefilled == len(request.ids):
            request.state = RUNNING
            self._emit(request, logits[-1])
        # the next prompts wait for the next step: a pass of their own would read the weights again
        return True

    def _prefill(self, budget: int | None = None, runner=None) -> None:
        """The step's prompt pieces (`chunks.step_pieces`: ≤ `budget`, by default `chunk`; with no row decoding, every
        prompt one piece finishes too), oldest request first; a prompt's last piece gives its first token."""
        runner = runner or self.runner
        prefilling = sorted((r for r in self.table if r and r.state == PREFILL), key=lambda r: r.id)
        decoding = any(r is not None and r.state == RUNNING for r in self.table)
        pieces = step_pieces(prefilling, self.chunk, decoding, budget)
        if not pieces:
            return
        started, logits = time.perf_counter(), self.prefill_logits
        batched = len(pieces) > 1 and getattr(runner, "prefill_batches", False)
        if batched:  # else one at a time: each prompt's first token leaves as soon as its own pass ends
            runner.prefill_rows([(p, r.slot, r.prefilled) for r, p in pieces], self.cache, logits)
        for i, (request, piece) in enumerate(pieces):
            if not batched:
                runner.prefill_row(piece, self.cache, request.slot, request.prefilled, logits[i : i + 1])
            request.prefilled += len(piece)
            self.stats["prefill_tokens"] += len(piece)
            if request.prefilled == len(request.ids):
                request.state = RUNNING
                self._emit(request, logits[i])
        self.stats["prefill_s"] += time.perf_counter() - started

    def _decode(self) -> None:
        """One batched step over the running rows, packed into slots [0, R) first (`packing.py`)."""
        running = [r for r in self.table if r is not None and r.state == RUNNING]
        if not running:
            return
        started = time.perf_counter()
        self.stats["moves"] += pack(self.table, self.cache, running)
        _, tokens, lengths = step_rows(self.table, len(running))
        runner = self.fused if self.fused is not None and len(running) > 1 else self.runner  # one row: M = 1
        logits, _ = runner.decode(tokens, lengths, self.cache, None)
        self.stats["decode_rows"] += len(running)
        self.stats["decode_s"] += time.perf_counter() - started
        for request in running:
            self._emit(request, logits[request.slot])

    def _emit(self, request: Request, logits: np.ndarray) -> None:
        """Sample the request's next token from its own logits row, exactly as `Generator.stream` would alone."""
        history = request.history.rows() if request.history is not None else None
        token = int(sample_next(logits[None], request.sampling, request.rng, history)[0])
        index = len(request.tokens)
        delta, finish = request.text.push(token, index == request.max_new_tokens - 1)
        request.tokens.append(token)
        request.pieces.append(delta)
        request.token_times.append(time.perf_counter())
        self.stats["tokens"] += 1
        if request.history is not None:
            request.history.add(0, token)
        request.pending = token
        if finish is not None:
            request.finish, request.state = finish, DONE
        self._tell(request, Token(row=request.id, id=token, text=delta, index=index, finish=finish))
        if finish is not None:
            request.done.set()

    def _end(self, request: Request, finish: str, error: BaseException | None = None) -> None:
        request.finish, request.state, request.error = finish, DONE, error
        self._tell(request, None)
        request.done.set()

    def _tell(self, request: Request, token: Token | None) -> None:
        if request.listener is None:
            request.events.put(token)
            return
        try:
            request.listener(request, token)
        except Exception:  # a listener that fails (a client gone) cancels its own request only
            request.cancelled = True

    # ---------------------------------------------------------------------------------------------- thread

    def start(self) -> BatchEngine:
        """Drive `step()` from one background thread until `close()` (for servers)."""
        with self.lock:
            if self.thread is None and not self.closed:
                self.thread = threading.Thread(target=self._loop, name="trtpipe-batch-engine", daemon=True)
                self.thread.start()
        return self

    def _loop(self) -> None:
        while True:
            with self.lock:
                while not self.closed and not self.waiting and self.busy == 0:
                    self.wake.wait()
                if self.closed:
                    return
            try:
                self.step()
            except Exception as exc:  # a bug: every request in flight learns of it, the engine goes on
                for slot, request in enumerate(self.table):
                    if request is not None:
                        self._end(request, "error", exc)
                        self.table[slot] = None

    def close(self, timeout: float | None = 30.0, error: EngineStopped | None = None) -> None:
        """Stop the engine thread; requests still waiting or running end with `error` (an EngineStopped)."""
        with self.lock:
            self.closed = True
            self.wake.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
        stopped = error or EngineStopped("the generation engine was stopped before this request finished")
        with self.lock:
            left = list(self.waiting) + [r for r in self.table if r is not None and r.state != DONE]
            self.waiting.clear()
            self.table = [None] * self.slots
        for request in left:
            self._end(request, "error", stopped)

    def stream(self, request: Request, timeout: float | None = None) -> Iterator[Token]:
        """The tokens of a request submitted without a listener, as they come. Without `start()` the caller's
        thread drives the engine (every other request advances too); with it, this waits up to `timeout` per token."""
        while True:
            if self.thread is None:
                while request.events.empty() and self.step():
                    pass
            try:
                token = request.events.get(timeout=timeout) if self.thread else request.events.get_nowait()
            except queue.Empty:
                raise TimeoutError(f"request {request.id}: no token within {timeout}s") from None
            if token is None:
                if request.error is not None:
                    raise request.error
                return
            yield token
            if token.finish:
                return


__all__ = ["BatchEngine", "EngineStopped", "QueueFull", "Request"]
