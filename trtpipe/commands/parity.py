"""CLI: `parity` compares a backend with PyTorch on real text and stores the verdict (exit 1 on failure)."""

from __future__ import annotations

from typing import Annotated

import typer

from ..runtime.errors import UserError
from ._common import BackendOpt, BundleArg, JsonOpt, QuietOpt, VariantOpt, command, print_json


@command("parity")
def parity_cmd(
    bundle: BundleArg,
    backend: BackendOpt = "ort-cpu",
    variant: VariantOpt = None,
    samples: Annotated[int, typer.Option("--samples", help="real sentences to compare on")] = 16,
    atol: Annotated[float | None, typer.Option("--atol", help="override the absolute tolerance")] = None,
    rtol: Annotated[float | None, typer.Option("--rtol", help="override the relative tolerance")] = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
):
    """Compare a backend against PyTorch on real text; store the verdict in the manifest; exit 1 on failure."""
    from ..parity import check_parity, raise_if_failed
    from .render import print_parity

    if samples < 1:
        raise UserError(f"--samples must be ≥ 1 (got {samples})")
    report = check_parity(bundle, backend=backend, variant=variant, samples=samples, atol=atol, rtol=rtol)
    if as_json:
        print_json(report.to_dict())
    else:
        print_parity(report)
    raise_if_failed(report, str(bundle))
