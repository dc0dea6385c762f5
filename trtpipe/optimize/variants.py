"""Stage 2: bundle → bundle. Adds one variant (never overwrites the source), gated by accuracy where lossy.

fp16, int8-qdq, int8, int8-wo and int4 are made from the unfused fp32 export, so TensorRT and peer runtimes can load
them; fused, int8, int8-wo and int4 run on ONNX Runtime only. GPT-2 weight variants also get an in-place-KV twin
(`<precision>.kv-inplace`) that the runtime uses on the CPU.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from .. import __version__, corpus
from ..console import info, status, warn
from ..export import graph
from ..runtime.bundle import Bundle, bundle_transaction, file_hashes, temp_name
from ..runtime.errors import CheckFailed, UserError
from . import gate

PRECISIONS = ("fused", "fp16", "int8", "int8-qdq", "int8-wo", "int4")
FILES = {p: f"model.{p}.onnx" for p in PRECISIONS}
ORT_ONLY = {"fused", "int8", "int8-wo", "int4"}
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def tool_versions() -> dict:
    import onnxruntime

    return {"trtpipe": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


def read_texts(path: str | Path | None, n: int, split: str) -> list[str]:
    """Calibration text: one text per line from a UTF-8 file, or the offline corpus."""
    if path is None:
        return corpus.sample(n, split=split)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"calibration file {path} is not UTF-8 text; convert it with iconv") from None
    except OSError as exc:
        raise UserError(f"cannot read calibration file {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(
            f"calibration file {path} is empty; give one text per line (32 or more is a good start)"
        )
    return lines[:n]


def calibration_feeds(bundle: Bundle, texts: list[str], batch: int = 4, max_tokens: int = 64) -> list[dict]:
    """Real-text feeds: encoder batches, or GPT-2 prefill batches plus the decode step that follows each."""
    if not bundle.is_decoder:
        return gate.encoder_batches(bundle, texts, batch=batch, max_tokens=max_tokens)
    from ..parity import decode_step_feeds, decoder_prefill_feeds
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
    block_size: int = 32,
    lm_head: bool = True,
    accuracy_level: int = 4,
    gate_texts: str | Path | None = None,
) -> dict:
    """Add `precision` to the bundle. Returns the new manifest entry. Raises CheckFailed (exit 1) when the accuracy
    gate fails (nothing written unless force=True, which is recorded)."""
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    if method not in CALIBRATION_METHODS:
        raise UserError(
            f"unknown calibration method {method!r}; choose one of: {', '.join(CALIBRATION_METHODS)}"
        )
    if block_size not in (16, 32, 64, 128, 256):
        raise UserError(f"--block-size must be 16, 32, 64, 128 or 256 (got {block_size})")
    bundle = Bundle.load(bundle_path)
    if precision in bundle.variants and not overwrite:
        raise UserError(f"{bundle.path} already has the {precision} variant; pass --overwrite to rebuild it")
    calib_texts = read_texts(calibration, 64 if not bundle.is_decoder else 24, "train")
    held_out = read_texts(gate_texts, 32 if bundle.is_decoder else 64, "heldout")
    started = time.perf_counter()
    try:
        return _optimize_locked(
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
        )
    except _Refused as refused:
        record_refusal(bundle.path, precision, refused.result, refused.report)
        raise CheckFailed(
            f"{precision} variant of {bundle.path} fails its accuracy gate: "
            + "; ".join(refused.result.failures())
            + " — nothing written (pass --force to keep it anyway)"
        ) from None


class _Refused(Exception):
    def __init__(self, result, report):
        super().__init__("refused")
        self.result, self.report = result, report


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
    block_size: int,
    lm_head: bool,
    accuracy_level: int,
    started: float,
) -> dict:
    with bundle_transaction(bundle.path) as (locked, stage):
        source = locked.model_path("fp32")
        model, report, plan = _build(
            locked, source, precision, calib_texts, method, block_size, lm_head, accuracy_level, force
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
            with status(f"gate: {precision} vs fp32 on {len(held_out)} held-out texts"):
                result = gate.evaluate(locked, tmp, precision, held_out)
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
            "gate": result.to_dict(forced=force),
            "parity": {},
            "graph": {"nodes": len(model.graph.node), "initializer_bytes": graph.initializer_bytes(model)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": None,
        }
        locked.manifest["variants"][precision] = entry
        locked.manifest.get("refused", {}).pop(precision, None)
        if locked.is_decoder and precision in ("int8", "int8-wo", "int4") and "kv-inplace" in locked.variants:
            twin = _kv_inplace_twin(
                locked, precision, plan, block_size, lm_head, accuracy_level, stage, result
            )
            locked.manifest["variants"][f"{precision}.kv-inplace"] = twin
        entry["seconds"] = round(time.perf_counter() - started, 1)
    if f"{precision}.kv-inplace" in Bundle.load(bundle.path).variants:
        worst, top1 = twin_agreement(bundle.path, precision)
        # int4/int8-wo at accuracy level 4 quantise activations per block: fp32 rounding differences between the two
        # graphs can flip an activation's int8 rounding, so logits agree to quantisation noise, not to 1e-4.
        atol = 1e-3 if precision == "int8" else 5e-2
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
    block_size: int,
    lm_head: bool,
    accuracy_level: int,
    force: bool = False,
):
    model_info = bundle.model
    plan = None
    if precision == "fused":
        from .fuse import fuse

        with status("fusing (onnxruntime.transformers optimizer)"):
            model, report = fuse(
                source,
                bundle.family,
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
            source, feeds, method, _calibration_gate(bundle, "int8-qdq", calib_texts)
        )
        return model, report, plan
    if precision in ("int8-wo", "int4"):
        return _weight_only_gated(
            bundle, source, precision, calib_texts, block_size, lm_head, accuracy_level, force
        )
    from .int8 import quantize_dynamic_gated, weight_matmuls
    from .weight_only import untie_lm_head

    base = onnx.load(str(source))
    graph.bypass_weight_identities(base)  # bundles exported before the export pass did this
    if bundle.is_decoder and lm_head:
        untie_lm_head(base)
    model, plan, report = quantize_dynamic_gated(base, feeds, _calibration_gate(bundle, "int8", calib_texts))
    by_weight = {node.input[1]: plan[node.name] for node in weight_matmuls(base) if node.name in plan}
    return model, report, by_weight


def weight_only_rungs(block_size: int, lm_head: bool) -> list[tuple[int, bool]]:
    """Weight-only settings from the requested (smallest file, fastest) to the safest: the LM head back in fp32
    (GPT-2's tied head is the one matrix whose error reaches every logit directly), then half the block size."""
    rungs = [(block_size, lm_head), (block_size, False), (max(16, block_size // 2), False)]
    return list(dict.fromkeys(rungs))


def _weight_only_gated(
    bundle: Bundle,
    source: Path,
    precision: str,
    calib_texts: list[str],
    block_size: int,
    lm_head: bool,
    accuracy_level: int,
    force: bool,
):
    """MatMulNBits at the requested settings; when the calibration gate refuses them (and not `force`, which keeps
    exactly what was asked for), the next rung of `weight_only_rungs`. The held-out gate has the last word."""
    from .weight_only import quantize_weight_only

    bits = 4 if precision == "int4" else 8
    rungs = weight_only_rungs(block_size, lm_head)[: 1 if force else None]
    passes = None if len(rungs) == 1 else _calibration_gate(bundle, precision, calib_texts, headroom=1 / 2)
    source_model = onnx.load(str(source))
    tried = []
    for block, head in rungs:
        with status(f"{precision}: MatMulNBits (block {block}, LM head {'quantised' if head else 'fp32'})"):
            model, report = quantize_weight_only(
                source_model, bits, block, lm_head=head, accuracy_level=accuracy_level
            )
        ok = passes(model) if passes else None
        tried.append({"block_size": block, "lm_head": head, "passed_calibration": ok})
        if ok is not False:
            break
    report["plans_tried"] = tried
    return model, report, None


def _calibration_gate(bundle: Bundle, precision: str, calib_texts: list[str], headroom: float = 0.0):
    """The accuracy gate on calibration text (the search's guide; the recorded gate uses held-out text), with
    `headroom` (GateResult.passed_with_headroom) for searches whose rungs are coarse."""
    texts = calib_texts[: 16 if bundle.is_decoder else 32]

    def passes(candidate: onnx.ModelProto) -> bool:
        path = temp_name(
            bundle.path / FILES[precision]
        )  # a killed run leaves a .tmp- file the next writer removes
        try:
            graph.save_onnx(candidate, path)
            return gate.evaluate(bundle, path, precision, texts).passed_with_headroom(headroom)
        finally:
            path.unlink(missing_ok=True)

    return passes


def _kv_inplace_twin(
    bundle: Bundle, precision: str, plan, block_size: int, lm_head: bool, accuracy_level: int, stage, result
) -> dict:
    """The same weights in the in-place KV graph (quantised with the same settings), checked against the standard
    graph of this precision through the runtime's own decoding loop."""
    source = onnx.load(str(bundle.model_path("kv-inplace")))
    if precision == "int8":
        from .int8 import apply_dynamic, weight_matmuls
        from .weight_only import untie_lm_head

        if lm_head:
            untie_lm_head(source)
        # the same scheme per weight matrix (node names differ between the two graphs, weights do not)
        model = apply_dynamic(source, {n.name: plan.get(n.input[1], "fp32") for n in weight_matmuls(source)})
    else:
        from .weight_only import quantize_weight_only

        model, _ = quantize_weight_only(
            source,
            4 if precision == "int4" else 8,
            block_size,
            lm_head=lm_head,
            accuracy_level=accuracy_level,
        )
    name = f"{precision}.kv-inplace"
    target = bundle.path / f"model.{name}.onnx"
    tmp = stage(target)
    graph.save_onnx(model, tmp)
    base = bundle.variants["kv-inplace"]
    return {
        "file": target.name,
        "sha256": {target.name: file_hashes(tmp.parent, [tmp.name])[tmp.name]},
        "bytes": tmp.stat().st_size,
        "made_from": "kv-inplace",
        "precision": precision,
        "ort_only": True,
        "kv": "inplace",
        "inputs": base["inputs"],
        "outputs": base["outputs"],
        "tools": tool_versions(),
        "gate": {**result.to_dict(), "note": f"same weights and settings as the {precision} variant"},
        "parity": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def twin_agreement(bundle_path: str | Path, precision: str, steps: int = 8) -> tuple[float, float]:
    """(max abs logit difference, top-1 agreement) of `<precision>.kv-inplace` vs `<precision>` through the
    decoding loop, teacher-forced with the standard graph's greedy tokens."""
    from ..runtime.generate import Generator

    fast = Generator(bundle_path, variant=precision)
    slow = Generator(bundle_path, variant=precision, kv="pingpong")
    worst, agree, total = 0.0, 0, 0
    for text in corpus.sample(3, split="heldout"):
        ids = fast.encoder.encode_prompt(text)[:16]
        logits, forced = [], None
        for gen in (slow, fast):
            runner = gen.runner
            cache = runner.new_cache(1, len(ids) + steps)
            step, mask = runner.prefill([ids], cache, gen.pad_id)
            lengths = np.array([len(ids)])
            rows = [step[0].copy()]
            tokens = forced or []
            for index in range(steps):
                token = tokens[index] if forced else int(rows[-1].argmax())
                if not forced:
                    tokens.append(token)
                step, mask = runner.decode(np.array([token]), lengths, cache, mask)
                lengths += 1
                rows.append(step[0].copy())
            forced = tokens
            logits.append(np.stack(rows))
        worst = max(worst, float(np.abs(logits[0] - logits[1]).max()))
        agree += int((logits[0].argmax(-1) == logits[1].argmax(-1)).sum())
        total += len(logits[0])
    return worst, agree / max(total, 1)
