"""The command line, one module per stage: each adds its commands to the one typer `app` (see _common.py).
Imported in pipeline order, which is the order `trtpipe --help` lists them."""

# isort: off
from . import export, run, parity, optimize, benchmark, generate, demo, build, doctor, serving, deploy  # noqa: F401
from ._common import app

# isort: on

__all__ = ["app"]
