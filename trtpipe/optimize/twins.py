"""In-place KV twins of GPT-2 weight variants (`<precision>.kv-inplace`): the same weights and settings in the
in-place graph the runtime decodes with on the CPU, and their agreement with the standard graph of that precision."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx

from .. import corpus
from ..export import graph
from ..parity.decoder import step_logits
from ..runtime.bundle import Bundle
from ..runtime.generate import Generator
from ..runtime.store import file_hashes
from .pair_rows import needs_pairs, pair_rows


def kv_inplace_twin(
    bundle: Bundle, precision: str, plan, block_size: int, lm_head: bool, accuracy_level: int, stage, result
) -> tuple[dict, onnx.ModelProto, Path]:
    """The same weights in the in-place KV graph (quantised with the same settings), checked against the standard
    graph of this precision through the runtime's own decoding loop. Returns its manifest entry, its graph and its
    staged file."""
    source = onnx.load(str(bundle.model_path("kv-inplace")))
    paired = False
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
        paired = needs_pairs(model)  # block ≥ 64: its kernel takes rows in pairs (pair_rows.py)
        if paired:
            model = pair_rows(model)
    name = f"{precision}.kv-inplace"
    target = bundle.path / f"model.{name}.onnx"
    tmp = stage(target)
    graph.save_onnx(model, tmp)
    base = bundle.variants["kv-inplace"]
    entry = {
        "file": target.name,
        "sha256": {target.name: file_hashes(tmp.parent, [tmp.name])[tmp.name]},
        "bytes": tmp.stat().st_size,
        "made_from": "kv-inplace",
        "precision": precision,
        "ort_only": True,
        "kv": "inplace",
        "inputs": base["inputs"],
        "outputs": base["outputs"],
        "gate": {**result.to_dict(), "note": f"same weights and settings as the {precision} variant"},
        # Bundle.unpaired: a twin made at block ≥ 64 before rows were paired lacks it
        **({"paired_rows": True} if paired else {}),
        "parity": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return entry, model, tmp


def twin_agreement(bundle_path: str | Path, precision: str, steps: int = 8) -> tuple[float, float]:
    """(max abs logit difference, top-1 agreement) of `<precision>.kv-inplace` vs `<precision>` through the
    decoding loop, teacher-forced with the standard graph's greedy tokens."""
    fast = Generator(bundle_path, variant=precision)
    slow = Generator(bundle_path, variant=precision, kv="pingpong")
    worst, agree, total = 0.0, 0, 0
    for text in corpus.sample(3, split="heldout"):
        ids = fast.encoder.encode_prompt(text)[:16]
        slow_rows, tokens = step_logits(slow, ids, steps)
        fast_rows, _ = step_logits(fast, ids, steps, tokens)
        reference, candidate = np.stack(slow_rows), np.stack(fast_rows)
        worst = max(worst, float(np.abs(reference - candidate).max()))
        agree += int((reference.argmax(-1) == candidate.argmax(-1)).sum())
        total += len(reference)
    return worst, agree / max(total, 1)
