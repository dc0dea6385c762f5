"""Sessions run in turn in one process, with and without ONNX Runtime's spinning threads (TRTPIPE_ORT_SPIN): GPT-2
124M fp32, int8-wo and int4 generators in one process, each asked for 16 tokens of a 32-token prompt right after
the other's run ends, then alone (after a 0.2 s pause); TTFT and TPOT medians. Each setting runs in its own process
(the setting is read when a session opens). Prints; quoted in the README (`TRTPIPE_ORT_SPIN`).

    python bench/ort_spin.py          # ≈ 1 min on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore")


def measure(rounds: int = 7) -> dict:
    import numpy as np
    from common import ensure_bundle, ensure_variant

    from trtpipe.runtime import Generator

    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    gens = {
        v: Generator(path, variant=None if v == "fp32" else v, threads=2) for v in ("fp32", "int8-wo", "int4")
    }
    ids = [int(t) for t in np.random.default_rng(0).integers(100, 20000, 32)]
    out = {}
    for pause in (0.0, 0.2):
        ttft = {v: [] for v in gens}
        tpot = {v: [] for v in gens}
        for _ in range(rounds):
            for v, g in gens.items():
                time.sleep(pause)
                start = time.perf_counter()
                stamps = [time.perf_counter() for _ in g.stream([ids], 16, ignore_eos=True)]
                ttft[v].append((stamps[0] - start) * 1e3)
                tpot[v].append(float(np.median(np.diff(stamps))) * 1e3)
        out[f"pause {pause}"] = {
            v: {"ttft_ms": float(np.median(ttft[v][1:])), "tpot_ms": float(np.median(tpot[v][1:]))}
            for v in gens
        }
    return out


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(measure()))
        return 0
    results = {}
    for spin in ("", "0"):
        env = dict(os.environ, TRTPIPE_ORT_SPIN=spin)
        text = subprocess.run(
            [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True
        ).stdout
        results[spin or "default"] = json.loads(text.strip().splitlines()[-1])
    print("| TRTPIPE_ORT_SPIN | rows | fp32 TTFT / TPOT ms | int8-wo TTFT / TPOT ms | int4 TTFT / TPOT ms |")
    print("|---|---|---|---|---|")
    for spin, by_pause in results.items():
        for pause, rows in by_pause.items():
            cells = " | ".join(f"{r['ttft_ms']:.1f} / {r['tpot_ms']:.2f}" for r in rows.values())
            when = "back to back" if pause == "pause 0.0" else "after a 0.2 s pause"
            print(f"| {spin} | {when} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
