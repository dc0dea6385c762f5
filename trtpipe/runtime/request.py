"""A generation request in flight in a `BatchEngine`: its settings and seeded generator, its state (waiting,
prefill, running, done), the tokens and text it produced with their times, and how it ended."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import UserError
from .generate import Completion, History, Token
from .sampling import Sampling
from .text import StopText

WAITING, PREFILL, RUNNING, DONE = "waiting", "prefill", "running", "done"


class QueueFull(UserError):
    """More requests are waiting than the engine's queue bound: this one is refused (retry later)."""


class EngineStopped(UserError):
    """The engine was closed while this request waited or ran."""


@dataclass(eq=False)
class Request:
    """One generation request in a `BatchEngine`: its settings, its state and what it produced so far."""

    id: int
    prompt: str | None
    ids: list[int]
    max_new_tokens: int
    sampling: Sampling
    text: StopText
    rng: np.random.Generator
    history: History | None  # the prompt and new tokens, for the repetition penalty
    prompt_tokens_dropped: int = 0  # cut by truncate=True; `prompt` is then the tail that runs
    listener: Callable[[Request, Token | None], None] | None = None
    probe: Callable[[], bool] | None = None  # asked every step: has the client gone away?
    state: str = WAITING
    slot: int = -1
    prefilled: int = 0  # prompt tokens already in the cache
    pending: int | None = None  # the last sampled token, fed to the next decode step
    tokens: list[int] = field(default_factory=list)
    pieces: list[str] = field(default_factory=list)
    finish: str | None = None
    error: BaseException | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)
    token_times: list[float] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    events: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # tokens, for `BatchEngine.stream`

    @property
    def ttft_s(self) -> float | None:
        return self.token_times[0] - self.submitted if self.token_times else None

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with fewer than two tokens)."""
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) / (len(self.token_times) - 1)

    def completion(self) -> Completion:
        stats = {"ttft_s": self.ttft_s, "tpot_s": self.tpot_s, "slot": self.slot}
        return Completion(
            self.prompt,
            list(self.tokens),
            "".join(self.pieces),
            self.finish or "",
            len(self.ids),
            stats,
            prompt_tokens_dropped=self.prompt_tokens_dropped,
        )

    def result(self, timeout: float | None = None) -> Completion:
        """Wait for the request to end; its completion, or the error that ended it."""
        if not self.done.wait(timeout):
            raise TimeoutError(f"request {self.id} did not finish within {timeout}s")
        if self.error is not None:
            raise self.error
        return self.completion()
