"""Peak memory per benchmark row, measured honestly: each row is built and run in a fresh Python process and that
process reports its own peak resident set size (ru_maxrss), so rows never inherit each other's allocations."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

NOT_ASKED = "--no-memory"


def measure(spec: dict, timeout: int = 600) -> int | None:
    """Peak RSS in bytes of a child process that builds and runs the row described by `spec` once."""
    return measure_or_reason(spec, timeout)[0]


def measure_or_reason(spec: dict, timeout: int = 600) -> tuple[int | None, str | None]:
    """(peak RSS in bytes, None), or (None, why it could not be measured)."""
    try:
        result = subprocess.run(
            [sys.executable, "-W", "ignore", "-m", "trtpipe.benchmark.memory", json.dumps(spec)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return None, f"the measuring process ran past {timeout} s"
    for line in reversed(result.stdout.strip().splitlines()):
        if line.startswith("{"):
            value = json.loads(line).get("peak_rss")
            return (value, None) if value else (None, "the measuring process reported no peak RSS")
    last = (result.stderr.strip().splitlines() or [f"exit code {result.returncode}"])[-1]
    return None, f"the measuring process failed: {last[:120]}"


def _run(spec: dict) -> None:
    from pathlib import Path

    from ..runtime.bundle import Bundle

    bundle = Bundle.load(Path(spec["bundle"]))
    threads = spec.get("threads")
    if spec["kind"] == "decode":
        from .decode import OursDecoder, prompt_ids
        from .peers import GenaiDecoder, OptimumDecoder, TorchDecoder

        row = spec["row"]
        if row == "ours":
            runner = OursDecoder(
                bundle,
                spec.get("variant"),
                threads,
                backend=spec.get("backend", "ort-cpu"),
                prefill_backend=spec.get("prefill_backend"),
                kv_cache=spec.get("kv_cache") or "fp32",
            )
        elif row == "torch":
            runner = TorchDecoder(bundle, threads)
        elif row == "optimum":
            runner = OptimumDecoder(bundle, threads)
        else:
            runner = GenaiDecoder(bundle, threads, spec.get("file", "model.onnx"))
        runner.run(prompt_ids(bundle, spec["prompt_len"]), spec["new_tokens"])
    else:
        from .encode import build_row

        row = build_row(bundle, spec["row"], spec.get("variant"), spec.get("backend", "ort-cpu"), threads)
        feeds = spec.get("shape", [1, 128])
        from .encode import fixed_feeds

        for feed in fixed_feeds(bundle, feeds[0], feeds[1], count=2):
            row.run(feed)
    print(json.dumps({"peak_rss": peak_rss_self()}))


def peak_rss_self() -> int:
    """This process's peak RSS. Linux: VmHWM of the current address space — ru_maxrss would include the parent's
    high-water mark, which execve() carries over into the child's accounting."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":
    _run(json.loads(sys.argv[1]))
