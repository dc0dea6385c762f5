"""Stage 2: bundle → bundle. Adds one variant (never overwrites the source), gated by accuracy where lossy.

bf16 (encoders) is OpenVINO's bf16 compute of the fp32 file itself (bf16.py), no new graph. fp16, int8-qdq, int8,
int8-nncf, int8-wo and int4 are made from the unfused fp32 export, so TensorRT and peer
runtimes can load them; fused, int8, int8-wo and int4 run on ONNX Runtime (and OpenVINO) only; int8-nncf is NNCF's
static int8 for the `ov` backend (nncf_int8.py), gated on OpenVINO. GPT-2 weight variants also get an in-place-KV twin
(`<precision>.kv-inplace`) that the runtime uses on the CPU; kv-fused adds the fused step twin of each of those
(fused_twin.py), which BatchEngine runs where a step decodes rows and a chunk; kv8 an int8 KV cache twin (kv8_twin.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from .. import __version__
from ..console import info, status, warn
from ..corpus import read_texts
from ..export import graph
from ..runtime import cpu
from ..runtime.bundle import Bundle
from ..runtime.errors import CheckFailed, UserError
from ..runtime.store import bundle_transaction, file_hashes
from . import gate
from .fused_twin import add_kv_fused, refresh_fused
from .int8 import INT8_WEIGHTS, WEIGHTS
from .kv8_twin import CALIBRATION_TEXTS, add_kv8, refresh_kv8
from .search import HeldOutGate, calibration_gate, weight_only_gated
from .twins import kv_inplace_twin, twin_agreement

PRECISIONS = ("fused", "fp16", "bf16", "int8", "int8-qdq", "int8-nncf", "int8-wo", "int4", "kv-fused", "kv8")
FILES = {p: f"model.{p}.onnx" for p in PRECISIONS if p != "bf16"}  # bf16 is OpenVINO's compute of model.onnx
ORT_ONLY = {"fused", "int8", "int8-nncf", "int8-wo", "int4"}  # not for TensorRT; OpenVINO runs them all
# The backend a variant is made for runs its gate: int8-nncf's Q/DQ become OpenVINO's own int8 kernels.
GATE_BACKEND = {"int8-nncf": "ov"}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


# how dynamic int8 quantises activations (int8_rows): per row (token), so a row's answer never depends on the rows
# batched or padded with it — GPT-2's batched decode steps and an encoder's padded batches alike
# (bench scripts rebuild an int8 variant whose report says otherwise: one built before the bias fix of int8_rows)
ACTIVATIONS = "per row (u8, symmetric; bias added after the row scale)"


def tool_versions() -> dict:
    import onnxruntime

    return {"trtpipe": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def calibration_feeds(bundle: Bundle, texts: list[str], batch: int = 4, max_tokens: int = 64) -> list[dict]:
    """Real-text feeds: encoder batches, or GPT-2 prefill batches plus the decode step that follows each."""
    if not bundle.is_decoder:
        return gate.encoder_batches(bundle, texts, batch=batch, max_tokens=max_tokens)
    from ..parity.tensors import decode_step_feeds, decoder_prefill_feeds
    from ..runtime.ort import OrtSession

    session = OrtSession(bundle.model_path("fp32"), specs=bundle.manifest["inputs"], limits=bundle.limits)
    feeds = []
    prefill = decoder_prefill_feeds(bundle, n=len(texts), batch=batch, max_tokens=max_tokens, texts=texts)
    for feed in prefill:
        feeds.append(feed)
        feeds.append(decode_step_feeds(feed, session.run(feed), bundle.model["num_layers"]))
    return feeds


def optimize_bundle(
    bundle_path: str | Path,
    precision: str,
    calibration: str | Path | None = None,
    force: bool = False,
    overwrite: bool = False,
    method: str = "minmax",
    block_size: int | None = None,
    lm_head: bool = True,
    accuracy_level: int = 4,
    gate_texts: str | Path | None = None,
    plan_from: str | Path | None = None,
    int8_weights: str = "u8",
) -> dict:
    """Add `precision` to the bundle. Returns the new manifest entry. Raises CheckFailed (exit 1) when the accuracy
    gate fails (nothing written unless force=True, which is recorded). plan_from (int8): no search — the int8 plan
    that bundle recorded (written or refused), carried over weight by weight (int8_plan.plan_from_roles)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"unknown calibration method {method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}"
        )
    if block_size is not None and block_size not in (16, 32, 64, 128, 256):
        raise UserError(f"--block-size must be 16, 32, 64, 128 or 256 (got {block_size})")
    if int8_weights not in INT8_WEIGHTS:
        raise UserError(f"--int8-weights must be {' or '.join(INT8_WEIGHTS)} (got {int8_weights!r})")
    if int8_weights == "s8":
        if precision != "int8":
            raise UserError(f"--int8-weights s8 is for --precision int8 (dynamic int8), not {precision}")
        if cpu.missing(["vnni"]):
            raise UserError(
                f"--int8-weights s8 needs a CPU with VNNI ({' or '.join(cpu.VNNI)}) to be gated on; this one has "
                "none (its int8 kernels would saturate full-range s8 weights): leave the default, u8"
            )
    if precision == "kv-fused":  # GPT-2's fused step twins: a graph rewrite, checked exactly (fused_twin.py)
        return add_kv_fused(bundle_path, overwrite, tool_versions())
    if precision == "kv8":  # GPT-2's int8 KV cache twins: calibrated, gated (kv8_twin.py)
        held_out = read_texts(gate_texts, Bundle.load(bundle_path).kind.gate_texts, "heldout")
        return add_kv8(
            bundle_path,
            overwrite,
            force,
            read_texts(calibration, CALIBRATION_TEXTS, "train"),
            held_out,
            tool_versions(),
        )
    if precision == "bf16":  # no new graph: OpenVINO's bf16 compute of the fp32 one, gated (bf16.py)
        from .bf16 import add_bf16

        bundle = Bundle.load(bundle_path)
        held_out = read_texts(gate_texts, bundle.kind.gate_texts, "heldout")
        return add_bf16(bundle, held_out, force, overwrite, tool_versions())
    bundle = Bundle.load(bundle_path)
    if precision == "int8-nncf" and bundle.is_decoder:
        raise UserError(
            "int8-nncf is static int8 for encoders; for GPT-2 use --precision int8-wo or int4 (weight-only)"
        )
    carried = recorded_plan(plan_from, precision) if plan_from is not None else None
    if precision in bundle.variants and not overwrite:
        raise UserError(f"{bundle.path} already has the {precision} variant; pass --overwrite to rebuild it")
    calib_texts = read_texts(calibration, bundle.kind.calibration_texts, "train")
    held_out = read_texts(gate_texts, bundle.kind.gate_texts, "heldout")
    started = time.perf_counter()
    weights = WEIGHTS.set(int8_weights)  # read by every int8 quantisation of this search (int8.apply_dynamic)
    try:
        entry = _optimize_locked(
            bundle,
            precision,
            calib_texts,
            held_out,
            force,
            method,
            block_size,
            lm_head,
            accuracy_level,
            started,
            carried,
        )
        if f"{precision}.kv-inplace" in Bundle.load(bundle.path).variants:  # its int8-cache twin follows, too
            texts = read_texts(calibration, CALIBRATION_TEXTS, "train")
            refresh_kv8(bundle.path, f"{precision}.kv-inplace", texts, held_out, tool_versions())
        return entry
    except _Refused as refused:
        record_refusal(bundle.path, precision, refused.result, refused.report)
        raise CheckFailed(
            f"{precision} variant of {bundle.path} fails its accuracy gate: "
            + "; ".join(refused.result.failures())
            + " — nothing written (pass --force to keep it anyway)"
        ) from None
    finally:
        WEIGHTS.reset(weights)


