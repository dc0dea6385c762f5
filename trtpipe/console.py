"""Terminal output: one rich console on stderr for progress and messages (stdout stays clean for --json)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

# Wide enough for tables when output is piped or captured (rich falls back to 80 columns there).
_WIDTH = None if sys.stdout.isatty() else 160
err = Console(stderr=True, highlight=False, soft_wrap=True, width=None if sys.stderr.isatty() else 160)
out = Console(highlight=False, soft_wrap=True, width=_WIDTH)
QUIET = {"on": bool(os.environ.get("TRTPIPE_QUIET"))}


def info(message: str) -> None:
    if not QUIET["on"]:
        err.print(message)


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")


def progress(transient: bool = True) -> Progress:
    """A progress bar with ETA; hidden when quiet or when stderr is not a terminal and TRTPIPE_PROGRESS is unset."""
    disable = QUIET["on"] or (not sys.stderr.isatty() and not os.environ.get("TRTPIPE_PROGRESS"))
    return Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
        disable=disable,
    )


@contextlib.contextmanager
def status(message: str) -> Iterator[None]:
    if QUIET["on"] or not sys.stderr.isatty():
        yield
        return
    with err.status(message):
        yield
