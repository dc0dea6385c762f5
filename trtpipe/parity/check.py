"""`trtpipe parity`: rebuild the PyTorch reference from the manifest, run every level that applies to the bundle,
and store the verdict in the manifest (right after export, or later on any backend and variant)."""

from __future__ import annotations

from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.store import bundle_transaction
from .compare import ParityReport
from .decoder import decoder_levels
from .tensors import run_tensor_parity
from .torch_ref import TorchSession


def check_parity_source(source, bundle_dir: Path, manifest: dict) -> ParityReport:
    """Parity right after export (the source model is still in memory); stores the verdict in `manifest`."""
    from ..runtime.ort import OrtSession

    bundle = Bundle(Path(bundle_dir), manifest)
    reference = TorchSession(source)
    session = OrtSession(
        Path(bundle_dir) / manifest["variants"]["fp32"]["file"],
        specs=manifest["inputs"],
        limits=manifest["limits"],
    )
    report = run_tensor_parity(reference, session, bundle, "ort-cpu", "fp32")
    if bundle.is_decoder:
        report.levels.update(decoder_levels(bundle, reference, "ort-cpu", "fp32"))
    manifest["variants"]["fp32"]["parity"]["ort-cpu"] = report.to_dict()
    if "kv-inplace" in manifest["variants"]:
        inplace = {k: v for k, v in report.levels.items() if k != "cache_pingpong"}
        manifest["variants"]["kv-inplace"]["parity"]["ort-cpu"] = {
            "verdict": "pass" if all(l.get("passed", True) for l in inplace.values()) else "fail",
            "levels": inplace,
        }
    return report


def check_parity(
    bundle_path,
    backend: str = "ort-cpu",
    variant: str | None = None,
    samples: int = 16,
    atol: float | None = None,
    rtol: float | None = None,
    store: bool = True,
) -> ParityReport:
    """`trtpipe parity`: rebuild the reference from the manifest, compare, store the verdict, return the report."""
    from ..runtime.session import open_session

    bundle = Bundle.load(bundle_path)
    variant = variant or "fp32"
    precision = bundle.variant(variant).get("precision", "fp32")
    if precision != "fp32" and atol is None:
        raise UserError(
            f"variant {variant} is {precision}: lossy variants are judged by their accuracy gate "
            f"(`trtpipe optimize --precision {variant}` records it); pass --atol/--rtol to compare tensors anyway"
        )
    session = open_session(bundle, backend=backend, variant=variant)
    reference = TorchSession.from_bundle(bundle)
    report = run_tensor_parity(reference, session, bundle, backend, variant, atol, rtol, samples)
    if bundle.is_decoder:
        report.levels.update(decoder_levels(bundle, reference, backend, variant))
    if store:
        with bundle_transaction(bundle.path) as (locked, _):
            locked.manifest["variants"][variant].setdefault("parity", {})[backend] = report.to_dict()
    return report
