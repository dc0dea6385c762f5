"""Run Triton Inference Server from the `nvidia-pytriton` wheel, on loopback, for as long as a `with` block.

The wheel ships a CPU-capable `tritonserver` binary, the Python backend and one backend stub per Python version
(it has no onnxruntime or tensorrt backend: those need the official container, see docs/serving.md).
`start_server` prepares a backend directory in a temp dir (the Python backend plus the stub for this Python),
picks free ports, binds HTTP and gRPC to 127.0.0.1, waits until the server and every model are ready, and
`stop` ends it like a service (drain.py): new requests refused, those in flight get `drain_timeout_s` to finish,
then whatever overstays or is left of its process group (the stubs) is killed.

The stub embeds Python and ignores PYTHONPATH; it finds its environment through `python3` on PATH (a venv's
pyvenv.cfg), so the serving Python's bin directory goes first on PATH. Without that the stub would load the base
interpreter's packages, and a numpy 2 there breaks the stub's tensor exchange (garbled BYTES, wrong sizes).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import UserError
from . import drain as notice

LOOPBACK = "127.0.0.1"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never goes via a proxy


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel's server pieces are, for one Python version."""

    binary: Path
    python_backend: Path  # backends/python: libtriton_python.so + triton_python_backend_utils.py
    stub: Path  # triton_python_backend_stub built for this Python version
    libs: Path  # the wheel's bundled shared libraries
    libpython_dir: Path | None  # directory holding libpythonX.Y.so.1.0 (None: the loader finds it)


def find_triton() -> TritonInstall:
    """Locate tritonserver in the installed nvidia-pytriton wheel; UserError naming the fix if it cannot run."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("tritonserver comes with the nvidia-pytriton wheel: pip install 'trtpipe[triton]'")
    root = Path(next(iter(spec.submodule_search_locations)))
    dist = root / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    _check_numpy()
    install = TritonInstall(
        binary=dist / "bin" / "tritonserver",
        python_backend=dist / "backends" / "python",
        stub=dist / "python_backend_stubs" / version / "triton_python_backend_stub",
        libs=root.parent / "nvidia_pytriton.libs",
        libpython_dir=_libpython_dir(),
    )
    if not install.binary.is_file():
        raise UserError(
            f"{install.binary} is missing: reinstall the wheel (pip install --force-reinstall nvidia-pytriton)"
        )
    if not install.stub.is_file():
        have = sorted(p.name for p in (dist / "python_backend_stubs").glob("*"))
        raise UserError(
            f"nvidia-pytriton has no Python backend stub for Python {version} (has {', '.join(have) or 'none'}); "
            "serve from a Python it supports"
        )
    return install


def _check_numpy() -> None:
    """The wheel's stub (Triton 2.51) exchanges tensors with numpy 1's ABI: under numpy 2 it garbles them
    (BYTES lengths, output sizes), which is why nvidia-pytriton requires numpy<2."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        major = int(version("numpy").split(".")[0])
    except PackageNotFoundError:
        raise UserError(
            "the Python backend needs numpy in the serving environment: pip install 'numpy<2'"
        ) from None
    if major >= 2:
        raise UserError(
            f"numpy {version('numpy')} is installed, but the nvidia-pytriton wheel's Python backend works with "
            "numpy 1 only (its tensors arrive garbled under numpy 2): pip install 'numpy<2'"
        )


def _libpython_dir() -> Path | None:
    """The stub links libpythonX.Y.so.1.0: use this interpreter's own, else whatever the loader finds."""
    soname = sysconfig.get_config_var("INSTSONAME") or ""
    libdir = sysconfig.get_config_var("LIBDIR")
    if soname.endswith(".so.1.0") and libdir and (Path(libdir) / soname).is_file():
        return Path(libdir)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if ctypes.util.find_library(f"python{version}") is None:
        raise UserError(
            f"Triton's Python backend needs libpython{version}.so.1.0, and this Python ({sys.executable}) is a static "
            "build without one; use a Python built with --enable-shared (distribution packages, pyenv with "
            "PYTHON_CONFIGURE_OPTS=--enable-shared, or the official Triton container)"
        )
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _python_bin_dir(workdir: Path) -> Path:
    """A directory whose `python3` is this interpreter, for the stub to find its environment by."""
    own = Path(sys.executable).parent
    candidate = own / "python3"
    if candidate.exists() and os.path.realpath(candidate) == os.path.realpath(sys.executable):
        return own  # a venv's bin: the stub finds pyvenv.cfg beside it
    link_dir = workdir / "bin"
    link_dir.mkdir(exist_ok=True)
    (link_dir / "python3").symlink_to(sys.executable)
    return link_dir


