"""The command line's entry point: usage errors become one line + exit 2, Ctrl-C exit 130; the commands themselves
live in trtpipe/commands/ (parse → call one library function → print)."""

from __future__ import annotations

import sys

from rich.markup import escape

from .commands import app
from .console import err


def main(argv: list[str] | None = None) -> None:
    """Console entry point: usage errors become one line + exit 2 (no usage box, no traceback)."""
    from typer._click import exceptions as click_exceptions
    from typer.exceptions import Abort
    from typer.main import get_command

    cmd = get_command(app)
    try:
        code = cmd.main(args=argv, prog_name="trtpipe", standalone_mode=False)
    except click_exceptions.UsageError as exc:
        where = (
            f"trtpipe {exc.ctx.info_name} --help"
            if exc.ctx is not None and exc.ctx.info_name != "trtpipe"
            else "trtpipe --help"
        )
        if exc.ctx is not None and exc.ctx.command_path:
            where = f"{exc.ctx.command_path.replace('cli.py', 'trtpipe')} --help"
        err.print(f"[bold red]error:[/] {escape(exc.format_message())} (see `{where}`)", highlight=False)
        sys.exit(2)
    except click_exceptions.ClickException as exc:
        err.print(f"[bold red]error:[/] {escape(exc.format_message())}", highlight=False)
        sys.exit(exc.exit_code)
    except BrokenPipeError:  # `trtpipe … | head`
        sys.stderr.close()
        sys.exit(0)
    except (Abort, KeyboardInterrupt):
        err.print("[red]interrupted[/]")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


__all__ = ["app", "main"]
