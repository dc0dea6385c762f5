"""`trtpipe compare`: BERT vs ALBERT vs GPT-2 side by side, measured — parameters, unique weight bytes, bundle size per
variant, latency of a forward pass over the same number of tokens, GPT-2's time per token, and peak memory."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..console import info, out, progress
from ..models import MODELS
from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from .env import environment
from .stats import summarize


class _Forward:
    """One forward pass over `seq` tokens of real text: an encoder batch of 1, or a GPT-2 prefill."""

    def __init__(self, bundle: Bundle, seq: int, threads: int | None):
        from ..runtime.session import open_session

        self.bundle = bundle
        self.session = open_session(bundle, threads=threads)
        if bundle.is_decoder:
            from .decode import prompt_ids

            m = bundle.model
            ids = np.asarray([prompt_ids(bundle, seq)], np.int64)
            self.feed = {
                "input_ids": ids,
                "attention_mask": np.ones_like(ids),
                "position_ids": np.arange(seq, dtype=np.int64)[None],
            }
            for layer in range(m["num_layers"]):
                for kind in ("key", "value"):
                    self.feed[f"past_key_values.{layer}.{kind}"] = np.zeros(
                        (1, m["num_heads"], 0, m["head_dim"]), np.float32
                    )
        else:
            from .encode import fixed_feeds

            self.feed = fixed_feeds(bundle, 1, seq, count=1)[0]

    def run(self):
        self.session.run(self.feed)


TPOT_STEPS = 16  # decode steps timed for a decoder's TPOT


def _tpot(bundle: Bundle, seq: int, threads: int | None, steps: int = TPOT_STEPS) -> dict:
    from .decode import OursDecoder, prompt_ids

    runner = OursDecoder(bundle, None, threads)
    timed = runner.run(prompt_ids(bundle, seq), steps + 1)
    return summarize(timed.steps)


def compare(
    bundle_paths: list[Path],
    threads: int | None = 2,
    seq: int | None = None,
    memory: bool = True,
    out_dir: Path | None = None,
    rounds: int = 5,
    iters: int = 3,
) -> dict:
    if len(bundle_paths) < 2:
        raise UserError(
            "compare needs at least two bundles, e.g. bundles/bert-base-classify bundles/albert-base-classify"
        )
    bundles = [Bundle.load(p) for p in bundle_paths]
    from .shapes import compare_seq

    seq, notes = compare_seq(bundles, seq, TPOT_STEPS + 1)
    for note in notes:
        info(f"note: {note}")
    forwards = [_Forward(b, seq, threads) for b in bundles]
    samples: dict[int, list[float]] = {i: [] for i in range(len(bundles))}
    with progress() as bar:
        task = bar.add_task("compare", total=rounds + 1)
        for f in forwards:
            f.run()
        bar.advance(task)
        for _ in range(rounds):  # interleaved: each round runs every model
            for index, f in enumerate(forwards):
                for _ in range(iters):
                    started = time.perf_counter()
                    f.run()
                    samples[index].append(time.perf_counter() - started)
            bar.advance(task)
    rows = []
    for index, bundle in enumerate(bundles):
        m = bundle.model
        fp32 = bundle.variants["fp32"]
        row = {
            "bundle": str(bundle.path),
            "name": bundle.name,
            "family": bundle.family,
            "task": bundle.task,
            "random_weights": bundle.random_weights,
            "hidden_size": m.get("hidden_size"),
            "layers": m.get("num_layers"),
            "parameters": m.get("parameters"),
            "unique_weight_bytes": m.get("parameter_bytes"),
            "onnx_bytes": fp32["bytes"],
            "onnx_over_params": (fp32["bytes"] / m["parameter_bytes"] if m.get("parameter_bytes") else None),
            "variant_bytes": {name: v.get("bytes") for name, v in bundle.variants.items()},
            "bundle_bytes": sum(p.stat().st_size for p in bundle.path.rglob("*") if p.is_file()),
            "forward": summarize(samples[index]),
            "tpot": None,
            "peak_rss": None,
            "peak_rss_note": None,
        }
        if bundle.is_decoder:
            row["tpot"] = _tpot(bundle, seq, threads)
        if not memory:
            from .memory import NOT_ASKED

            row["peak_rss_note"] = NOT_ASKED
        else:
            from .memory import measure_or_reason

            spec = (
                {"kind": "decode", "row": "ours", "prompt_len": seq, "new_tokens": 4}
                if bundle.is_decoder
                else {"kind": "encode", "row": "ours", "shape": [1, seq]}
            )
            row["peak_rss"], row["peak_rss_note"] = measure_or_reason(
                {**spec, "bundle": str(bundle.path), "threads": threads}
            )
        rows.append(row)
    report = {
        "schema": "trtpipe.compare/1",
        "seq": seq,
        "notes": notes,
        "threads": threads,
        "env": environment(threads),
        "rows": rows,
        "findings": findings(rows),
    }
    print_compare(report)
    if out_dir is not None:
        write_compare(report, Path(out_dir))
    return report


def findings(rows: list[dict]) -> list[str]:
    """Plain sentences computed from the numbers (never assumed): a model whose layers share one set of weights
    (ALBERT) against an unshared encoder of the same width (BERT), and a decoder's prompt vs per-token cost."""
    notes = []
    specs = {r["family"]: MODELS[r["family"]] for r in rows}
    encoders = [r for r in rows if specs[r["family"]].kind == "encoder"]
    for shared in (r for r in encoders if specs[r["family"]].shared_layers):
        plain = next(
            (
                r
                for r in encoders
                if not specs[r["family"]].shared_layers and r["hidden_size"] == shared["hidden_size"]
            ),
            None,
        )
        needed = ("unique_weight_bytes", "parameters")
        if plain is None or not all(shared.get(k) and plain.get(k) for k in needed):
            continue  # no sentence from a figure that is not there
        name, other = specs[shared["family"]].display, specs[plain["family"]].display
        size = shared["unique_weight_bytes"] / plain["unique_weight_bytes"]
        speed = shared["forward"]["p50_ms"] / plain["forward"]["p50_ms"]
        notes.append(
            f"{name} stores {size:.1%} of {other}'s weight bytes ({shared['parameters'] / 1e6:.1f} M vs "
            f"{plain['parameters'] / 1e6:.1f} M parameters) and takes {speed:.2f}× {other}'s time per forward pass: "
            "shared layers save memory and disk, not compute (every layer still runs)."
        )
    for row in rows:
        if specs[row["family"]].kind == "decoder" and row.get("tpot") and row["tpot"].get("p50_ms"):
            notes.append(
                f"{specs[row['family']].display} processes the prompt in {row['forward']['p50_ms']:.1f} ms but then "
                f"needs {row['tpot']['p50_ms']:.1f} ms per generated token: decoding re-reads every weight per token."
            )
    return notes


