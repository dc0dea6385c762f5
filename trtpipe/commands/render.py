"""Rich terminal rendering of results: bundle inspection, task answers and parity reports."""

from __future__ import annotations

import numpy as np
from rich.markup import escape
from rich.table import Table

from ..console import out
from ._common import mib


def print_inspect(bundle, problems: dict[tuple[str, str], str], sha256: bool = False) -> None:
    """The manifest summary, I/O, variants and engines; each file's check against the manifest in "on disk"
    (`problems` from Bundle.file_problems: size always, sha256 if it was asked)."""
    checked = "[green]sha256 ok[/]" if sha256 else "[green]size ok[/]"

    def on_disk(key: tuple[str, str]) -> str:
        return f"[red]FAIL[/]: {escape(problems[key])}" if key in problems else checked

    m = bundle.manifest
    src = m.get("source", {})
    model = m.get("model", {})
    weights = "random weights (speed/parity only)" if src.get("random_weights") else "real weights"
    if src.get("random_head") and not src.get("random_weights"):
        weights += ", randomly initialised task head"
    out.print(
        f"[bold]{bundle.path}[/]  {m['family']} · {m['task']} · format {m['format_version']} · {weights}"
    )
    out.print(
        f"source: {src.get('preset') or src.get('path') or src.get('name')}  "
        f"params {model.get('parameters', 0):,} ({mib(model.get('parameter_bytes', 0))})  "
        f"layers {model.get('num_layers')} hidden {model.get('hidden_size')} heads {model.get('num_heads')}  "
        f"max length {bundle.max_length}"
    )
    if m.get("labels"):
        out.print("labels: " + ", ".join(f"{k}={v}" for k, v in m["labels"].items()))
    io = Table(title="inputs / outputs", show_edge=False)
    for col in ("", "name", "dtype", "shape"):
        io.add_column(col)
    for kind in ("inputs", "outputs"):
        for entry in m[kind]:
            io.add_row(
                kind[:-1],
                entry["name"],
                entry["dtype"],
                escape("[" + ", ".join(map(str, entry["shape"])) + "]"),
            )
    out.print(io)

    def stale(name: str) -> bool:  # a twin whose source was rebuilt after it (never used unasked)
        return bundle.stale(name) is not None

    variants = Table(title="variants", show_edge=False)
    for col in ("variant", "file", "size", "made from", "parity", "gate", "on disk"):
        variants.add_column(col)
    for name, v in m["variants"].items():
        parity = ", ".join(f"{b}: {r.get('verdict')}" for b, r in (v.get("parity") or {}).items()) or "-"
        gate = v.get("gate") or {}
        gate_text = gate.get("verdict", "-") + (" (forced)" if gate.get("forced") else "") if gate else "-"
        variants.add_row(
            name,
            v["file"],
            mib(v.get("bytes", 0)),
            str(v.get("made_from") or "-") + (" [yellow](stale)[/]" if stale(name) else ""),
            parity,
            gate_text,
            on_disk(("variant", name)),
        )
    for name, r in (m.get("refused") or {}).items():
        failures = [
            f"{metric} {r['gate']['metrics'].get(metric, float('nan')):.4g} (needs {op} {bound:g})"
            for metric, (op, bound) in r["gate"].get("thresholds", {}).items()
        ]
        variants.add_row(
            name, "[dim]not written[/]", "-", "fp32", "-", "[red]refused[/]: " + "; ".join(failures), "-"
        )
    out.print(variants)
    if m.get("engines"):
        engines = Table(title="engines", show_edge=False)
        for col in ("file", "flavour", "target", "precision", "TensorRT", "profiles", "on disk"):
            engines.add_column(col)
        for file, e in m["engines"].items():
            engines.add_row(
                file,
                e.get("flavour", ""),
                str(e.get("target", "")),
                e.get("variant", ""),
                e.get("tensorrt_version", ""),
                str(len(e.get("profiles", []))),
                on_disk(("engine", file)),
            )
        out.print(engines)
    for (kind, name), problem in problems.items():
        if kind == "tokenizer":
            out.print(f"tokenizer {escape(name)}: [red]FAIL[/]: {escape(problem)}")


def print_task_result(task: str, items: list[str], result, question: str | None = None) -> None:
    if task == "qa":
        out.print(f"[bold]Q:[/] {escape(question or '')}")
        out.print(
            f"[bold]A:[/] {escape(repr(result['answer']))}  score {result['score']:.3f}  chars {result['start']}–{result['end']}"
        )
        return
    if task == "embed":
        arr = np.asarray(result)
        table = Table(show_edge=False)
        for col in ("text", "dims", "norm", "first values"):
            table.add_column(col)
        for text, vec in zip(items, arr):
            table.add_row(
                _short(text),
                str(vec.shape[0]),
                f"{np.linalg.norm(vec):.4f}",
                " ".join(f"{x:+.3f}" for x in vec[:6]) + " …",
            )
        out.print(table)
        if len(arr) > 1:
            sims = arr @ arr.T
            out.print(
                "cosine similarity of text 1 to the others: " + ", ".join(f"{s:.3f}" for s in sims[0, 1:])
            )
        return
    for text, res in zip(items, result):
        out.print(f"[bold]{_short(text, 90)}[/]")
        if task == "classify":
            out.print(
                "  " + ", ".join(f"{escape(label)}: {score:.3f}" for label, score in res["scores"].items())
            )
        elif task == "ner":
            if not res:
                out.print("  (no entities)")
            for ent in res:
                out.print(
                    f"  {escape(ent['entity']):<8} {escape(repr(ent['word']))} chars {ent['start']}–{ent['end']} score {ent['score']:.3f}"
                )
        elif task == "fill-mask":
            groups = res if res and isinstance(res[0], list) else [res]
            for index, fills in enumerate(groups):
                prefix = f"  mask {index + 1}: " if len(groups) > 1 else "  "
                out.print(
                    prefix + ", ".join(f"{escape(repr(f['token_str']))} {f['score']:.3f}" for f in fills)
                )


def print_parity(report) -> None:
    table = Table(
        title=f"parity vs PyTorch · {report.backend} · {report.variant} · atol {report.atol:g} rtol {report.rtol:g}",
        show_edge=False,
    )
    for col in (
        "output",
        "max abs",
        "max rel",
        "cosine",
        "NaN/Inf",
        "mismatches",
        "first bad index",
        "verdict",
    ):
        table.add_column(col)
    for s in report.outputs.values():
        table.add_row(
            s.name,
            f"{s.max_abs:.2e}",
            f"{s.max_rel:.2e}",
            f"{s.cosine:.6f}",
            f"{s.nan}/{s.inf}",
            f"{s.mismatches}/{s.elements}",
            str(s.first_mismatch or "-"),
            "[green]pass[/]" if s.passed else "[red]FAIL[/]",
        )
    out.print(table)
    for name, level in report.levels.items():
        mark = "[green]pass[/]" if level.get("passed", True) else "[red]FAIL[/]"
        out.print(f"{name}: {level.get('summary', '')} {mark}")
    verdict = "[bold green]PASS[/]" if report.passed else "[bold red]FAIL[/]"
    out.print(f"{verdict} in {report.seconds:.1f}s over {report.samples} samples")


def _short(text: str, width: int = 50) -> str:
    return escape(text if len(text) <= width else text[: width - 1] + "…")
