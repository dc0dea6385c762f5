"""CLI: `demo-models` trains the small demo models (GPT-2, BERT, ALBERT, two classifiers) on the offline docs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..console import info, out
from ._common import JsonOpt, QuietOpt, command, print_json


@command("demo-models")
def demo_models_cmd(
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="where the models go (default models/, or $TRTPIPE_MODELS)")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="train the named models again even if present")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only", help="train only these (comma-separated or repeated); a classifier brings its base"
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option("--recipe", help="full | tiny (seconds, for smoke tests)", hidden=True)
    ] = "full",
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Train the small demo models (GPT-2, BERT, ALBERT, two classifiers) on the offline Python docs."""
    from rich.table import Table

    from ..demo import summary_rows, train_demo_models

    result = train_demo_models(out_dir, force=force, only=only, recipe=recipe)
    if as_json:
        print_json(result)
        return
    table = Table(title=f"demo models in {result['out']}", show_edge=False)
    for column in ("model", "parameters", "held-out", "baseline", "train s"):
        table.add_column(column)
    for row in summary_rows(result["metrics"]):
        table.add_row(*row)
    out.print(table)
    trained = ", ".join(result["trained"]) or "nothing"
    info(
        f"trained {trained} in {result['seconds']:.0f}s; metrics in {Path(result['out']) / 'demo-metrics.json'}"
    )
    if result["trained"]:
        info("next: python cli.py export demo-gpt2 --task generate --out bundles/demo-gpt2-generate")
