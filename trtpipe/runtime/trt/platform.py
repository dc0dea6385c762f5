"""What this machine has for TensorRT: the NVIDIA GPUs (nvidia-smi), which TensorRT modules import, and one
logger per module that keeps TensorRT's messages for error reports."""

from __future__ import annotations

import collections
import contextlib
import functools
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UserError

FLAVOURS = {"trt10": "tensorrt", "rtx": "tensorrt_rtx"}
FLAVOUR_NAMES = {"trt10": "TensorRT 10", "rtx": "TensorRT-RTX"}
FLAVOUR_INSTALL = {"trt10": "pip install trtpipe[gpu]", "rtx": "pip install trtpipe[rtx]"}
# TensorRT-RTX targets RTX-class GPUs: Turing (7.5, opt-in), Ampere (8.0/8.6), Ada (8.9), Blackwell RTX (12.x).
# A default (portable) RTX build runs on 8.0, 8.6, 8.9, 12.0 and later; Hopper (9.0) and B200 (10.0) are not RTX.
RTX_DEFAULT_CCS = ("8.0", "8.6", "8.9", "12.0")
RTX_KNOWN_CCS = ("7.5", "8.0", "8.6", "8.9", "12.0", "12.1")


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    compute_capability: str  # "8.9"
    memory_bytes: int
    driver: str

    @property
    def sm(self) -> str:
        return "sm" + self.compute_capability.replace(".", "")


def run_nvidia_smi(args: list[str]) -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def nvidia_gpus() -> tuple[Gpu, ...]:
    """The NVIDIA GPUs nvidia-smi sees (empty without a GPU or a driver). Cached for the process."""
    text = run_nvidia_smi(
        [
            "--query-gpu=index,name,compute_cap,memory.total,driver_version",
            "--format=csv,noheader,nounits",
        ]
    )
    if text is None:  # old drivers lack compute_cap
        text = run_nvidia_smi(
            ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"]
        )
        if text is None:
            return ()
        rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
        rows = [[r[0], r[1], "", r[2], r[3]] for r in rows if len(r) >= 4]
    else:
        rows = [[c.strip() for c in line.split(",")] for line in text.strip().splitlines() if line.strip()]
    gpus = []
    for row in rows:
        if len(row) < 5:
            continue
        try:
            memory = int(float(row[3])) << 20  # MiB
        except ValueError:
            memory = 0
        gpus.append(Gpu(int(row[0]) if row[0].isdigit() else 0, row[1], row[2], memory, row[4]))
    return tuple(gpus)


def module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def import_flavour(flavour: str):
    """The TensorRT module of a flavour, or a UserError naming the package and `trtpipe doctor`."""
    module = FLAVOURS.get(flavour)
    if module is None:
        raise UserError(f"unknown TensorRT flavour {flavour!r}; choose trt10 or rtx")
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"{FLAVOUR_NAMES[flavour]} (python module {module}) is not installed: `{FLAVOUR_INSTALL[flavour]}`; "
            "see `trtpipe doctor`"
        ) from None


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "gpu"


def installed_version(flavour: str) -> str | None:
    from importlib import metadata

    for dist in {"trt10": ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"), "rtx": ("tensorrt-rtx",)}[flavour]:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


class _Messages:
    def __init__(self):
        self.lines: collections.deque = collections.deque(maxlen=200)
        self.errors: collections.deque = collections.deque(maxlen=50)


_LOGGERS: dict[str, object] = {}
_NOISE = ("has Int64 binding", "Thread context has not been set")


def trt_logger(trt):
    """One logger per TensorRT module for the whole process (TensorRT keeps the first one it is given).
    Messages are kept for error reports; warnings are printed only with TRTPIPE_TRT_VERBOSE=1."""
    key = getattr(trt, "__name__", "trt")
    if key in _LOGGERS:
        return _LOGGERS[key]
    messages = _Messages()

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages = messages

        def log(self, severity, msg):
            text = str(msg)
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= 1:
                messages.errors.append(text)
            if level <= 2:
                messages.lines.append(text)
            if os.environ.get("TRTPIPE_TRT_VERBOSE") and level <= 2 and not any(n in text for n in _NOISE):
                print(f"[{key}] {text}", file=sys.stderr)

    _LOGGERS[key] = Logger()
    return _LOGGERS[key]


def last_error(logger) -> str:
    errors = getattr(logger, "messages", None)
    if errors is None or not errors.errors:
        return "no details from TensorRT"
    return errors.errors[-1].splitlines()[0][:400]


@contextlib.contextmanager
def native_stdout_to_stderr() -> Iterator[None]:
    """TensorRT's ONNX parser prints to the process's stdout; keep it off stdout (which carries --json)."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