@dataclass
class TritonServer:
    """A running tritonserver bound to 127.0.0.1; use as a context manager or call stop()."""

    repositories: list[Path]
    http_port: int
    grpc_port: int
    metrics_port: int | None
    process: subprocess.Popen
    workdir: Path
    log_path: Path
    drain_timeout_s: int = 10  # Triton's --exit-timeout-secs
    notice_path: Path | None = None  # the drain notice the models watch (drain.py)
    shm_prefix: str = ""  # the Python backend's shared-memory regions: /dev/shm/<prefix>*
    overstayed: bool = False  # it outlived its drain and was killed
    _draining: bool = field(default=False, repr=False)
    _stopped: bool = field(default=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    def log(self, lines: int | None = None) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
            return "\n".join(text.splitlines()[-lines:]) if lines else text
        return ""

    def ready(self) -> bool:
        try:
            with _NO_PROXY.open(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def exited(self) -> bool:
        """Whether the server process has ended, without reaping it: until `stop` reaps it, its pid, and so its
        process group id, stays the server's own (safe to signal)."""
        if self.process.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # reaped elsewhere
            return True

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.exited():
                self.terminate()  # its stubs too
                raise UserError(
                    f"tritonserver exited with code {self.process.returncode} while starting up with "
                    f"{', '.join(map(str, self.repositories))}: "
                    f"{first_error(self.log())} (full log: {self.log_path})"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise UserError(
            f"tritonserver was not ready after {timeout_s:.0f}s: {first_error(self.log())} (full log: {self.log_path})"
        )

    def serve(self, duration_s: float | None = None) -> None:
        """Block while the server runs: for duration_s seconds, or until it ends after `drain` or `kill` (a
        signal, see StopSignals); a server that stops by itself is a UserError naming its first error."""
        deadline = time.monotonic() + duration_s if duration_s else None
        while not self.exited() and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.1)
        if self.exited() and not self._draining:
            self.terminate()
            raise UserError(
                f"tritonserver stopped by itself (exit {self.process.returncode}): {first_error(self.log())} "
                f"(full log: {self.log_path})"
            )

    def drain(self, signum: int = signal.SIGTERM) -> None:
        """Begin a graceful stop (once): write the models' drain notice, then send `signum` (SIGTERM or SIGINT,
        the same to Triton): it refuses new requests, lets those in flight finish within drain_timeout_s, unloads
        the models and exits. Returns at once; `stop` waits."""
        if self._draining:
            return
        self._draining = True
        if self.notice_path is not None:
            with contextlib.suppress(OSError):
                notice.write_notice(self.notice_path, self.drain_timeout_s)
        if self.process.returncode is None:  # unreaped: the pid is still the server's
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)

    def kill(self) -> None:
        """SIGKILL the server's process group (server and stubs) at once; requests in flight are cut off."""
        self._draining = True
        if self.process.returncode is None:  # unreaped: the group id is still the server's
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)

    def stop(self, keep_log: bool = False) -> int | None:
        """Stop the server and remove its temp files (the log stays with keep_log). Returns its exit code."""
        self.terminate()
        self.cleanup(keep_log)
        return self.process.returncode

    def terminate(self) -> None:
        """`drain`, wait up to drain_timeout_s + 10 s for the server to exit, SIGKILL its process group if it
        overstays, then kill whatever is left of the group (stubs a timed-out exit left behind) and reap it."""
        if self._stopped:
            return
        self._stopped = True
        self.drain()
        deadline = time.monotonic() + self.drain_timeout_s + 10
        while not self.exited() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.exited():
            self.overstayed = True
            self.kill()
        if self.process.returncode is None:  # exited or killed, not yet reaped: the group id is still its own
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            notice.wait_group_gone(self.process.pid, timeout_s=10)
        self.process.wait(timeout=30)

    def cleanup(self, keep_log: bool = False) -> None:
        for name in ("backends", "bin"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        if self.process.returncode is not None:  # a killed stub cannot remove its shared memory
            notice.remove_leftovers(self.notice_path, self.shm_prefix)
        with contextlib.suppress(OSError):
            if self.log_path.parent == self.workdir and not keep_log:
                self.log_path.unlink()
            self.workdir.rmdir()  # stays only while it holds a log worth reading

    def __enter__(self) -> TritonServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def first_error(log: str) -> str:
    """The most telling line of a Triton log (an E-line, else any error line, else the last line), without the
    glog prefix and the Python traceback the backend appends."""
    lines = [line.strip() for line in log.splitlines() if line.strip() and not line.startswith(("|", "+"))]
    for pattern in (r"^E\d{4}", r"failed to load|UNAVAILABLE|Error|error:"):
        hits = [line for line in lines if re.search(pattern, line) and "CudaDriverHelper" not in line]
        if hits:
            message = re.sub(r"^[EWI]\d{4} [\d:.]+ +\d+ \S+\] ", "", hits[0]).strip('"')
            return message.split("\\n\\nAt:")[0].split("\\nAt:")[0][:600]
    return lines[-1][:600] if lines else "no output"


def start_server(
    repository: str | os.PathLike | list[str | os.PathLike],
    http_port: int = 0,
    grpc_port: int = 0,
    metrics_port: int | None = None,
    timeout_s: float = 120.0,
    log_path: str | os.PathLike | None = None,
    verbose: bool = False,
    drain_timeout_s: int = 10,
    on_launch: Callable[[TritonServer], None] | None = None,
) -> TritonServer:
    """Start tritonserver on 127.0.0.1 for a model repository (or several: model names must differ across them)
    and wait until it and every model are ready.
    Ports 0 = pick free ones (retried if another process takes one first); metrics stay off unless a port is
    given (then on 127.0.0.1 too). drain_timeout_s: how long `stop` lets requests in flight finish (Triton's
    --exit-timeout-secs). on_launch(server) is called as soon as the process runs (StopSignals.attach)."""
    if not 0 <= drain_timeout_s <= 3600:
        raise UserError(f"drain_timeout_s must be between 0 and 3600 seconds (got {drain_timeout_s})")
    repositories = [Path(r).resolve() for r in (repository if isinstance(repository, list) else [repository])]
    for path in repositories:
        if not path.is_dir():
            raise UserError(
                f"no model repository at {path}; write one with `trtpipe triton BUNDLE... --out DIR`"
            )
    install = find_triton()
    workdir = Path(tempfile.mkdtemp(prefix="trtpipe-triton-"))
    backends = workdir / "backends"
    shutil.copytree(install.python_backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    stub = backends / "python" / "triton_python_backend_stub"
    shutil.copy2(install.stub, stub)
    stub.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{_python_bin_dir(workdir)}{os.pathsep}{env.get('PATH', '')}"
    libs = [str(p) for p in (install.libpython_dir, install.libs) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        libs + [env["LD_LIBRARY_PATH"]] if env.get("LD_LIBRARY_PATH") else libs
    )
    log_file = Path(log_path) if log_path else workdir / "tritonserver.log"
    notice_path = workdir / "drain-notice"
    env[notice.ENV] = str(notice_path)  # the stubs inherit it
    attempts = 3 if (http_port == 0 or grpc_port == 0) else 1
    for attempt in range(attempts):
        ports = (http_port or free_port(), grpc_port or free_port())
        shm_prefix = f"trtpipe{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        command = [
            str(install.binary),
            *(f"--model-repository={path}" for path in repositories),
            f"--backend-directory={backends}",
            f"--http-address={LOOPBACK}",
            f"--http-port={ports[0]}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={ports[1]}",
            "--allow-sagemaker=false",
            "--allow-vertex-ai=false",
            "--disable-auto-complete-config",  # serve the configs as written: they are complete and validated
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={int(drain_timeout_s)}",
            "--pinned-memory-pool-byte-size=0",
            # unique shared-memory names: several servers (tests, users) can run on one machine
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
            f"--log-verbose={1 if verbose else 0}",
        ]
        if metrics_port is None:
            command.append("--allow-metrics=false")
        else:
            command += [
                f"--metrics-address={LOOPBACK}",
                f"--metrics-port={metrics_port}",
                "--allow-gpu-metrics=false",
            ]
        notice_path.unlink(missing_ok=True)  # a failed attempt's: this server is not draining
        with open(log_file, "wb") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        server = TritonServer(repositories, *ports, metrics_port, process, workdir, log_file, drain_timeout_s)
        server.notice_path, server.shm_prefix = notice_path, shm_prefix
        try:
            if on_launch is not None:
                on_launch(server)
            server.wait_ready(timeout_s)
            return server
        except UserError:
            server.terminate()
            log = server.log().lower()
            if attempt + 1 < attempts and ("already in use" in log or "failed to start" in log):
                continue  # a free port was taken before the server bound it: pick others
            server.cleanup(keep_log=True)
            raise
        except BaseException:  # interrupted while loading: never leave a server behind
            server.stop()
            raise
    raise AssertionError("unreachable")


__all__ = [
    "first_error",
    "TritonInstall",
    "TritonServer",
    "find_triton",
    "free_port",
    "start_server",
    "LOOPBACK",
]
