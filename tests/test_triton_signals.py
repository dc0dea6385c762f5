"""`trtpipe triton-serve` stops like a service: SIGTERM or SIGINT drains it (new requests refused, streaming
generation in flight completes, or gets a clear error at the drain's cut-off), then it exits 0 with nothing of the
server left (no tritonserver, no Python backend stub, ports free); a second signal kills it at once. Each test runs
the CLI as a real process on free loopback ports, serving a streaming tiny-GPT-2 repository."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime import Generator, UserError
from trtpipe.serving.drain import CUT_OFF, REFUSED

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "The list"
STREAMS = 8


@pytest.fixture(scope="module")
def repo(tmp_path_factory, long_gpt2):
    """A --stream repository of the 2,048-position tiny GPT-2 (written by the CLI), if tritonserver runs here."""
    from trtpipe.serving import start_server

    root = tmp_path_factory.mktemp("signals")
    (root / "empty").mkdir()
    try:
        start_server(root / "empty", timeout_s=60).stop()
    except UserError as exc:
        pytest.skip(f"tritonserver cannot start on this machine: {exc}")
    result = CliRunner().invoke(
        app, ["triton", f"gen={long_gpt2}", "--stream", "--out", str(root / "repo"), "-q"]
    )
    assert result.exit_code == 0, result.output
    return root / "repo"


class Serving:
    """`python cli.py triton-serve REPO --http-port 0 --grpc-port 0 ...` as a process: its ports (parsed from the
    ready line), the processes it started, and its stderr lines as they come."""

    def __init__(self, repo: Path, *args: str):
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "cli.py"), "triton-serve", str(repo), "--http-port", "0"]
            + ["--grpc-port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.stderr: queue.Queue = queue.Queue()
        self.errors: list[str] = []
        threading.Thread(target=self._read_stderr, daemon=True).start()
        ready = queue.Queue()
        threading.Thread(target=lambda: ready.put(self.process.stdout.readline()), daemon=True).start()
        try:
            line = ready.get(timeout=120)
        except queue.Empty:
            self.process.kill()
            raise AssertionError("triton-serve was not ready within 120 s") from None
        match = re.search(r"HTTP http://127\.0\.0\.1:(\d+)  gRPC 127\.0\.0\.1:(\d+)", line)
        assert match, f"no ready line: {line!r} {''.join(self.errors)}"
        self.http_port, self.grpc_port = map(int, match.groups())
        import psutil

        self.family = psutil.Process(self.process.pid).children(recursive=True)
        names = sorted({p.name() for p in self.family})
        assert names == ["triton_python_backend_stub", "tritonserver"], names

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.errors.append(line)
            self.stderr.put(line)

    def wait_for(self, text: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if text in self.stderr.get(timeout=max(0.01, deadline - time.monotonic())):
                    return
            except queue.Empty:
                raise AssertionError(f"triton-serve never said {text!r}: {''.join(self.errors)}") from None

    def nothing_left(self) -> None:
        """No process it started is alive (a zombie waiting for init counts as gone), and both ports bind."""
        import psutil

        gone, alive = psutil.wait_procs(self.family, timeout=5)
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
        for port in (self.http_port, self.grpc_port):
            with socket.socket() as sock:  # SO_REUSEADDR: a closed connection's TIME_WAIT is no listener
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)
        for p in self.family:  # never leave a server behind a failed test
            if p.is_running():
                p.kill()


def _stream(grpc_port: int, tokens: int):
    """One gRPC streaming generation; returns (client, its answer queue)."""
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(
        f"127.0.0.1:{grpc_port}", channel_args=[("grpc.enable_http_proxy", 0)]
    )
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    text = grpc.InferInput("text", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[PROMPT.encode()]], dtype=np.object_))
    steps = grpc.InferInput("max_new_tokens", [1, 1], "INT32")
    steps.set_data_from_numpy(np.array([[tokens]], dtype=np.int32))
    client.async_stream_infer("gen", [text, steps], enable_empty_final_response=True)
    return client, answers


def _first_token(answers: queue.Queue) -> list[int]:
    result, error = answers.get(timeout=60)
    assert error is None, error
    return [int(result.as_numpy("ids")[0, 0])]


def _outcome(answers: queue.Queue, ids: list[int], timeout_s: float) -> tuple[str, list[int], str]:
    """("done", ids, "") at the final response, or ("error", ids, message); a stream silent for timeout_s hangs."""
    while True:
        try:
            result, error = answers.get(timeout=timeout_s)
        except queue.Empty:
            return "hang", ids, ""
        if error is not None:
            return "error", ids, str(error)
        if result.get_response().parameters["triton_final_response"].bool_param:
            return "done", ids, ""
        ids.append(int(result.as_numpy("ids")[0, 0]))


def _run_streams(server: Serving, tokens: int):
    streams = [_stream(server.grpc_port, tokens) for _ in range(STREAMS)]
    firsts = [_first_token(answers) for _, answers in streams]  # every one is generating
    return streams, firsts


def _close(streams) -> None:
    for client, _ in streams:
        client.stop_stream()
        client.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_drains_streaming_generation_then_exits_0_leaving_nothing(repo, long_gpt2, signum):
    """Eight streams in flight when the signal comes each finish with every token the runtime generates; a new
    request is refused at once; the server exits 0 and nothing of it is left."""
    tokens = 600
    server = Serving(repo, "--drain-timeout", "30")
    try:
        streams, firsts = _run_streams(server, tokens)
        started = time.monotonic()
        server.process.send_signal(signum)
        server.wait_for("draining")
        # gRPC still takes calls: our models refuse them, Triton too once it stops its schedulers and models
        late, late_answers = _stream(server.grpc_port, 4)
        result, error = late_answers.get(timeout=30)
        assert error is not None, "a new request was served during the drain"
        triton_words = ("Server is stopping", "has no available versions")
        assert REFUSED in str(error) or any(words in str(error) for words in triton_words), error
        late.stop_stream()
        late.close()
        deadline = time.monotonic() + 5
        while True:  # Triton closes its HTTP listener as the drain starts
            try:
                socket.create_connection(("127.0.0.1", server.http_port), timeout=5).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "HTTP still takes connections 5 s into the drain"
            time.sleep(0.05)
        outcomes = [_outcome(answers, ids, 60) for (_, answers), ids in zip(streams, firsts)]
        _close(streams)
        assert server.process.wait(60) == 0, "".join(server.errors)
        drained = time.monotonic() - started
        expected = Generator(long_gpt2).generate(PROMPT, max_new_tokens=tokens)[0].ids
        assert [(kind, len(ids)) for kind, ids, _ in outcomes] == [("done", tokens)] * STREAMS, outcomes
        assert all(ids == expected for _, ids, _ in outcomes)
        assert "tritonserver stopped (exit 0)" in "".join(server.errors)
        server.nothing_left()
        print(f"{signal.Signals(signum).name}: {STREAMS} streams drained, exit 0 after {drained:.2f}s")
    finally:
        server.kill()


def test_generation_still_running_at_the_drain_cutoff_gets_a_clear_error(repo):
    """A drain too short for the streams: each gets the shutdown error (UNAVAILABLE) before Triton's own timeout
    would cut its connection, none hangs, and the server still exits 0 with nothing left."""
    server = Serving(repo, "--drain-timeout", "2")
    try:
        streams, firsts = _run_streams(server, 2000)  # ~5 s for eight on 2 cores; the cut-off is at 1 s
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        outcomes = [_outcome(answers, ids, 30) for (_, answers), ids in zip(streams, firsts)]
        answered = time.monotonic() - started
        _close(streams)
        assert server.process.wait(30) == 0, "".join(server.errors)
        stopped = time.monotonic() - started
        for kind, ids, message in outcomes:
            assert kind == "error" and CUT_OFF in message and len(ids) < 2000, (kind, len(ids), message)
        assert answered < 2 and stopped < 2 + 10, (answered, stopped)
        server.nothing_left()
        print(f"cut off after {answered:.2f}s (drain 2 s), exit 0 after {stopped:.2f}s")
    finally:
        server.kill()


def test_a_second_signal_during_the_drain_kills_at_once(repo):
    """SIGTERM, then SIGTERM again while the streams still run: the server and its stubs are SIGKILLed at once,
    every stream ends with an error (none hangs), the CLI exits 143 (128 + SIGTERM) and nothing is left."""
    server = Serving(repo, "--drain-timeout", "30")
    try:
        streams, firsts = _run_streams(server, 2000)
        server.process.send_signal(signal.SIGTERM)
        server.wait_for("draining")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(10) == 128 + signal.SIGTERM, "".join(server.errors)
        killed = time.monotonic() - started
        outcomes = [_outcome(answers, ids, 30) for (_, answers), ids in zip(streams, firsts)]
        _close(streams)
        assert [kind for kind, _, _ in outcomes] == ["error"] * STREAMS, outcomes
        assert killed < 5 and "killing tritonserver" in "".join(server.errors)
        server.nothing_left()
        print(f"second SIGTERM: exit 143 after {killed:.2f}s")
    finally:
        server.kill()
