"""The llama.cpp peer for GPT-2 batch-1 decoding (bench/llamacpp_peer.py): llama-cpp-python on GGUF files made from
the bundle's own weights — F32 by llama.cpp's convert_hf_to_gguf.py, Q8_0 and Q4_0 by llama.cpp's quantizer from
that F32 file. llama-cpp-python compiles llama.cpp at install time and lives in its own venv (.venv-llamacpp,
`make bench-peers`); it runs in a worker process (llamacpp_worker.py) driven one command at a time, so its rows
interleave with ours round by round, as the openvino-genai peer's do (ov_peers.GenaiWorker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .ov_peers import GenaiWorker
from .peers import Timed, _cached, hf_checkpoint

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("TRTPIPE_LLAMACPP_VENV", ROOT / ".venv-llamacpp"))
WORKER = Path(__file__).with_name("llamacpp_worker.py")
CONVERT = Path(__file__).with_name("gguf_convert.py")
# GGUF type → the trtpipe variant it is compared with (same bits per weight, near enough: Q8_0 and Q4_0 are
# symmetric, blocks of 32, one fp16 scale per block; ours: MatMulNBits, block 32)
FORMATS = (("F32", "fp32"), ("Q8_0", "int8-wo"), ("Q4_0", "int4"))


def python() -> Path:
    exe = VENV / "bin" / "python"
    if not exe.is_file():
        raise UserError(f"the llama.cpp peer runs in its own venv, {VENV} is missing: `make bench-peers`")
    return exe


def convert_script() -> Path:
    """llama.cpp's own HF → GGUF converter, copied out of the llama-cpp-python sdist by `make bench-peers`."""
    script = VENV / "llama.cpp" / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise UserError(f"{script} is missing (llama.cpp's converter): `make bench-peers`")
    return script


class LlamaCppWorker(GenaiWorker):
    peer = "llama.cpp"

    def __init__(self):
        super().__init__(python(), WORKER)


def hf_with_n_ctx(checkpoint: Path, target: Path) -> Path:
    """The checkpoint as llama.cpp's GPT-2 converter reads it: it takes the context length from `n_ctx`, which
    transformers' GPT2Config no longer writes (it saves `n_positions`); the weights are linked, not copied."""
    target.mkdir(parents=True)
    for item in checkpoint.iterdir():
        if item.name != "config.json":
            os.symlink(item, target / item.name)
    config = json.loads((checkpoint / "config.json").read_text())
    config.setdefault("n_ctx", config["n_positions"])
    (target / "config.json").write_text(json.dumps(config, indent=2))
    return target


def gguf_files(bundle: Bundle, worker: LlamaCppWorker, threads: int | None) -> dict[str, Path]:
    """{GGUF type: file} for the bundle's weights, made once and cached beside the other peers."""
    checkpoint = hf_checkpoint(bundle)

    def make(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        f32 = tmp / "model-F32.gguf"
        script = convert_script()
        source = hf_with_n_ctx(checkpoint, tmp / "hf")
        command = [
            str(python()),
            str(CONVERT),
            str(script),
            str(source),
            "--outtype",
            "f32",
            "--outfile",
            str(f32),
        ]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode or not f32.is_file():
            shutil.rmtree(tmp, ignore_errors=True)
            tail = [line for line in (done.stderr or done.stdout).splitlines() if line.strip()][-1:] or ["?"]
            raise UserError(f"convert_hf_to_gguf.py failed: {tail[0][:200]}")
        shutil.rmtree(tmp / "hf")
        for ftype, _ in FORMATS[1:]:
            worker.ask(
                op="quantize",
                source=str(f32),
                target=str(tmp / f"model-{ftype}.gguf"),
                ftype=ftype,
                threads=threads,
            )
        (tmp / "gguf.json").write_text(
            json.dumps({"convert": command[3:], "quantized": [f for f, _ in FORMATS[1:]]})
        )

    folder = _cached(bundle, "gguf", "gguf.json", make)
    return {ftype: folder / f"model-{ftype}.gguf" for ftype, _ in FORMATS}


class LlamaCppDecoder:
    """llama.cpp behind the decoder-row contract of benchmark.decode.run_decode: run(prompt ids, new tokens) ->
    Timed, a clock at each token as the worker's loop receives it."""

    kind = "llama.cpp"
    backend = "llama.cpp"

    def __init__(
        self, worker: LlamaCppWorker, ftype: str, path: Path, variant: str, threads: int | None, n_ctx: int
    ):
        self.worker, self.name, self.variant = worker, f"gguf-{ftype}", variant
        self.label = f"llama.cpp {ftype} GGUF"
        worker.ask(op="load", name=self.name, path=str(path), threads=threads, n_ctx=n_ctx)

    def run(self, prompt: list[int], new_tokens: int) -> Timed:
        answer = self.worker.ask(
            op="generate", name=self.name, ids=[int(i) for i in prompt], new_tokens=new_tokens
        )
        return Timed(answer["ttft"], answer["steps"], answer["ids"])


def p50(row, key: str) -> float | None:
    """A decode row's p50 ms for "ttft" / "tpot"; None for a row that is missing or did not run."""
    if row is None or row.error:
        return None
    return getattr(row, key)["p50_ms"]


def ratio(peer_ms: float | None, ours_ms: float | None) -> float | None:
    """trtpipe speed ÷ peer speed (peer ms ÷ our ms): above 1.0 trtpipe is faster; None when either is missing."""
    if not peer_ms or not ours_ms:
        return None
    return peer_ms / ours_ms


def verdict(kind: str, ours_ms: float | None, peer_ms: float | None) -> tuple[str, bool | None]:
    """A targets-table cell for TPOT (ours must be ≥ 1.0× the peer's speed) or TTFT (ours ≤ the peer's)."""
    r = ratio(peer_ms, ours_ms)
    if r is None:
        return "not measured (a side has no number: see its row)", None
    ok = r >= 1.0
    text = f"{r:.2f}× ({ours_ms:.2f} vs {peer_ms:.2f} ms)"
    if not ok:
        text += f" — llama.cpp's {kind} is {1 / r - 1:.0%} faster"
    return text, ok
