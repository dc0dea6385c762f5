"""Benchmark reports: a rich table in the terminal, schema-versioned JSON, CSV, Markdown and PNG plots."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, is_dataclass
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from ..console import out
from ..runtime.errors import UserError
from ..runtime.store import temp_name

SCHEMA = "trtpipe.benchmark/1"


def _plain(value):
    if is_dataclass(value):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def check_out_dir(path: Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(
            f"cannot create the output directory {path}: {exc.strerror}; choose another --out"
        ) from None
    if not os.access(path, os.W_OK):
        raise UserError(f"the output directory {path} is not writable; choose another --out")
    return path


def write_text(path: Path, text: str) -> None:
    tmp = temp_name(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    tmp = temp_name(path)
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_tables(stem: Path, report: dict, markdown_text: str, header: list[str], rows: list[list]) -> None:
    """stem.json (the whole report), stem.md and stem.csv (one line per row), each written atomically."""
    write_text(stem.with_suffix(".json"), json.dumps(report, indent=2, default=str) + "\n")
    write_text(stem.with_suffix(".md"), markdown_text)
    write_csv(stem.with_suffix(".csv"), header, rows)


NOT_MEASURED = "not measured"


def fmt(value, digits: int = 2) -> str:
    """A value for a cell where None means the column does not apply ("–")."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def figure(value, digits: int = 2, why: str | None = None) -> str:
    """A measured figure; None means it was not measured, and says so (with the reason when known) — never a
    stand-in number."""
    if value is None:
        return NOT_MEASURED + (f" ({why})" if why else "")
    return fmt(value, digits)


def ratio_text(top, bottom, digits: int = 2, why: str | None = None) -> str:
    """top / bottom of two measured figures, or "not measured" when either is missing."""
    if top is None or not bottom:
        return figure(None, why=why)
    return f"{top / bottom:.{digits}f}"


def flat_rows(report: dict) -> list[dict]:
    rows = []
    for row in report.get("encoder", []):
        lat = row.get("latency") or {}
        rows.append(
            {
                "kind": "encoder",
                "label": row["label"],
                "backend": row["backend"],
                "variant": row["variant"],
                "batch": row["batch"],
                "seq": row["seq"],
                "p50_ms": lat.get("p50_ms"),
                "p90_ms": lat.get("p90_ms"),
                "p99_ms": lat.get("p99_ms"),
                "mean_ms": lat.get("mean_ms"),
                "sd_ms": lat.get("sd_ms"),
                "cov": lat.get("cov"),
                "items_per_s": row.get("items_per_s"),
                "peak_rss_mib": _mib(row.get("peak_rss")),
                "peak_rss_note": row.get("peak_rss_note"),
                "error": row.get("error"),
            }
        )
    for row in report.get("decoder", []):
        ttft, tpot = row.get("ttft") or {}, row.get("tpot") or {}
        rows.append(
            {
                "kind": "decoder",
                "label": row["label"],
                "prompt_len": row["prompt_len"],
                "new_tokens": row["new_tokens"],
                "ttft_ms": ttft.get("p50_ms"),
                "tpot_p50_ms": tpot.get("p50_ms"),
                "tpot_p99_ms": tpot.get("p99_ms"),
                "tpot_p99_round_median_ms": (row.get("tpot_rounds") or {}).get("p99_ms_round_median"),
                "tpot_cov": tpot.get("cov"),
                "tokens_per_s": row.get("tokens_per_s"),
                "peak_rss_mib": _mib(row.get("peak_rss")),
                "peak_rss_note": row.get("peak_rss_note"),
                "error": row.get("error"),
            }
        )
    return rows


def _mib(value):
    return None if value is None else round(value / 2**20, 1)


