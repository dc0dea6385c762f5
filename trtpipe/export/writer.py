"""HF checkpoint → bundle: export, graph passes, checks, tokenizer and config, manifest last (all in a temp dir)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .. import __version__
from ..console import info, status
from ..runtime.errors import UserError
from ..runtime.manifest import FORMAT_VERSION
from ..runtime.paths import sha256_file
from ..runtime.store import file_hashes, staged_bundle, write_manifest
from .inputs import Source, library_versions, load_source, weights_sha256

MIN_OPSET = 17
MAX_OPSET = 21


def _model_summary(source: Source) -> dict:
    config = source.config
    params = sum(p.numel() for p in source.model.parameters())  # shared parameters are counted once
    summary = {
        "model_type": config.model_type,
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "num_heads": config.num_attention_heads,
        "head_dim": config.hidden_size // config.num_attention_heads,
        "vocab_size": config.vocab_size,
        "parameters": int(params),
        "parameter_bytes": int(params) * 4,
    }
    if getattr(config, "embedding_size", None):
        summary["embedding_size"] = config.embedding_size
    if getattr(config, "intermediate_size", None):
        summary["intermediate_size"] = config.intermediate_size
    return summary


def _tokenizer_entry(source: Source, staging: Path, inputs: list[dict]) -> dict:
    tok = source.tokenizer
    tok_dir = staging / "tokenizer"
    # what the tokenizer returns is what the graph takes: AutoTokenizer(<bundle>/tokenizer)(text) feeds Optimum's
    # ORTModel directly (a GPT-2 or RoBERTa graph has no token_type_ids)
    tok.model_input_names = [
        i["name"] for i in inputs if i["name"] in ("input_ids", "attention_mask", "token_type_ids")
    ]
    tok.init_kwargs["model_input_names"] = list(tok.model_input_names)
    tok.save_pretrained(tok_dir)
    for stray in tok_dir.glob("*.txt"):
        if stray.name != "vocab.txt":
            stray.unlink()
    entry = {"file": "tokenizer/tokenizer.json", "dir": "tokenizer"}
    for key in ("pad", "cls", "sep", "mask", "bos", "eos", "unk"):
        token_id = getattr(tok, f"{key}_token_id", None)
        if token_id is not None:
            entry[f"{key}_id"] = int(token_id)
    if getattr(tok, "mask_token", None):
        entry["mask_token"] = str(tok.mask_token)
    if source.spec.kind == "decoder":
        entry.setdefault("pad_id", entry.get("eos_id", 0))
    entry["sha256"] = sha256_file(tok_dir / "tokenizer.json")
    return entry


def _finish_onnx(
    raw_path: Path, final_path: Path, inputs: list[dict], outputs: list[dict], meta: dict
) -> tuple[list[str], dict]:
    import onnx

    from . import graph

    model = graph.load_onnx(raw_path)
    graph.bypass_weight_identities(model)
    tied = graph.tie_transposed_weights(model)
    deduped = graph.dedupe_initializers(model)
    graph.set_io_shapes(model, inputs, outputs)
    graph.strip_doc_strings(model)
    model.producer_name = "trtpipe"
    model.producer_version = __version__
    del model.metadata_props[:]
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    files = graph.save_onnx(model, final_path)
    try:
        graph.check_onnx(final_path)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"exported graph fails onnx.checker: {exc}") from exc
    stats = {
        "nodes": len(model.graph.node),
        "initializer_bytes": graph.initializer_bytes(model),
        "tied_bytes_saved": tied,
        "dedup_bytes_saved": deduped,
    }
    return files, stats


def _kv_inplace_variant(staging: Path, config) -> dict:
    from ..optimize.kv_inplace import kv_inplace_specs, rewrite_kv_inplace
    from . import graph

    heads = config.n_head
    model = graph.load_onnx(staging / "model.onnx")
    rewritten = rewrite_kv_inplace(model, config.n_layer, heads, config.n_embd // heads)
    files = graph.save_onnx(rewritten, staging / "model.kv-inplace.onnx")
    inputs, outputs = kv_inplace_specs(config.n_layer, heads, config.n_embd // heads, config.vocab_size)
    stats = {"nodes": len(rewritten.graph.node), "initializer_bytes": graph.initializer_bytes(rewritten)}
    return {
        "file": "model.kv-inplace.onnx",
        "files": files,
        "stats": stats,
        "inputs": inputs,
        "outputs": outputs,
        "ort_only": True,
    }


def export_bundle(
    model: str,
    task: str | None,
    out: str | Path,
    opset: int = MIN_OPSET,
    max_length: int | None = None,
    overwrite: bool = False,
    seed: int = 0,
    logits: str = "last",
    check: bool = True,
    source: Source | None = None,
) -> Path:
    """Export MODEL (checkpoint dir or preset) for TASK into a new bundle at OUT. Returns OUT."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise UserError(f"--opset must be between {MIN_OPSET} and {MAX_OPSET} (got {opset})")
    if logits not in ("last", "all"):
        raise UserError(f"--logits must be 'last' or 'all' (got {logits!r})")
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    started = time.perf_counter()
    with status(f"loading {model}"):
        source = source or load_source(model, task, seed)
    config = source.config
    positions = int(getattr(config, "max_position_embeddings", 0) or getattr(config, "n_positions", 512))
    if source.spec.positions_after_pad:
        # RoBERTa-style position ids start at padding_idx + 1: the first pad + 1 rows are never a position
        positions -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    if max_length is not None and not 1 <= max_length <= positions:
        raise UserError(
            f"--max-length must be between 1 and the model's {positions} positions (got {max_length})"
        )
    decoder = source.spec.kind == "decoder"
    if logits == "all" and not decoder:
        raise UserError("--logits all applies to GPT-2 (generate) exports only")

    with staged_bundle(out, overwrite) as staging:
        raw = staging / ".raw"
        raw.mkdir()
        meta = {
            "trtpipe.task": source.task,
            "trtpipe.family": source.spec.family,
            "trtpipe.source": source.name,
        }
        variants: dict = {}
        if decoder:
            from . import decoder as dec

            inputs, outputs = dec.input_specs(config), dec.output_specs(config)
            plan = [("fp32", "model.onnx", False)] + (
                [("all-logits", "model.all-logits.onnx", True)] if logits == "all" else []
            )
            for name, filename, all_logits in plan:
                with status(f"exporting {source.name} ({name}) to ONNX"):
                    dec.export_decoder(source, raw / filename, opset, all_logits=all_logits)
                    files, stats = _finish_onnx(
                        raw / filename, staging / filename, inputs, dec.output_specs(config, all_logits), meta
                    )
                variants[name] = {
                    "file": filename,
                    "files": files,
                    "stats": stats,
                    "outputs": dec.output_specs(config, all_logits) if all_logits else None,
                }
            with status("writing the in-place KV variant (ORT)"):
                variants["kv-inplace"] = _kv_inplace_variant(staging, config)
        else:
            from . import encoder as enc

            inputs, outputs = enc.input_specs(source), enc.output_specs(source)
            with status(f"exporting {source.name} ({source.task}) to ONNX"):
                enc.export_encoder(source, raw / "model.onnx", opset)
                files, stats = _finish_onnx(raw / "model.onnx", staging / "model.onnx", inputs, outputs, meta)
            variants["fp32"] = {"file": "model.onnx", "files": files, "stats": stats}
        shutil.rmtree(raw)

        tokenizer = _tokenizer_entry(source, staging, inputs)
        config.save_pretrained(staging / "source-config")
        shutil.move(staging / "source-config" / "config.json", staging / "config.json")
        shutil.rmtree(staging / "source-config")
        versions = library_versions()
        manifest_variants = {}
        for name, entry in variants.items():
            manifest_variants[name] = {
                "file": entry["file"],
                "sha256": file_hashes(staging, entry["files"]),
                "bytes": sum((staging / f).stat().st_size for f in entry["files"]),
                "made_from": None if name == "fp32" else "export",
                "precision": "fp32",
                "opset": opset,
                "tools": versions,
                "graph": entry["stats"],
                "ort_only": False,
                "parity": {},
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            for key in ("outputs", "inputs"):
                if entry.get(key):
                    manifest_variants[name][key] = entry[key]
            if entry.get("ort_only"):
                manifest_variants[name].update(ort_only=True, made_from="fp32", kv="inplace")
        labels = {}
        if source.task in ("classify", "ner"):
            labels = {str(k): str(v) for k, v in sorted(config.id2label.items())}
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": out.name,
            "family": source.spec.family,
            "task": source.task,
            "source": {**source.info, "weights_sha256": weights_sha256(source.model), "versions": versions},
            "model": _model_summary(source),
            "labels": labels,
            "problem_type": getattr(config, "problem_type", None),
            "inputs": inputs,
            "outputs": outputs,
            "limits": {
                "max_positions": positions,
                "max_length": max_length or positions,
                "vocab_size": int(config.vocab_size),
            },
            "tokenizer": tokenizer,
            "variants": manifest_variants,
            "engines": {},
            "export": {
                "opset": opset,
                "exporter": "torch.onnx (TorchScript tracer)",
                "logits": logits if decoder else None,
                "seconds": None,
            },
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if decoder:
            from .genai import write_genai_config

            write_genai_config(staging, manifest)
        report = None
        if check:
            from ..parity import check_parity_source

            with status(f"checking parity of {source.name} against PyTorch"):
                report = check_parity_source(source, staging, manifest)
        manifest["export"]["seconds"] = round(time.perf_counter() - started, 2)
        write_manifest(staging, manifest)
    info(f"[green]exported[/] {source.name} ({source.task}) → {out} in {time.perf_counter() - started:.1f}s")
    if report is not None:
        from ..parity import raise_if_failed

        raise_if_failed(report, f"export of {source.name}")
    return out
