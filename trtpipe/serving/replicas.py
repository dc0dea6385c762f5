"""Replicas behind a load balancer on one machine: N tritonservers on loopback ports behind HAProxy.

`start_replicas(repo, replicas=3)` starts N servers (`start_server`, each on its own HTTP/gRPC ports), writes an
HAProxy config (one HTTP frontend on 127.0.0.1 → a backend of the N replicas, health-checked on Triton's
`/v2/health/ready` every 250 ms: two failed checks take a replica out, two good ones bring it back) and runs
`haproxy -db` as a child process. Only a request refused at connect is retried, on another replica: a request that
reached a replica which then died gets HTTP 502, never a second run. Each request has its own connections, client
side and replica side (`option httpclose`): a refused connection is the one failure known not to have reached a
replica, and a request lost with its replica is a logged 502 (on a kept-alive client connection HAProxy would close
it silently instead, unlogged, for the client to retry).
HAProxy's runtime API (a unix socket in the set's temp dir) says which replicas are UP; its log (one line per
request: start, duration, replica, status, retries) is what the fault tests count. HTTP only: gRPC through HAProxy
would need an HTTP/2 frontend (`proto h2`), which this does not write.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..runtime.errors import UserError
from .server import LOOPBACK, TritonServer, free_port, start_server

CHECK_MS = (
    250  # health-check interval: a dead replica is out after FALL failed checks, back after RISE good ones
)
FALL, RISE = 2, 2
LOG_TAG = "trtpipe-request"


def find_haproxy() -> str:
    path = shutil.which("haproxy")
    if path is None:
        raise UserError(
            "haproxy is not installed: apt-get install haproxy (Debian/Ubuntu; `make install` does it where "
            "apt-get is available)"
        )
    return path


def haproxy_config(
    port: int, replicas: list[int], socket_path: Path, check_ms: int = CHECK_MS, keepalive: bool = False
) -> str:
    """HAProxy config: HTTP on 127.0.0.1:port → the replicas' HTTP ports, health-checked, retry only on connect.
    keepalive: keep client connections open (`http-server-close`; faster for requests shorter than a connect, but
    a request lost with its replica then ends in a silently closed connection, no 502 and no log line)."""
    connections = (
        "option http-server-close          # clients keep their connection; one request per replica connection"
        if keepalive
        else "option httpclose                  # one request per connection, both sides: a failure is a logged 502"
    )
    servers = "\n".join(f"    server replica{i} {LOOPBACK}:{p} check" for i, p in enumerate(replicas))
    return f"""\
# written by trtpipe.serving.replicas
global
    nbthread 1                        # leave the cores to the replicas
    maxconn 1024
    stats socket {socket_path} mode 600 level admin
    log stdout format raw local0 info

defaults
    mode http
    log global
    log-format "{LOG_TAG} %Ts.%ms %Th %Ti %Ta %s %ST %rc %tsc"
    {connections}
    retries 3
    retry-on conn-failure             # only what never reached a replica, never what one was running
    option redispatch 1               # and every retry goes to another replica
    timeout connect 2s
    timeout check 2s
    timeout http-request 30s
    timeout queue 30s
    timeout client 300s
    timeout server 300s

frontend triton
    bind {LOOPBACK}:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter {check_ms}ms fastinter {check_ms}ms downinter {check_ms}ms fall {FALL} rise {RISE}
{servers}
"""


@dataclass(frozen=True)
class Request:
    """One line of HAProxy's request log. start/end: Unix time in seconds (ms resolution)."""

    start: float
    end: float
    replica: str  # "replica0"…, or "<NOSRV>" when none was available
    status: int  # HTTP status sent to the client (-1: none)
    retries: int  # connection retries (each to another replica)
    termination: str  # HAProxy's termination state: "--" normal, "SH" the replica went away mid-request…


