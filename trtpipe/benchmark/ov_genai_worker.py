"""The OpenVINO GenAI peer, run as a worker process inside its own virtual environment (.venv-ov-genai, `make
bench-peers`): the benchmark in the runtime's venv starts it once and sends it one JSON command per line on stdin;
it answers one JSON line per command on stdout. It sits idle (blocked on stdin) while the benchmark times its own
rows, so rounds interleave across the two processes without sharing the cores.

Standalone on purpose: it imports only the standard library, numpy, openvino_genai and its sibling
worker_protocol.py (the loop all three workers share; trtpipe is not installed in that venv), and it is run by
path: `.venv-ov-genai/bin/python trtpipe/benchmark/ov_genai_worker.py`.

Commands (each answers {"ok": true, ...} or {"ok": false, "error": "..."}):
  {"op": "load", "name": N, "path": DIR, "kind": "llm" | "cb", "properties": {...}, "scheduler": {...}}
                                          (scheduler: SchedulerConfig fields, e.g. enable_prefix_caching)
  {"op": "tokenize", "name": N, "text": T}                       -> {"ids": [...]}
  {"op": "decode", "name": N, "ids": [...]}                      -> {"text": T}
  {"op": "generate", "name": N, "ids": [...], "new_tokens": K}   -> {"ttft": s, "steps": [s...], "ids": [...]}
  {"op": "batch", "name": N, "prompts": [[...]...], "new_tokens": K} -> {"seconds": s, "ids": [[...]...]}
  {"op": "info"}                                                 -> versions
  {"op": "quit"}
"""

from __future__ import annotations

import sys
import time

from worker_protocol import serve  # this folder is sys.path[0]: the worker runs by path (worker_protocol.py)

PIPES: dict = {}


def _tensor(rows: list[list[int]]):
    import numpy as np
    import openvino as ov

    return ov.Tensor(np.asarray(rows, dtype=np.int64))


def _config(new_tokens: int):
    import openvino_genai as og

    config = og.GenerationConfig()
    config.max_new_tokens = new_tokens
    config.min_new_tokens = new_tokens
    config.ignore_eos = True
    config.do_sample = False  # greedy
    return config


def load(cmd: dict) -> dict:
    import openvino_genai as og

    properties = cmd.get("properties") or {}
    scheduler = None
    if cmd.get("scheduler"):
        scheduler = og.SchedulerConfig()
        for key, value in cmd["scheduler"].items():
            setattr(scheduler, key, value)
    if cmd.get("kind", "llm") == "cb":
        pipe = og.ContinuousBatchingPipeline(
            cmd["path"], scheduler or og.SchedulerConfig(), "CPU", properties
        )
        PIPES[cmd["name"]] = ("cb", pipe)
    else:
        # LLMPipeline on the CPU runs the paged-attention (continuous batching) backend by default, with prefix
        # caching on: a scheduler_config here is how a caller turns that off
        extra = {"scheduler_config": scheduler} if scheduler is not None else {}
        pipe = og.LLMPipeline(cmd["path"], "CPU", **properties, **extra)
        PIPES[cmd["name"]] = ("llm", pipe)
    return {}


def generate(cmd: dict) -> dict:
    """One greedy generation of exactly new_tokens tokens from the given prompt ids, a clock at each token as the
    caller (this streamer) receives it: TTFT = the first token, steps = token to token."""
    import numpy as np
    import openvino_genai as og

    kind, pipe = PIPES[cmd["name"]]
    times: list[float] = []
    ids: list[int] = []

    class Clock(og.StreamerBase):
        def write(self, token):
            now = time.perf_counter()
            tokens = list(token) if isinstance(token, (list, tuple)) else [int(token)]
            for t in tokens:
                times.append(now)
                ids.append(int(t))
            return og.StreamingStatus.RUNNING

        def end(self):
            pass

    prompt = _tensor([cmd["ids"]])
    mask = _tensor([[1] * len(cmd["ids"])])
    clock = Clock()
    started = time.perf_counter()
    if kind == "cb":
        pipe.generate([prompt], [_config(cmd["new_tokens"])], clock)
    else:
        pipe.generate(og.TokenizedInputs(prompt, mask), _config(cmd["new_tokens"]), clock)
    if not times:
        raise RuntimeError("the streamer received no tokens")
    steps = np.diff(np.asarray(times)).tolist()
    return {"ttft": times[0] - started, "steps": steps, "ids": ids}


def batch(cmd: dict) -> dict:
    """All prompts in one call (LLMPipeline: one padded batch; ContinuousBatchingPipeline: one request each)."""
    import numpy as np
    import openvino_genai as og

    kind, pipe = PIPES[cmd["name"]]
    prompts, new_tokens = cmd["prompts"], cmd["new_tokens"]
    started = time.perf_counter()
    if kind == "cb":
        results = pipe.generate([_tensor([p]) for p in prompts], [_config(new_tokens)] * len(prompts))
        seconds = time.perf_counter() - started
        ids = [list(map(int, r.m_generation_ids[0])) for r in results]
    else:
        width = max(len(p) for p in prompts)
        # left padding, as transformers pads a batch for generation; the mask marks the padding out
        rows = [[0] * (width - len(p)) + list(p) for p in prompts]
        mask = [[0] * (width - len(p)) + [1] * len(p) for p in prompts]
        out = pipe.generate(og.TokenizedInputs(_tensor(rows), _tensor(mask)), _config(new_tokens))
        seconds = time.perf_counter() - started
        ids = [list(map(int, np.asarray(t))) for t in out.tokens]
    return {"seconds": seconds, "ids": ids}


def tokenize(cmd: dict) -> dict:
    _, pipe = PIPES[cmd["name"]]
    encoded = pipe.get_tokenizer().encode(cmd["text"], add_special_tokens=False)
    return {"ids": [int(i) for i in encoded.input_ids.data[0]]}


def decode(cmd: dict) -> dict:
    _, pipe = PIPES[cmd["name"]]
    return {"text": pipe.get_tokenizer().decode(list(cmd["ids"]))}


def info(cmd: dict) -> dict:
    import openvino as ov
    import openvino_genai as og

    return {"openvino": ov.__version__.split("-")[0], "openvino_genai": og.__version__.split("-")[0]}


OPS = {
    "load": load,
    "generate": generate,
    "batch": batch,
    "tokenize": tokenize,
    "decode": decode,
    "info": info,
}


def main() -> int:
    return serve(OPS, skip=("Exception from", "Check '"))  # OpenVINO's own framing lines


if __name__ == "__main__":
    sys.exit(main())
