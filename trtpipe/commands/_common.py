"""What every command shares: the typer app, the `command` decorator (UserError → one red line and exit 2,
CheckFailed → exit 1), the common options, and JSON / text-file / list helpers."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..console import QUIET, err
from ..runtime.errors import CheckFailed, UserError, cli_flag

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="trtpipe: export → optimize → build → run → check, for BERT, ALBERT and GPT-2.",
)

BundleArg = Annotated[
    Path, typer.Argument(help="bundle directory (written by `trtpipe export`)", show_default=False)
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
BackendOpt = Annotated[str, typer.Option("--backend", help="ort-cpu | ort-cuda | ort-trt | trt | ov")]
VariantOpt = Annotated[
    str | None,
    typer.Option("--variant", help="fp32 (default), fused, fp16, int8, int8-qdq, int8-nncf, int8-wo, int4"),
]
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", help="intra-op threads (default: ONNX Runtime's choice)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="only results, no progress or notes")]


def command(*args, **kwargs):
    """app.command that turns UserError into one red line + exit 2 (in the CLI's words: the arguments it names
    are spelled as flags, --max-new-tokens) and CheckFailed into exit 1."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            QUIET["on"] = bool(kw.get("quiet")) or bool(os.environ.get("TRTPIPE_QUIET"))
            try:
                return fn(*a, **kw)
            except UserError as exc:
                err.print(f"[bold red]error:[/] {escape(exc.render(cli_flag))}", highlight=False)
                raise typer.Exit(2) from None
            except CheckFailed as exc:
                err.print(f"[bold red]check failed:[/] {escape(str(exc))}", highlight=False)
                raise typer.Exit(1) from None
            except KeyboardInterrupt:
                err.print("[red]interrupted[/]")
                raise typer.Exit(130) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate


def print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(value):
    import numpy as np

    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(type(value).__name__)


def read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise UserError(f"input file {path} does not exist")
    if not path.is_file():
        raise UserError(f"input {path} is not a file")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            f"convert it, e.g. `iconv -f latin1 -t utf-8 {path}`"
        ) from None
    return [line for line in text.splitlines() if line.strip()]


def read_text(path: Path) -> str:
    return "\n".join(read_lines(path))


def parse_ints(value: str, option: str) -> list[int]:
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{option} takes comma-separated integers, e.g. 1,8 (got {value!r})") from None
    if not items or any(v < 1 for v in items):
        raise UserError(f"{option} values must be ≥ 1 (got {value!r})")
    return items


def parse_names(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def mib(n: int | float) -> str:
    return f"{n / 2**20:,.1f} MiB"
