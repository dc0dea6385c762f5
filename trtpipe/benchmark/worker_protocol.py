"""The loop every peer worker runs (ov_genai_worker.py, llamacpp_worker.py, vllm_worker.py): one JSON command per
line on stdin, one JSON answer per line ({"ok": true, ...} or {"ok": false, "error": "..."}), until {"op": "quit"}.

Standard library only, like the workers: they run by path inside a peer's own venv, where trtpipe is not installed.
Their folder is then sys.path[0], so they import this file as `worker_protocol`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable


def error_text(exc: BaseException, skip: tuple[str, ...] = ()) -> str:
    """`Type: last line` of an exception, its lines starting with `skip` left out (a library's own framing)."""
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    said = [s for s in lines if not s.startswith(skip)] if skip else lines
    return f"{type(exc).__name__}: {(said or lines or [type(exc).__name__])[-1][:300]}"


def serve(
    ops: dict[str, Callable[[dict], dict]],
    lines: Iterable[str] | None = None,
    skip: tuple[str, ...] = (),
    fd_level: bool = False,
) -> int:
    """Answer each command with ops[cmd["op"]](cmd). Anything a library prints goes to stderr, so stdout carries
    the answers only; `fd_level` moves file descriptor 1 itself, for libraries whose child processes inherit it (a
    sys.stdout swap would not reach them). A command that fails is answered, not raised: the benchmark prints
    its row as not measured (why)."""
    if fd_level:
        out = os.fdopen(os.dup(1), "w")
        os.dup2(2, 1)
    else:
        out = sys.stdout
    sys.stdout = sys.stderr
    for line in sys.stdin if lines is None else lines:
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("op") == "quit":
            break
        try:
            answer = {"ok": True, **ops[cmd["op"]](cmd)}
        except Exception as exc:
            answer = {"ok": False, "error": error_text(exc, skip)}
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0
