"""The llama.cpp peer (llama-cpp-python), run as a worker process inside its own virtual environment
(.venv-llamacpp, `make bench-peers`): the same one-JSON-command-per-line protocol as ov_genai_worker.py, so the
benchmark's rows interleave with ours without sharing the cores (the worker is blocked on stdin while ours run).

Standalone on purpose: it imports only the standard library, llama_cpp and its sibling worker_protocol.py (the
loop all three workers share; trtpipe is not installed in that venv); run by path:
`.venv-llamacpp/bin/python trtpipe/benchmark/llamacpp_worker.py`.

Commands (each answers {"ok": true, ...} or {"ok": false, "error": "..."}):
  {"op": "quantize", "source": F32.gguf, "target": OUT.gguf, "ftype": "Q8_0" | "Q4_0", "threads": T}
  {"op": "load", "name": N, "path": GGUF, "threads": T, "n_ctx": C}
  {"op": "generate", "name": N, "ids": [...], "new_tokens": K}   -> {"ttft": s, "steps": [s...], "ids": [...]}
  {"op": "info"}                                                 -> versions, CPU features llama.cpp was built with
  {"op": "quit"}
"""

from __future__ import annotations

import sys
import time

from worker_protocol import serve  # this folder is sys.path[0]: the worker runs by path (worker_protocol.py)

MODELS: dict = {}
FTYPES = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}


def quantize(cmd: dict) -> dict:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, FTYPES[cmd["ftype"]])
    params.nthread = int(cmd.get("threads") or 0)
    status = llama_cpp.llama_model_quantize(cmd["source"].encode(), cmd["target"].encode(), params)
    if status != 0:
        raise RuntimeError(f"llama_model_quantize returned {status}")
    return {}


def load(cmd: dict) -> dict:
    from llama_cpp import Llama

    threads = int(cmd.get("threads") or 0) or None
    MODELS[cmd["name"]] = Llama(
        model_path=cmd["path"],
        n_ctx=int(cmd.get("n_ctx") or 1024),
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    return {}


def generate(cmd: dict) -> dict:
    """One greedy generation of exactly new_tokens tokens from the prompt ids (EOS ignored: Llama.generate does not
    stop on it), a clock at each token as this caller receives it. reset() first: generate() would otherwise reuse
    the KV cache of the previous round's identical prompt (its prefix match) and time no prefill."""
    llm = MODELS[cmd["name"]]
    llm.reset()
    times: list[float] = []
    ids: list[int] = []
    started = time.perf_counter()
    for token in llm.generate(cmd["ids"], top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0):
        times.append(time.perf_counter())
        ids.append(int(token))
        if len(ids) == cmd["new_tokens"]:
            break
    if not times:
        raise RuntimeError("llama.cpp generated no tokens")
    return {"ttft": times[0] - started, "steps": [b - a for a, b in zip(times, times[1:])], "ids": ids}


def info(cmd: dict) -> dict:
    import llama_cpp

    system = llama_cpp.llama_print_system_info()
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "system": system.decode() if isinstance(system, bytes) else str(system),
    }


OPS = {"quantize": quantize, "load": load, "generate": generate, "info": info}


def main() -> int:
    return serve(OPS)


if __name__ == "__main__":
    sys.exit(main())
