"""BERT vs ALBERT vs GPT-2 at the same hidden size (768; random weights) and the trained demo trio: parameters,
unique weight bytes, bundle sizes, forward latency over the same tokens, GPT-2's TPOT, peak memory.
Writes the `compare` section of docs/benchmarks.md.

    python bench/compare.py
"""

from __future__ import annotations

import argparse
import shutil

from common import REPORTS, ROOT, ensure_bundle, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    from trtpipe.benchmark.compare import compare, compare_markdown

    lines = []
    trios = [
        (
            "published architectures, hidden 768, random weights",
            [("bert-base", "classify"), ("albert-base", "classify"), ("gpt2", "generate")],
        )
    ]
    if all(
        (ROOT / "models" / name / "config.json").exists()
        for name in ("demo-bert", "demo-albert", "demo-gpt2")
    ):
        trios.append(
            (
                "demo models trained in-project (real weights, same hidden size)",
                [("demo-bert", "fill-mask"), ("demo-albert", "fill-mask"), ("demo-gpt2", "generate")],
            )
        )
    for title, members in trios:
        paths = [ensure_bundle(preset, task) for preset, task in members]
        report = compare(paths, threads=args.threads, seq=args.seq, out_dir=REPORTS)
        lines += [
            f"**{title}** — forward pass over {args.seq} tokens (encoders: batch 1; GPT-2: a prefill), "
            f"{args.threads} threads:",
            "",
            compare_markdown(report),
        ]
        image = ROOT / "docs" / "img" / f"compare-{members[0][0]}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPORTS / "compare.png", image)
        lines += [f"![compare](img/{image.name})", ""]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("compare", body)


if __name__ == "__main__":
    main()