def markdown(report: dict) -> str:
    lines = []
    if report.get("encoder"):
        lines += [
            "| row | batch × seq | p50 ms | p90 ms | p99 ms | mean ± sd ms | items/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in flat_rows({"encoder": report["encoder"]}):
            if r["error"]:
                lines.append(f"| {r['label']} | {r['batch']}×{r['seq']} | skipped: {r['error']} ||||||")
                continue
            noisy = " ⚠" if r["cov"] is not None and r["cov"] > 0.1 else ""
            lines.append(
                f"| {r['label']} | {r['batch']}×{r['seq']} | {figure(r['p50_ms'])} | {figure(r['p90_ms'])} | "
                f"{figure(r['p99_ms'])} | {figure(r['mean_ms'])} ± {figure(r['sd_ms'], why='one sample')}{noisy} | "
                f"{figure(r['items_per_s'], 1)} | {figure(r['peak_rss_mib'], 0, r['peak_rss_note'])} |"
            )
    if report.get("decoder"):
        if lines:
            lines.append("")
        lines += [
            "| row | prompt | TTFT ms | TPOT p50 ms | TPOT p99 ms (median of per-round p99s) | p99/p50 | "
            "TPOT p99 ms (all steps pooled) | tokens/s | peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in flat_rows({"decoder": report["decoder"]}):
            if r["error"]:
                lines.append(f"| {r['label']} | {r['prompt_len']} | skipped: {r['error']} |||||||")
                continue
            lines.append(
                f"| {r['label']} | {r['prompt_len']} | {figure(r['ttft_ms'], 1)} | {figure(r['tpot_p50_ms'])} | "
                f"{figure(r['tpot_p99_round_median_ms'])} | "
                f"{ratio_text(r['tpot_p99_round_median_ms'], r['tpot_p50_ms'])} | {figure(r['tpot_p99_ms'])} | "
                f"{figure(r['tokens_per_s'], 1)} | {figure(r['peak_rss_mib'], 0, r['peak_rss_note'])} |"
            )
    for note in report.get("notes", []):
        lines.append(f"\n- note: {note}")
    for skipped in report.get("skipped", []):
        lines.append(f"\n- skipped: {skipped}")
    return "\n".join(lines) + "\n"


def print_table(report: dict) -> None:
    rows = flat_rows(report)
    if not rows:
        return
    table = Table(title=f"benchmark · {report.get('bundle', '')}", show_edge=False)
    keys = [k for k in rows[0] if k not in ("kind", "error", "peak_rss_note")]
    for key in keys:
        table.add_column(key)
    for row in rows:
        if row.get("error"):
            skipped = f"skipped: {row['error']}"[:40]
            table.add_row(escape(row["label"]), *(["–"] * (len(keys) - 2)), escape(skipped))
            continue
        cells = []
        for key in keys:
            value = row.get(key)
            if key == "peak_rss_mib":
                cells.append(figure(value, 0, row.get("peak_rss_note")))
            else:
                cells.append(figure(value, 1 if isinstance(value, float) and value > 100 else 2))
        table.add_row(*(escape(c) for c in cells))  # labels such as "… [ov]" are text, not rich markup
    out.print(table)


def plots(report: dict, directory: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    encoder = [r for r in report.get("encoder", []) if r.get("latency")]
    if encoder:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(encoder) + 1.5))
        labels = [f"{r['label']} b{r['batch']}×{r['seq']}" for r in encoder]
        y = range(len(encoder))
        for key, color in (("p99_ms", "#d62728"), ("p90_ms", "#ff7f0e"), ("p50_ms", "#1f77b4")):
            ax.barh(list(y), [r["latency"][key] for r in encoder], color=color, label=key.replace("_ms", ""))
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.set_xlabel("latency (ms)")
        ax.legend()
        ax.set_title(f"latency percentiles · {report.get('bundle', '')}")
        fig.tight_layout()
        path = directory / f"{stem}-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    decoder = [r for r in report.get("decoder", []) if r.get("tpot_by_past")]
    if decoder:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for r in decoder:
            xs, ys = zip(*r["tpot_by_past"])
            ax.plot(xs, ys, label=f"{r['label']} (prompt {r['prompt_len']})", linewidth=1)
        for r in report.get("floors", []):
            ax.axhline(r["tpot_floor_ms"], linestyle=":", color="gray")
        values = [y for r in decoder for _, y in r["tpot_by_past"] if y > 0]
        if values and max(values) / min(values) > 20:
            ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("TPOT (ms)")
        ax.set_title("time per output token vs context length")
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = directory / f"{stem}-tpot.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    steps = step_series_plot(report.get("decoder", []), directory / f"{stem}-steps.png")
    return written + ([steps] if steps else [])


def step_series_plot(decoder: list[dict], path: Path) -> Path | None:
    """Every decode step's time, round by round (one panel per row and prompt length, one line per round): a stall
    of ours recurs at the same step in every round, the machine's lands anywhere in one round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in decoder if r.get("steps_ms")]
    if not rows:
        return None
    labels = list(dict.fromkeys(r["label"] for r in rows))
    prompts = sorted({r["prompt_len"] for r in rows})
    fig, axes = plt.subplots(
        len(labels), len(prompts), figsize=(5 * len(prompts), 2.2 * len(labels) + 0.6), squeeze=False
    )
    colours = plt.get_cmap("tab10")
    for ax in axes.flat:
        ax.set_visible(False)
    for r in rows:
        ax = axes[labels.index(r["label"])][prompts.index(r["prompt_len"])]
        ax.set_visible(True)
        for index, series in enumerate(r["steps_ms"]):
            ax.plot(
                range(len(series)),
                series,
                linewidth=0.8,
                color=colours(index % 10),
                label=f"round {index + 1}",
            )
        p50 = (r.get("tpot") or {}).get("p50_ms")
        p99 = (r.get("tpot_rounds") or {}).get("p99_ms_round_median")
        if p50:
            ax.axhline(p50, color="gray", linestyle=":", linewidth=0.8, label="p50")
        if p99:
            ax.axhline(p99, color="black", linestyle="--", linewidth=0.8, label="median of per-round p99")
        ax.set_title(f"{r['label']} · prompt {r['prompt_len']}", fontsize=8)
        ax.set_xlabel("decode step", fontsize=7)
        ax.set_ylabel("ms", fontsize=7)
        ax.tick_params(labelsize=7)
    first = next(ax for ax in axes.flat if ax.get_visible())
    first.legend(fontsize=6, ncol=2)
    fig.suptitle("time per output token, step by step, every round", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: dict, directory: Path, stem: str = "benchmark") -> list[Path]:
    """JSON + CSV + Markdown + PNG, each written atomically."""
    directory = check_out_dir(directory)
    report = {"schema": SCHEMA, **_plain(report)}
    paths = [directory / f"{stem}.json", directory / f"{stem}.csv", directory / f"{stem}.md"]
    write_text(paths[0], json.dumps(report, indent=2, default=str) + "\n")
    rows = flat_rows(report)
    if rows:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        write_csv(paths[1], keys, [[row.get(k, "") for k in keys] for row in rows])
    else:
        write_text(paths[1], "")
    write_text(paths[2], markdown(report))
    return paths + plots(report, directory, stem)
