"""Stopping like a service: the drain notice between the launcher (server.py) and the models inside Triton.

On SIGTERM (or SIGINT) Triton 2.51 closes its HTTP listener, waits for open HTTP connections and in-flight
requests, unloads the models and exits, all within `--exit-timeout-secs`, and exits 1 if that runs out, cutting
connections. But it counts no generation request whose `execute` returned (the engine answers from its own thread),
and it serves new gRPC requests until the models unload. So the launcher writes a notice before it forwards the
signal: a file named by TRTPIPE_DRAIN_NOTICE in the server's environment (the stubs inherit it) that holds the Unix
time by which the models end what still runs (`cutoff_s` into the drain). A model refuses new requests once the
notice exists, and at that time ends generation still in flight with a clear error (`ServerStopping`: UNAVAILABLE
over gRPC; the wheel's HTTP endpoint answers every model error 400), so that every client is answered before
Triton's own timeout cuts its connection.

`StopSignals` is the launcher's side: SIGTERM / SIGINT drain the server, a second signal kills it at once.
Imported by the launcher and inside the Python backend stub; needs nothing from Triton.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..runtime.request import EngineStopped

ENV = "TRTPIPE_DRAIN_NOTICE"
REFUSED = "the server is shutting down and takes no new requests; send this one to another server"
CUT_OFF = "the server is shutting down and its drain time ran out before this request finished; retry it"


class ServerStopping(EngineStopped):
    """The server is stopping: a new request is refused, or one in flight was ended at the drain's cut-off."""


def cutoff_s(drain_s: float) -> float:
    """Seconds into a drain of `drain_s` when the models end what still runs: what is left (half the drain, 3 s at
    most) lets the errors reach the clients and the stubs unload (about a second) before Triton's timeout."""
    return max(0.0, drain_s - min(3.0, drain_s / 2))


def write_notice(path: str | os.PathLike, drain_s: float) -> float:
    """Write the notice (atomically: a reader sees all of it or nothing); returns the cut-off time it holds."""
    cutoff = time.time() + cutoff_s(drain_s)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(f"{cutoff:.3f}\n")
    os.replace(partial, path)
    return cutoff


def read_notice(path: str | os.PathLike | None) -> float | None:
    """The cut-off time of a notice, or None while there is none."""
    if not path:
        return None
    with contextlib.suppress(OSError, ValueError):
        return float(Path(path).read_text())
    return None


class DrainWatch:
    """One model instance's view of the notice: `draining` as soon as it exists, and `on_cutoff()` called once
    (from a thread polling every `poll_s`) at the time it holds. Without TRTPIPE_DRAIN_NOTICE (a server started by
    hand, the Triton container) it never drains: Triton's own timeout is all there is."""

    def __init__(
        self, on_cutoff: Callable[[], None] | None = None, path: str | None = None, poll_s: float = 0.2
    ):
        self.path = path if path is not None else os.environ.get(ENV)
        self.on_cutoff = on_cutoff
        self.poll_s = poll_s
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        if self.path and on_cutoff is not None:
            self.thread = threading.Thread(target=self._loop, name="trtpipe-drain", daemon=True)
            self.thread.start()

    @property
    def draining(self) -> bool:
        return bool(self.path) and os.path.exists(self.path)

    def _loop(self) -> None:
        cutoff = None
        while cutoff is None:
            if self.stop.wait(self.poll_s):
                return
            cutoff = read_notice(self.path)
        if not self.stop.wait(max(0.0, cutoff - time.time())):
            self.on_cutoff()

    def close(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(5)


def wait_group_gone(pgid: int, timeout_s: float) -> None:
    """Wait until no live process (zombies aside) is left in process group `pgid` (Linux /proc; else at once)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = False
        for stat in glob.glob("/proc/[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = Path(stat).read_text().rsplit(")", 1)[1].split()  # after "pid (comm)"
                if int(fields[2]) == pgid and fields[0] != "Z":
                    alive = True
                    break
        if not alive:
            return
        time.sleep(0.05)


def remove_leftovers(notice_path: Path | None, shm_prefix: str) -> None:
    """After a server ended: its drain notice, and the shared-memory regions (/dev/shm/<prefix>*) of its Python
    backend stubs, which a stub killed or orphaned cannot remove."""
    paths = glob.glob(f"/dev/shm/{glob.escape(shm_prefix)}*") if shm_prefix else []
    for path in [notice_path, *paths]:
        if path is not None:
            with contextlib.suppress(OSError):
                os.unlink(path)


class StopSignals:
    """SIGTERM and SIGINT inside the `with` block stop a server like a service: the first one drains it
    (`TritonServer.drain`), a second one kills it at once (`kill`). Signals that come before the server is
    launched are acted on when `attach` hands it over. `notify(signum, first)` is told of each (for a message).
    Main thread only (signal handlers)."""

    def __init__(self, notify: Callable[[int, bool], None] | None = None):
        self.notify = notify
        self.received: list[int] = []
        self.first_at: float | None = None  # time.monotonic() of the first signal
        self.server = None  # the TritonServer (server.py), once launched
        self.previous: dict = {}

    def __enter__(self) -> StopSignals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    @property
    def killed(self) -> bool:
        return len(self.received) > 1

    def attach(self, server) -> None:
        self.server = server
        self._act()

    def _handle(self, signum: int, frame: object) -> None:
        self.received.append(signum)
        self.first_at = self.first_at or time.monotonic()
        self._act()
        if self.notify is not None:
            self.notify(signum, len(self.received) == 1)

    def _act(self) -> None:
        if self.server is None or not self.received:
            return
        if self.killed:
            self.server.kill()
        else:
            self.server.drain(self.received[0])


__all__ = [
    "CUT_OFF",
    "ENV",
    "REFUSED",
    "DrainWatch",
    "ServerStopping",
    "StopSignals",
    "cutoff_s",
    "read_notice",
    "remove_leftovers",
    "wait_group_gone",
    "write_notice",
]
