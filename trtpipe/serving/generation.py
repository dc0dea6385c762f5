"""GPT-2 generation inside Triton: every request goes to one in-flight `BatchEngine` and is answered from its thread.

`execute` only reads and submits, then returns None, so requests of different calls, settings and lengths share
decode steps. A non-streaming request (the default model; HTTP or gRPC infer) gets one response when all its rows
are done; a streaming request (`trtpipe triton --stream`: a decoupled model, gRPC streaming or HTTP
generate_stream) gets one response per token, then the final flag. A request that fails validation, does not fit
a slot, or finds the queue full gets its own error at once; a request whose client went away frees its slot within
one step; `finalize` stops the engine and every request still in flight gets an error, not a hang. While the server
drains (drain.py) new requests are refused, and those still running at the drain's cut-off end with an error.

Imported only inside Triton's Python backend stub (it needs `triton_python_backend_utils`).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ..runtime import Generator, Sampling, Token, UserError
from ..runtime.batching import BACKENDS as BATCHING
from ..runtime.batching import BatchEngine, Request
from . import triton_io as tio
from .drain import CUT_OFF, REFUSED, DrainWatch, ServerStopping

SETTINGS = (  # per-row inputs: name, default, converter
    ("temperature", 0.0, float),
    ("top_k", 0, int),
    ("top_p", 1.0, float),
    ("repetition_penalty", 1.0, float),
)


def read_rows(request, max_new_tokens: int, one_row: bool) -> list[dict]:
    """One item per row of a request: prompt, max_new_tokens, Sampling, stop strings (UserError if invalid)."""
    prompts = tio.texts(request, "text")
    rows = len(prompts)
    if one_row and rows != 1:
        raise UserError(
            f"the streaming model takes one prompt per request (got {rows}); send one request each"
        )

    def column(name: str, default) -> list:
        values = tio.row_values(request, name, rows)
        return [default] * rows if values is None else [v.item() for v in values]

    settings = {name: [convert(v) for v in column(name, default)] for name, default, convert in SETTINGS}
    seeds = column("seed", None)
    max_new = [int(v) for v in column("max_new_tokens", max_new_tokens)]
    stop_tensor = pb_utils.get_input_tensor_by_name(request, "stop")
    stops: list[list[str]] = [[] for _ in range(rows)]
    if stop_tensor is not None:
        values = stop_tensor.as_numpy().reshape(rows, -1)
        stops = [[bytes(v).decode("utf-8", "replace") for v in row if len(v)] for row in values]
    items = []
    for row in range(rows):
        if max_new[row] < 1:
            raise UserError(f"max_new_tokens must be ≥ 1 (got {max_new[row]})", fields="max_new_tokens")
        sampling = Sampling(
            **{name: values[row] for name, values in settings.items()},
            seed=None if seeds[row] is None else int(seeds[row]),
        )
        items.append(
            {"prompt": prompts[row], "max_new": max_new[row], "sampling": sampling, "stop": stops[row]}
        )
    return items


def token_response(token: Token):
    return pb_utils.InferenceResponse(
        output_tensors=[
            tio.tensor("completion", tio.bytes_array([token.text])),
            tio.tensor("ids", np.array([[token.id]], dtype=np.int64)),
            tio.tensor("finish", tio.bytes_array([token.finish or ""])),
        ]
    )


def completion_response(rows: list[Request]):
    width = max(len(r.tokens) for r in rows)
    ids = np.full((len(rows), width), -1, dtype=np.int64)  # rows of one request padded with -1
    for row, r in enumerate(rows):
        ids[row, : len(r.tokens)] = r.tokens
    return pb_utils.InferenceResponse(
        output_tensors=[
            tio.tensor("completion", tio.bytes_array(["".join(r.pieces) for r in rows])),
            tio.tensor("ids", ids),
            tio.tensor("finish", tio.bytes_array([r.finish or "" for r in rows])),
        ]
    )


@dataclass(eq=False)  # a row is itself (Reply compares rows by identity), never equal to another by value
class AloneRow:
    """A row generated outside the engine (GPU runtimes, ov), with what `Reply` reads of an engine request."""

    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    cancelled: bool = False


class Outbox:
    """Every response of a model instance leaves from one thread of its own, in the order it was posted. A send is a
    round trip to the Triton server process (about 0.5 ms on 2 busy cores, measured in the stub), so the engine
    thread that posts a token's response goes on to its next step instead of waiting: with 16 rows decoding that
    was some 8 ms a step. The response is built on this thread too."""

    DEPTH = (
        64  # responses waiting at most: a full outbox holds the engine back (a tiny model steps faster than
    )
    # responses can leave, and an unbounded queue would grow, and a drain's cut-off errors wait behind it all)

    def __init__(self):
        self.queue: queue.Queue = queue.Queue(maxsize=self.DEPTH)
        self.thread = threading.Thread(target=self._loop, name="trtpipe-outbox", daemon=True)
        self.thread.start()

    def post(self, sender, make=None, flags: int = 0) -> None:
        """Send make() (None: no response, only `flags`) through `sender`, after everything posted before; waits
        while DEPTH responses are still to go."""
        self.queue.put((sender, make, flags))

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            sender, make, flags = item
            try:
                response = make() if make is not None else None
                if response is None:
                    sender.send(flags=flags)
                else:
                    sender.send(response, flags=flags)
            except Exception as exc:  # the client is gone, or the response could not be built: log, go on
                pb_utils.Logger.log_error(
                    f"trtpipe: a response could not be sent: {exc.__class__.__name__}: {exc}"
                )

    def close(self, timeout: float = 30.0) -> None:
        """Send what is posted, then stop the thread."""
        self.queue.put(None)
        self.thread.join(timeout)


class Reply:
    """One Triton request's rows in the engine, and how its answer goes back: exactly one final response, every
    response through the model's Outbox."""

    def __init__(self, request, stream: bool, outbox: Outbox):
        self.sender = request.get_response_sender()
        self.outbox = outbox
        self.stream = stream
        probe = getattr(self.sender, "is_cancelled", None) or getattr(request, "is_cancelled", None)
        self.probe = probe
        self.rows: list[Request] = []
        self.left = 0
        self.lock = threading.Lock()
        self.closed = False

    def expect(self, rows: int) -> None:
        """Count the request's rows before the first is submitted: a short row that finishes while the next one
        is still being submitted must not close the reply early (with only its own row)."""
        with self.lock:
            self.left += rows

    def add(self, row: Request) -> None:
        with self.lock:
            if row not in self.rows:  # the row's own end may have added it already (see listener)
                self.rows.append(row)

    def listener(self, row: Request, token: Token | None) -> None:
        """Called from the engine thread for each token of a row, and once more (token None) when a row ends
        without one (cancelled, stopped, failed)."""
        if token is not None and self.stream and not self.closed:
            self.outbox.post(self.sender, lambda: token_response(token))
        if token is not None and token.finish is None:
            return
        if row.error is not None:
            self.fail(row.error)
            return
        if row.finish == "cancelled":
            pb_utils.Logger.log_info(
                f"trtpipe: a request was cancelled by its client after {len(row.tokens)} tokens; its slot is free"
            )
        with self.lock:
            if row not in self.rows:  # it ended before `add`: every row before it is in already
                self.rows.append(row)
            self.left -= 1
            last = self.left == 0 and not self.closed
            self.closed = self.closed or last
        if last:
            final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
            rows = list(self.rows)
            self.outbox.post(self.sender, None if self.stream else lambda: completion_response(rows), final)

    def fail(self, exc: BaseException, now: bool = False) -> None:
        """The request's error as its final response (once); its other rows are cancelled. `now`: sent from this
        thread at once (execute's refusals: no response of the request can be waiting in the outbox before it)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            rows = list(self.rows)
        for row in rows:
            row.cancelled = True
        if not isinstance(exc, UserError):
            pb_utils.Logger.log_error(f"trtpipe: generation failed: {exc.__class__.__name__}: {exc}")
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        if now:
            self.sender.send(tio.error_response(exc), flags=final)
        else:
            self.outbox.post(self.sender, lambda: tio.error_response(exc), final)


class EngineMetrics:
    """The engine's state on Triton's metrics endpoint (when the server has one), refreshed every second from its
    counters: trtpipe_generation_{slots_busy, requests_waiting} gauges, {tokens, prefill_tokens, steps} counters."""

    def __init__(self, engine: BatchEngine, model: str):
        self.engine = engine
        labels = {"model": model}
        kinds = {"slots_busy": "GAUGE", "requests_waiting": "GAUGE"}
        counters = {"tokens": "tokens", "prefill_tokens": "prefill_tokens", "steps": "steps"}
        family = pb_utils.MetricFamily
        self.families = {  # a Metric lives only as long as its family object
            name: family(
                name=f"trtpipe_generation_{name}",
                description=f"in-flight batching: {name.replace('_', ' ')}",
                kind=getattr(family, kinds.get(name, "COUNTER")),
            )
            for name in [*kinds, *counters]
        }
        self.metrics = {name: f.Metric(labels=labels) for name, f in self.families.items()}
        self.counters = counters
        self.seen = dict.fromkeys(counters, 0)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="trtpipe-metrics", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(1.0):
            self.metrics["slots_busy"].set(self.engine.busy)
            self.metrics["requests_waiting"].set(len(self.engine.waiting))
            for name, key in self.counters.items():
                value = self.engine.stats[key]
                self.metrics[name].increment(value - self.seen[name])
                self.seen[name] = value

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


class GenerationModel:
    """The generation side of a Triton model instance (see the module docstring)."""

    def __init__(
        self,
        name: str,
        root: Path,
        params: dict,
        runtime: str,
        variant: str | None,
        threads: int | None,
        stream: bool,
    ):
        self.stream = stream
        self.metrics: EngineMetrics | None = None
        self.max_new_tokens = int(params.get("max_new_tokens") or 64)
        slots = int(params.get("slots") or params.get("batch_size") or 8)
        self.engine: BatchEngine | None = None
        self.generator: Generator | None = None
        if runtime in BATCHING:
            self.engine = BatchEngine(
                root,
                variant=variant,
                threads=threads,
                slots=slots,
                chunk=int(params.get("prefill_chunk") or 64),
                max_queue=int(params.get("max_queue") or 64),
                backend=runtime,
                prefill_backend=params.get("prefill_backend") or None,
                kv_cache=params.get("kv_cache") or "fp32",
                paged=params.get("paged") == "1",  # --runtime ov --paged: runtime/paged.py
            ).start()
            # Triton's metrics endpoint, when the server has one (--allow-metrics=false refuses the families)
            try:
                self.metrics = EngineMetrics(self.engine, name)
            except Exception:
                self.metrics = None
        else:  # GPU runtimes keep the KV cache on the device: one request at a time
            self.generator = Generator(root, backend=runtime, variant=variant, threads=threads)
        self.outbox = Outbox()
        self.cut = threading.Event()
        self.drain = DrainWatch(self.cut_off)

    def execute(self, requests: list) -> None:
        for request in requests:
            reply = Reply(request, self.stream, self.outbox)
            if self.drain.draining:
                reply.fail(ServerStopping(REFUSED), now=True)
                continue
            try:
                items = read_rows(request, self.max_new_tokens, one_row=self.stream)
            except UserError as exc:
                reply.fail(exc, now=True)
                continue
            reply.expect(len(items))
            if self.engine is None:
                self._run_alone(items, reply)
                continue
            for item in items:
                try:
                    row = self.engine.submit(
                        item["prompt"],
                        item["max_new"],
                        item["sampling"],
                        item["stop"],
                        listener=reply.listener,
                        probe=reply.probe,
                    )
                except UserError as exc:
                    reply.fail(exc, now=True)
                    break
                reply.add(row)
        return None

    def _run_alone(self, items: list[dict], reply: Reply) -> None:
        """GPU runtimes and OpenVINO: each row through `Generator.stream`, in this call, with the same replies."""
        for item in items:
            row = AloneRow()
            reply.add(row)
            try:
                tokens = self.generator.stream(
                    [item["prompt"]], item["max_new"], item["sampling"], item["stop"]
                )
                for token in tokens:
                    if self.cut.is_set():
                        raise ServerStopping(CUT_OFF)
                    row.tokens.append(token.id)
                    row.pieces.append(token.text)
                    row.finish = token.finish
                    reply.listener(row, token)
            except Exception as exc:
                reply.fail(exc)
                return

    def cut_off(self) -> None:
        """The drain's cut-off (from the DrainWatch thread): every request still waiting or running ends with
        ServerStopping, so its client is answered before Triton's exit timeout cuts the connection."""
        self.cut.set()
        if self.engine is not None:
            left = self.engine.busy + len(self.engine.waiting)
            if left:
                pb_utils.Logger.log_info(
                    f"trtpipe: the drain time ran out; {left} requests in flight end with an error"
                )
            self.engine.close(error=ServerStopping(CUT_OFF))

    def finalize(self) -> None:
        self.drain.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.engine is not None:
            self.engine.close()
        self.outbox.close()  # after the engine: the errors of requests it ended go out first
