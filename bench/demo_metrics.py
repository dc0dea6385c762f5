"""Demo-model metrics recorded by `make demo-models` (models/demo-metrics.json): held-out perplexity of demo-gpt2,
MLM top-1 of demo-bert vs demo-albert with their parameter counts, and classification accuracy against chance.
Writes the `demo` section of docs/benchmarks.md.

    python bench/demo_metrics.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, write_section


def last_run_line(run: dict, models: dict) -> str:
    """The last `make demo-models` run, from what it recorded; a count, a time or a precision it did not record
    is not measured, never 0 or a guess."""
    trained = run.get("trained")
    count = f"{len(trained)} model(s)" if isinstance(trained, list) else "models (count not recorded)"
    seconds = run.get("seconds")
    took = f"in {seconds:.0f} s of wall time" if seconds is not None else "(wall time not measured)"
    precisions = sorted(
        {m.get("train", {}).get("precision", "precision not recorded") for m in models.values()}
    )
    return f"Last `make demo-models` run: {count} trained {took} (2 CPU cores; {', '.join(precisions)})."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=str(ROOT / "models"))
    parser.add_argument("--no-write", action="store_true")
    args, _ = parser.parse_known_args()
    models_dir = Path(args.models)
    path = (models_dir if models_dir.is_absolute() else ROOT / models_dir) / "demo-metrics.json"
    if not path.exists():
        print(f"{path} not found: run `make demo-models` first")
        return
    data = json.loads(path.read_text())
    models = data["models"]
    lines = ["| model | parameters | held-out metric | reference | train time |", "|---|---|---|---|---|"]
    if "demo-gpt2" in models:
        m = models["demo-gpt2"]
        lines.append(
            f"| demo-gpt2 (causal LM) | {m['parameters'] / 1e6:.2f} M | perplexity {m['metrics']['perplexity']:.1f} | "
            f"unigram perplexity {m['metrics']['unigram_perplexity']:.1f} | {m['train']['seconds']:.0f} s |"
        )
    for name in ("demo-bert", "demo-albert"):
        if name in models:
            m = models[name]
            lines.append(
                f"| {name} (MLM) | {m['parameters'] / 1e6:.2f} M | masked-token top-1 {m['metrics']['top1']:.3f} "
                f"(top-5 {m['metrics']['top5']:.3f}) | most-frequent-token {m['metrics']['most_frequent_token_top1']:.3f} | "
                f"{m['train']['seconds']:.0f} s |"
            )
    for name in ("demo-bert-classify", "demo-albert-classify"):
        if name in models:
            m = models[name]
            lines.append(
                f"| {name} ({len(m['metrics']['per_class'])} classes) | {m['parameters'] / 1e6:.2f} M | "
                f"accuracy {m['metrics']['accuracy']:.3f} on {m['metrics']['examples']} held-out docstrings | "
                f"chance {m['metrics']['chance']:.3f} | {m['train']['seconds']:.0f} s |"
            )
    versus = data.get("albert_vs_bert")
    if versus:
        lines += [
            "",
            f"ALBERT vs BERT (same hidden size, same data and steps): ALBERT has {versus['parameter_ratio']:.1%} of "
            f"BERT's parameters and reaches {versus['mlm_top1_ratio']:.1%} of its masked-token top-1 accuracy.",
        ]
    run = data.get("last_run", {})
    if run:
        lines += ["", last_run_line(run, models)]
    sample = models.get("demo-gpt2", {}).get("sample")
    if sample:
        lines += ["", f'Greedy sample of demo-gpt2 from "{sample["prompt"]}": `{sample["greedy"][:200]!r}`']
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("demo", body, command="python bench/demo_metrics.py")


if __name__ == "__main__":
    main()