class _Refused(Exception):
    def __init__(self, result, report):
        super().__init__("refused")
        self.result, self.report = result, report


def recorded_plan(path: str | Path, precision: str) -> tuple[dict[str, str], str]:
    """The int8 plan (role → scheme) another bundle's search chose, whether its gate wrote or refused the variant;
    or, for `per-tensor` / `per-channel`, that scheme for every weight."""
    if precision != "int8":
        raise UserError("--plan-from carries over int8 plans only")
    from .int8_plan import EVERY_WEIGHT

    if str(path) in ("per-tensor", "per-channel"):  # one scheme for every weight: no search, still gated
        return {EVERY_WEIGHT: str(path)}, f"--plan-from {path}"
    other = Bundle.load(path)
    entry = other.variants.get("int8") or other.manifest.get("refused", {}).get("int8")
    roles = (entry or {}).get("report", {}).get("roles")
    if not roles:
        raise UserError(
            f"{other.path} records no int8 plan; run `trtpipe optimize {other.path} --precision int8` first"
        )
    return roles, str(other.path)


def record_refusal(bundle_path: Path, precision: str, result, report) -> None:
    """Note a refused variant in the manifest (`refused`), so `inspect` shows why it is missing and `make optimize`
    does not redo the same work until the fp32 model changes."""
    with bundle_transaction(bundle_path) as (locked, _):
        locked.manifest.setdefault("refused", {})[precision] = {
            "gate": result.to_dict(),
            "report": report,
            "fp32_sha256": locked.variants["fp32"]["sha256"],
            "tools": tool_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


def refusal_is_current(bundle: Bundle, precision: str) -> bool:
    refused = bundle.manifest.get("refused", {}).get(precision)
    return bool(refused) and refused.get("fp32_sha256") == bundle.variants["fp32"].get("sha256")


def _optimize_locked(
    bundle: Bundle,
    precision: str,
    calib_texts: list[str],
    held_out: list[str],
    force: bool,
    method: str,
    block_size: int | None,
    lm_head: bool,
    accuracy_level: int,
    started: float,
    carried: tuple[dict[str, str], str] | None = None,
) -> dict:
    with bundle_transaction(bundle.path) as (locked, stage):
        source = locked.model_path("fp32")
        backend = GATE_BACKEND.get(precision, "ort-cpu")
        held_out_gate = HeldOutGate(locked, precision, held_out, backend)  # the int8 searches consult it
        model, report, plan = _build(
            locked,
            source,
            precision,
            calib_texts,
            method,
            block_size,
            lm_head,
            accuracy_level,
            force,
            carried,
            held_out_gate,
        )
        if precision in ("int8-wo", "int4"):  # the rung the search settled on
            block_size, lm_head = report["block_size"], report["lm_head"]
        target = locked.path / FILES[precision]
        tmp = stage(target)
        files = graph.save_onnx(model, tmp)
        if len(files) > 1:  # external data: name it after the final file
            raise UserError(
                "the optimised model is over 2 GB; trtpipe does not quantise models of that size yet"
            )
        result = None
        if precision != "fused":
            result = held_out_gate.result_for(
                model
            )  # a search that confirmed its plan on held-out text already
            if result is None:
                with status(f"gate: {precision} ({backend}) vs fp32 on {len(held_out)} held-out texts"):
                    result = gate.evaluate(locked, tmp, precision, held_out, backend=backend)
        else:
            with status("checking the fused graph against fp32"):
                result = gate.evaluate(locked, tmp, "fp16", held_out)  # fusion is exact up to fp32 reordering
        passed = result.passed
        if not passed and not force:
            raise _Refused(result, report)
        entry = {
            "file": target.name,
            "sha256": {target.name: file_hashes(tmp.parent, [tmp.name])[tmp.name]},
            "bytes": tmp.stat().st_size,
            "made_from": "fp32",
            "precision": precision,
            "ort_only": precision in ORT_ONLY,
            "tools": tool_versions(),
            "report": report,
            "gate": {**result.to_dict(forced=force), "backend": backend},
            "parity": {},
            "graph": {"nodes": len(model.graph.node), "initializer_bytes": graph.initializer_bytes(model)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": None,
        }
        if precision == "int8":  # which int8 kernels the weights were made for (int8.INT8_WEIGHTS)
            report["weights"] = WEIGHTS.get()
            if WEIGHTS.get() == "s8":
                entry["cpu_needs"] = ["vnni"]  # runtime/cpu.py: refused where its kernels would saturate
        locked.manifest["variants"][precision] = entry
        locked.manifest.get("refused", {}).pop(precision, None)
        if locked.is_decoder and precision in ("int8", "int8-wo", "int4") and "kv-inplace" in locked.variants:
            twin, twin_model, twin_path = kv_inplace_twin(
                locked, precision, plan, block_size, lm_head, accuracy_level, stage, result
            )
            locked.manifest["variants"][f"{precision}.kv-inplace"] = twin = {
                **twin,
                "tools": tool_versions(),
                **({"cpu_needs": entry["cpu_needs"]} if "cpu_needs" in entry else {}),
            }
            refresh_fused(locked, f"{precision}.kv-inplace", twin, twin_model, twin_path, stage)
        entry["seconds"] = round(time.perf_counter() - started, 1)
    if f"{precision}.kv-inplace" in Bundle.load(bundle.path).variants:
        worst, top1 = twin_agreement(bundle.path, precision)
        # every one of these quantises activations at run time (int8 per row, int4/int8-wo at accuracy level 4 per
        # block): fp32 rounding differences between the two graphs (GroupQueryAttention against the exported
        # attention) can flip an activation's int8 rounding, so logits agree to quantisation noise, not to 1e-4 —
        # int8 measured 0.039 on tiny-gpt2 on an AVX-512 VNNI CPU (below 1e-3 on an AVX2 one); top-1 must still agree
        atol = 5e-2
        with bundle_transaction(bundle.path) as (locked, _):
            twin = locked.manifest["variants"][f"{precision}.kv-inplace"]
            twin["parity"]["ort-cpu"] = {
                "verdict": "pass" if worst <= atol and top1 == 1.0 else "fail",
                "against": precision,
                "max_abs_logits": worst,
                "atol": atol,
                "top1": top1,
            }
    verdict = "passed" if passed else "FAILED (kept: --force)"
    info(
        f"[green]{precision}[/] → {target} ({entry['bytes'] / 2**20:.1f} MiB); gate {verdict}: {result.summary()}"
    )
    if not passed:
        warn(f"{precision} was written despite failing its gate (--force); the manifest records it")
    return entry


def _build(
    bundle: Bundle,
    source: Path,
    precision: str,
    calib_texts: list[str],
    method: str,
    block_size: int | None,
    lm_head: bool,
    accuracy_level: int,
    force: bool = False,
    carried: tuple[dict[str, str], str] | None = None,
    held_out: HeldOutGate | None = None,
):
    model_info = bundle.model
    plan = None
    if precision == "fused":
        from .fuse import fuse

        with status("fusing (onnxruntime.transformers optimizer)"):
            model, report = fuse(
                source,
                bundle.spec,
                model_info["num_heads"],
                model_info["hidden_size"],
                model_info["num_layers"],
            )
        return model, report, plan
    feeds = calibration_feeds(bundle, calib_texts, batch=2 if precision == "fp16" else 4)
    if precision == "fp16":
        from .fp16 import to_fp16

        with status(f"fp16: scanning activations on {len(calib_texts)} texts and converting"):
            model, report = to_fp16(source, feeds)
        return model, report, plan
    if precision == "int8-qdq":
        from .int8 import quantize_qdq_gated

        model, report = quantize_qdq_gated(
            source, feeds, method, calibration_gate(bundle, "int8-qdq", calib_texts, held_out=held_out)
        )
        return model, report, plan
    if precision == "int8-nncf":
        from .nncf_int8 import quantize_nncf_gated

        model, report = quantize_nncf_gated(
            source, feeds, calibration_gate(bundle, "int8-nncf", calib_texts, backend="ov", held_out=held_out)
        )
        return model, report, plan
    if precision in ("int8-wo", "int4"):
        return weight_only_gated(
            bundle, source, precision, calib_texts, block_size, lm_head, accuracy_level, force
        )
    from .int8 import weight_matmuls
    from .int8_plan import quantize_dynamic_gated, quantize_with_plan
    from .weight_only import untie_lm_head

    base = onnx.load(str(source))
    graph.bypass_weight_identities(base)  # bundles exported before the export pass did this
    if bundle.is_decoder and lm_head:
        untie_lm_head(base)
    if carried is not None:
        model, plan, report = quantize_with_plan(base, *carried)
    else:
        # weights reused by every layer compound their error over the layers: measure it rather than estimate it
        model, plan, report = quantize_dynamic_gated(
            base,
            feeds,
            calibration_gate(bundle, "int8", calib_texts, held_out=held_out),
            measure=bundle.spec.shared_layers,
        )
    by_weight = {node.input[1]: plan[node.name] for node in weight_matmuls(base) if node.name in plan}
    report["activations"] = ACTIVATIONS
    return model, report, by_weight