def parse_log(text: str) -> list[Request]:
    requests = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 9 or parts[0] != LOG_TAG:
            continue  # haproxy's own messages, or a line still being written
        _, accepted, th, ti, ta, replica, status, retries, termination = parts
        start = float(accepted) + (max(int(th), 0) + max(int(ti), 0)) / 1000.0
        requests.append(
            Request(
                start,
                start + max(int(ta), 0) / 1000.0,
                replica,
                int(status),
                int(retries.lstrip("+")),
                termination,
            )
        )
    return requests


@dataclass
class ReplicaSet:
    """N tritonservers behind one HAProxy on 127.0.0.1; use as a context manager or call stop()."""

    repositories: list[Path]
    servers: list[TritonServer | None]  # None: killed and not restarted
    ports: list[tuple[int, int]]  # each replica's (HTTP, gRPC) ports, kept across restarts
    port: int
    haproxy: subprocess.Popen
    workdir: Path
    server_options: dict = field(default_factory=dict)  # start_server's timeout_s, drain_timeout_s (restarts)
    _stopped: bool = field(default=False, repr=False)

    @property
    def http_url(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def names(self) -> list[str]:
        return [f"replica{i}" for i in range(len(self.ports))]

    @property
    def log_path(self) -> Path:
        return self.workdir / "haproxy.log"

    def admin(self, command: str) -> str:
        """One command on HAProxy's runtime API (e.g. `show stat`, `show servers state`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.workdir / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's counters per replica (and BACKEND): status (UP, DOWN, "UP 1/2" on its way down…), stot
        (requests sent), wretr / wredis (retries / redispatches), econ / eresp (connect / response errors)…"""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}

    def status(self) -> dict[str, str]:
        return {name: row["status"] for name, row in self.stats().items() if name != "BACKEND"}

    def wait_status(self, index: int, wanted: str, timeout_s: float = 10.0) -> float:
        """Wait until HAProxy reports replica `index` as `wanted` (UP or DOWN); the seconds it took."""
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self.status().get(self.names[index]) == wanted:
                return time.monotonic() - began
            time.sleep(0.02)
        raise UserError(
            f"HAProxy did not see {self.names[index]} {wanted} within {timeout_s:g}s (status {self.status()}); "
            f"see {self.log_path}"
        )

    def requests(self) -> list[Request]:
        """Every request HAProxy has finished so far, from its log."""
        with contextlib.suppress(OSError):
            return parse_log(self.log_path.read_text(encoding="utf-8", errors="replace"))
        return []

    def kill(self, index: int) -> float:
        """SIGKILL replica `index`'s process group (server and stubs), as a crash would; the Unix time of the kill."""
        server = self.servers[index]
        if server is None:
            raise UserError(f"{self.names[index]} is not running; start it again with restart({index})")
        self.servers[index] = None
        killed = time.time()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        server.stop()  # removes its temp dir; the process is gone already
        for prefix in (
            a.split("shm-region-prefix-name=")[1] for a in server.process.args if "shm-region" in a
        ):
            for path in glob.glob(
                f"/dev/shm/{glob.escape(prefix)}*"
            ):  # a killed stub cannot remove its region
                with contextlib.suppress(OSError):
                    os.unlink(path)
        return killed

    def restart(self, index: int) -> TritonServer:
        """Start replica `index` again on its own ports (it rejoins once HAProxy's checks pass: wait_status UP)."""
        if self.servers[index] is not None:
            raise UserError(f"{self.names[index]} is running; kill({index}) it first")
        http_port, grpc_port = self.ports[index]
        self.servers[index] = start_server(
            self.repositories, http_port=http_port, grpc_port=grpc_port, **self.server_options
        )
        return self.servers[index]

    def serve(self, duration_s: float | None = None) -> None:
        """Block while HAProxy runs (for duration_s seconds, or until interrupted); replicas may come and go, but
        HAProxy stopping by itself is a UserError."""
        deadline = time.monotonic() + duration_s if duration_s else None
        while self.haproxy.poll() is None and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.5)
        if self.haproxy.poll() is not None and not self._stopped:
            last = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"haproxy stopped by itself (exit {self.haproxy.returncode}): {last[0]}")

    def stop(self) -> None:
        """Stop HAProxy (finishing the requests it holds), then every replica; removes the temp dir."""
        if self._stopped:
            return
        self._stopped = True
        if self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGUSR1)  # soft stop: stop listening, finish what is in flight
            try:
                self.haproxy.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.haproxy.kill()
                self.haproxy.wait(timeout=10)
        _stop_all(self.servers)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stop_all(servers: list[TritonServer | None]) -> None:
    running = [s for s in servers if s is not None]
    if running:
        with ThreadPoolExecutor(len(running)) as pool:
            list(pool.map(lambda s: s.stop(), running))


