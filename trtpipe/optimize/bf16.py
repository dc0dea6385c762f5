"""The `bf16` variant: OpenVINO's bf16 compute of the bundle's own fp32 `model.onnx`, gated like every lossy step.

No new file is written. The variant names the fp32 file (its sha256 too) with `compute: bf16` and `backends:
["ov"]`: OpenVINO's CPU plugin then compiles it with `INFERENCE_PRECISION_HINT=bf16` (bf16 matrix products, f32
accumulation), which ONNX Runtime cannot run, so other backends refuse it in one line. Measured by
bench/openvino_peers.py on an AVX-512 bf16 EPYC: OpenVINO at bf16 runs MiniLM 1.76-1.99x and BERT-base 2.1x its f32,
at sentence cosine 1.0000. A CPU without bf16 arithmetic would compile the hint at f32, so there the variant is
refused (the fp32 variant on `ov` is the same computation).
"""

from __future__ import annotations

import time

from ..console import info, status
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError
from ..runtime.ov import import_openvino, openvino_info
from ..runtime.store import bundle_transaction
from . import gate


def add_bf16(bundle: Bundle, held_out: list[str], force: bool, overwrite: bool, versions: dict) -> dict:
    """Gate OpenVINO's bf16 compute of the fp32 graph on held-out text and record the variant. Returns the entry;
    CheckFailed when the gate fails (nothing written unless force)."""
    started = time.perf_counter()
    if bundle.is_decoder:
        raise UserError(
            "bf16 is OpenVINO's compute of an encoder's graph; for GPT-2 use --precision int8-wo or int4 "
            "(weight-only), or --prefill-backend ov"
        )
    if "bf16" in bundle.variants and not overwrite:
        raise UserError(f"{bundle.path} already has the bf16 variant; pass --overwrite to rebuild it")
    device = openvino_info()  # the CPU device's capabilities: a query, nothing compiled
    if device is None:
        import_openvino()  # the one-line UserError naming `pip install trtpipe[ov]`
    if device.get("error"):
        raise UserError(f"OpenVINO cannot query its CPU device ({device['error']}); see `trtpipe doctor`")
    capabilities = device.get("capabilities", [])
    if "BF16" not in capabilities:
        raise UserError(
            f"this CPU has no bf16 arithmetic (OpenVINO's CPU device offers {', '.join(capabilities)}"
            "; a bf16 hint would compile at f32): the fp32 variant on --backend ov is the same computation; make the "
            "bf16 variant on a CPU with avx512_bf16 or AMX"
        )
    with status(f"gate: bf16 (ov) vs fp32 on {len(held_out)} held-out texts"):
        result = gate.evaluate(
            bundle, bundle.model_path("fp32"), "bf16", held_out, backend="ov", compute="bf16"
        )
    if not result.passed and not force:
        raise CheckFailed(
            f"bf16 variant of {bundle.path} fails its accuracy gate: "
            + "; ".join(result.failures())
            + " — nothing written (pass --force to keep it anyway)"
        )
    with bundle_transaction(bundle.path) as (locked, _):
        fp32 = locked.variants["fp32"]
        entry = {
            "file": fp32["file"],
            "sha256": dict(fp32["sha256"]),  # the same file: checked like fp32's
            "bytes": fp32.get("bytes"),
            "made_from": "fp32",
            "precision": "bf16",
            "compute": "bf16",
            "backends": ["ov"],
            "ort_only": False,
            "tools": {**versions, "openvino": device["version"]},
            "report": {"inference_precision_hint": "bf16", "file_shared_with": "fp32"},
            "gate": {**result.to_dict(forced=force), "backend": "ov"},
            "parity": {},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 1),
        }
        locked.manifest["variants"]["bf16"] = entry
        locked.manifest.get("refused", {}).pop("bf16", None)
    verdict = "passed" if result.passed else "FAILED (kept: --force)"
    info(
        f"[green]bf16[/] → {bundle.path} ({fp32['file']} at bf16 on --backend ov); gate {verdict}: {result.summary()}"
    )
    return entry