def _scaled(value, unit: float) -> float | None:
    return None if value is None else value / unit


def compare_markdown(report: dict) -> str:
    from .report import figure

    lines = [
        f"| model | family | params | unique weights MiB | model.onnx MiB | onnx/params | forward {report['seq']} tokens p50 ms | "
        "GPT-2 TPOT p50 ms | peak RSS MiB | variants (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        variants = ", ".join(f"{k} {v / 2**20:.0f}" for k, v in r["variant_bytes"].items() if v)
        tpot = figure((r.get("tpot") or {}).get("p50_ms"), 1) if r.get("tpot") is not None else "–"
        lines.append(
            f"| {r['name']}{' (random)' if r['random_weights'] else ''} | {r['family']} | "
            f"{figure(_scaled(r['parameters'], 1e6), 1, 'not in the manifest')} M | "
            f"{figure(_scaled(r['unique_weight_bytes'], 2**20), 1, 'not in the manifest')} | "
            f"{figure(_scaled(r['onnx_bytes'], 2**20), 1)} | {figure(r['onnx_over_params'], 3)} | "
            f"{figure(r['forward'].get('p50_ms'), 1)} | {tpot} | "
            f"{figure(_scaled(r.get('peak_rss'), 2**20), 0, r.get('peak_rss_note'))} | {variants} |"
        )
    lines.append("")
    lines += [f"- {note}" for note in report["findings"]]
    return "\n".join(lines) + "\n"


def print_compare(report: dict) -> None:
    from rich.markdown import Markdown

    out.print(Markdown(compare_markdown(report)))


def write_compare(report: dict, directory: Path) -> None:
    from .report import check_out_dir, write_tables

    directory = check_out_dir(directory)
    stem = directory / "compare"
    header = [
        "name",
        "family",
        "parameters",
        "unique_weight_bytes",
        "onnx_bytes",
        "forward_p50_ms",
        "tpot_p50_ms",
        "peak_rss",
    ]
    rows = [
        [
            r["name"],
            r["family"],
            r["parameters"],
            r["unique_weight_bytes"],
            r["onnx_bytes"],
            r["forward"]["p50_ms"],
            (r.get("tpot") or {}).get("p50_ms"),
            r.get("peak_rss"),
        ]
        for r in report["rows"]
    ]
    write_tables(stem, report, compare_markdown(report), header, rows)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    names = [r["name"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    panels = [
        ("unique weights (MiB)", [r["unique_weight_bytes"] / 2**20 for r in rows]),
        (f"forward, {report['seq']} tokens (ms, p50)", [r["forward"]["p50_ms"] for r in rows]),
        ("peak RSS (MiB)", [_scaled(r.get("peak_rss"), 2**20) for r in rows]),
    ]
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for ax, (title, values) in zip(axes, panels):
        # a figure that was not measured gets no bar (a 0 would read as a measurement) and says so
        for index, (name, value) in enumerate(zip(names, values)):
            if value is None:
                ax.bar(name, 0, color="none")
                ax.annotate("not measured", (index, 0), ha="center", va="bottom", fontsize=7, rotation=90)
            else:
                ax.bar(name, value, color=colours[index % len(colours)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7, rotation=15)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    info(f"reports: {stem}.json, .csv, .md, .png")
