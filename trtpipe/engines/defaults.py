"""What `make engines` runs: an engine per bundle and TensorRT variant, skipping what is up to date."""

from __future__ import annotations

from pathlib import Path

from ..console import info, warn
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError
from .builder import build_engine
from .plan import ENGINE_VARIANTS, BuildOptions, BuildResult


def bundles_in(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError(
            f"{out_dir} is not a directory of bundles; run `make export` (or `trtpipe export-defaults`) first"
        )
    found = sorted(p for p in out_dir.iterdir() if p.is_dir() and (p / "manifest.json").is_file())
    if not found:
        raise UserError(
            f"no bundles in {out_dir}; run `make export` (or `trtpipe export-defaults --out {out_dir}`) first"
        )
    return found


def build_defaults(out_dir: Path, flavour: str = "rtx", overwrite: bool = False) -> list[BuildResult]:
    """What `make engines` runs: an engine per bundle and TensorRT variant (fp32, and fp16 / int8-qdq where they
    exist), skipping what is up to date. A failed fp32 build fails the run; a lossy variant that this TensorRT
    cannot build is reported and skipped."""
    results: list[BuildResult] = []
    failures: list[str] = []
    for path in bundles_in(out_dir):
        bundle = Bundle.load(path)
        for variant in (v for v in ENGINE_VARIANTS if v in bundle.variants):
            try:
                result = build_engine(
                    path, BuildOptions(variant=variant, flavour=flavour, overwrite=overwrite)
                )
            except UserError as exc:
                if variant == "fp32":
                    failures.append(f"{path.name} {variant}: {exc}")
                else:
                    warn(f"{path.name} {variant}: not built: {exc}")
                continue
            status = "up to date" if result.skipped else f"built in {result.seconds:.1f}s"
            info(f"{path.name}: {result.file} {status}")
            results.append(result)
    if failures:
        raise CheckFailed("engine builds failed:\n  " + "\n  ".join(failures))
    return results