def start_replicas(
    repository: str | os.PathLike | list[str | os.PathLike],
    replicas: int = 2,
    port: int = 0,
    timeout_s: float = 120.0,
    check_ms: int = CHECK_MS,
    keepalive: bool = False,
    drain_timeout_s: int = 10,
) -> ReplicaSet:
    """Start `replicas` tritonservers for a repository (or several) and HAProxy in front of them on
    127.0.0.1:port (0: a free one); returns once HAProxy's health checks see every replica UP. keepalive: see
    haproxy_config; drain_timeout_s: each replica's, as start_server's."""
    if replicas < 1:
        raise UserError(f"replicas must be at least 1, not {replicas}", fields="replicas")
    binary = find_haproxy()
    repositories = [Path(r) for r in (repository if isinstance(repository, list) else [repository])]
    options = {"timeout_s": timeout_s, "drain_timeout_s": drain_timeout_s}
    servers: list[TritonServer | None] = []
    try:
        with ThreadPoolExecutor(replicas) as pool:
            futures = [pool.submit(start_server, repositories, **options) for _ in range(replicas)]
            for future in futures:
                with contextlib.suppress(Exception):
                    servers.append(future.result())
            for future in futures:
                future.result()  # the first failure, now that every started server is in `servers`
        return _start_balancer(binary, repositories, servers, port, options, check_ms, keepalive)
    except BaseException:
        _stop_all(servers)
        raise


def _start_balancer(binary, repositories, servers, port, options, check_ms, keepalive) -> ReplicaSet:
    workdir = Path(tempfile.mkdtemp(prefix="trtpipe-haproxy-"))
    attempts = 3 if port == 0 else 1
    for attempt in range(attempts):
        chosen = port or free_port()
        config = workdir / "haproxy.cfg"
        config.write_text(
            haproxy_config(
                chosen, [s.http_port for s in servers], workdir / "admin.sock", check_ms, keepalive
            )
        )
        checked = subprocess.run([binary, "-c", "-q", "-f", str(config)], capture_output=True, text=True)
        if checked.returncode:
            shutil.rmtree(workdir, ignore_errors=True)
            raise UserError(
                f"haproxy refused the config it was given: {(checked.stderr or checked.stdout).strip()}"
            )
        with open(workdir / "haproxy.log", "wb") as log:
            process = subprocess.Popen(
                [binary, "-db", "-f", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        ports = [(s.http_port, s.grpc_port) for s in servers]
        replica_set = ReplicaSet(repositories, list(servers), ports, chosen, process, workdir, options)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError, IndexError, KeyError):
                rows = replica_set.stats()
                if all(
                    rows[n]["status"] == "UP" and rows[n]["check_status"] == "L7OK" for n in replica_set.names
                ):
                    return replica_set
            time.sleep(0.05)
        log = (workdir / "haproxy.log").read_text(errors="replace")
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        if attempt + 1 < attempts and "cannot bind" in log:
            continue  # the free port was taken before haproxy bound it
        shutil.rmtree(workdir, ignore_errors=True)
        if "cannot bind" in log:
            raise UserError(
                f"{LOOPBACK}:{chosen} is taken: choose another port for HAProxy (0: any free one)"
            )
        last = log.strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"haproxy did not come up in front of the replicas: {last[0]}")
    raise AssertionError("unreachable")


__all__ = ["ReplicaSet", "Request", "find_haproxy", "haproxy_config", "parse_log", "start_replicas"]
