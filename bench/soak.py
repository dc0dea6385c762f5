"""Soak: 10,000 decode steps on tiny-gpt2 (in-place and ping-pong KV) and 10,000 encoder calls, through the public
runtime API; resident memory sampled after warm-up and at the end (target: growth ≤ 5 %). Not part of CI.
Writes the `soak` section of docs/benchmarks.md.

    python bench/soak.py
"""

from __future__ import annotations

import argparse
import time

from common import mark, write_section


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    import tempfile
    import warnings

    from trtpipe.export import export_bundle
    from trtpipe.runtime import Generator, load_pipeline

    warnings.simplefilter("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gpt = export_bundle("tiny-gpt2", "generate", f"{tmp}/gpt2", check=False)
        bert = export_bundle("tiny-bert", "embed", f"{tmp}/bert", check=False)
        for kv in ("inplace", "pingpong"):
            generator = Generator(gpt, kv=kv)
            per_request = 100
            requests = args.steps // per_request
            warm = max(1, requests // 10)
            started = time.perf_counter()
            for index in range(requests):
                if index == warm:
                    baseline = rss()
                list(
                    generator.stream(
                        f"Request {index} of the soak test:", max_new_tokens=per_request, ignore_eos=True
                    )
                )
            rows.append(
                (
                    f"tiny-gpt2 decode, {kv} KV",
                    f"{requests * per_request} steps ({requests} requests × {per_request})",
                    baseline,
                    rss(),
                    time.perf_counter() - started,
                )
            )
        pipe = load_pipeline(bert)
        texts = ["a short sentence", "a somewhat longer sentence with more words in it", "mid length text"]
        warm = args.calls // 10
        started = time.perf_counter()
        for index in range(args.calls):
            if index == warm:
                baseline = rss()
            pipe.embed([texts[index % 3]])
        rows.append(
            (
                "tiny-bert embed pipeline",
                f"{args.calls} calls",
                baseline,
                rss(),
                time.perf_counter() - started,
            )
        )
    lines = [
        "| workload | length | RSS after warm-up MiB | RSS at end MiB | growth | seconds | ≤ 5 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, length, before, after, seconds in rows:
        growth = (after - before) / before
        lines.append(
            f"| {name} | {length} | {before / 2**20:.1f} | {after / 2**20:.1f} | {growth:+.2%} | {seconds:.1f} | "
            f"{mark(growth <= 0.05)} |"
        )
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("soak", body)


if __name__ == "__main__":
    main()
