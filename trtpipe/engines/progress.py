"""A TensorRT build's progress: IProgressMonitor callbacks (from builder threads) drive a rich progress bar, and
Ctrl-C asks TensorRT to stop at its next step."""

from __future__ import annotations

import contextlib
import signal
import threading


class BuildProgress:
    """Drives a rich progress bar from TensorRT's IProgressMonitor callbacks (called from builder threads)."""

    def __init__(self, bar):
        self.bar = bar
        self.lock = threading.Lock()
        self.tasks: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self.depth: dict[str, int] = {}
        self.phases = 0
        self.steps = 0
        self.cancelled = False

    def start(self, name: str, parent: str | None, steps: int) -> None:
        with self.lock:
            self.phases += 1
            depth = 0 if parent is None else self.depth.get(parent, 0) + 1
            self.depth[name] = depth
            if depth <= 1:
                self.totals[name] = max(1, int(steps))
                self.tasks[name] = self.bar.add_task(("  " * depth) + name, total=self.totals[name])

    def step(self, name: str, step: int) -> bool:
        with self.lock:
            self.steps += 1
            task = self.tasks.get(name)
            if task is not None:
                self.bar.update(task, completed=int(step) + 1)
            return not self.cancelled

    def finish(self, name: str) -> None:
        with self.lock:
            task = self.tasks.pop(name, None)
            depth = self.depth.pop(name, 0)
            if task is None:
                return
            total = self.totals.pop(name, 1)
            if depth > 0:
                self.bar.remove_task(task)
            else:
                self.bar.update(task, completed=total)


def make_monitor(trt, state: BuildProgress):
    """An IProgressMonitor of the flavour's module that forwards to `state` and never raises into TensorRT."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            with contextlib.suppress(Exception):
                state.start(str(phase_name), parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            try:
                return state.step(str(phase_name), step)
            except Exception:
                return True

        def phase_finish(self, phase_name):
            with contextlib.suppress(Exception):
                state.finish(str(phase_name))

    return Monitor()


@contextlib.contextmanager
def cancel_on_interrupt(state: BuildProgress):
    """Ctrl-C during a build asks TensorRT to stop at the next step (it holds the thread until then)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        state.cancelled = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
