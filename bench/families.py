"""The encoder families side by side: (1) the published base architectures (random weights) beside BERT and ALBERT —
parameters, bytes, a forward pass over the same tokens, peak memory — through `trtpipe compare`; (2) a stage matrix
on each family's tiny preset: parity, fused-op counts and the fusion gap ONNX Runtime leaves, the fp16 and int8
gates (embeddings: cosine against fp32; classification: label agreement on a random head, since no trained
checkpoint of these families exists offline) and a TensorRT-RTX plan built ahead of time.
Writes the `families` section of docs/benchmarks.md.

    python bench/families.py
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
from pathlib import Path

from common import REPORTS, ROOT, ensure_bundle, mark, write_section

FAMILIES = [
    "bert",
    "albert",
    "distilbert",
    "roberta",
    "xlm-roberta",
    "electra",
    "mpnet",
    "deberta-v2",
    "modernbert",
]
BASE = {
    "bert": "bert-base",
    "albert": "albert-base",
    "distilbert": "distilbert-base",
    "roberta": "roberta-base",
    "xlm-roberta": "xlm-roberta-base",
    "electra": "electra-base",
    "mpnet": "mpnet-base",
    "deberta-v2": "deberta-v3-base",
    "modernbert": "modernbert-base",
}
FUSED_COLUMNS = [
    ("Attention", "Attention|MultiHeadAttention"),
    ("SkipLN", "SkipLayerNormalization|SkipSimplifiedLayerNormalization"),
    ("EmbedLN", "EmbedLayerNormalization"),
    ("LN", "LayerNormalization"),
    ("Gelu", "BiasGelu|FastGelu|Gelu"),
]


def side_by_side(threads: int, seq: int) -> list[str]:
    from trtpipe.benchmark.compare import compare, compare_markdown

    paths = [ensure_bundle(BASE[f], "classify") for f in FAMILIES]
    report = compare(paths, threads=threads, seq=seq, out_dir=REPORTS / "families")
    image = ROOT / "docs" / "img" / "compare-families.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPORTS / "families" / "compare.png", image)
    return [
        f"**Base architectures, random weights** — a classify forward pass over {report['seq']} tokens, batch 1, "
        f"{threads} threads, fp32, interleaved rounds:",
        "",
        compare_markdown(report),
        "![families](img/compare-families.png)",
        "",
    ]


def _gate(entry: dict | None, metric: str) -> str:
    if entry is None:
        return "not measured"
    gate = entry["gate"]
    value = gate["metrics"].get(metric)
    shown = f"{value:.4f}" if isinstance(value, float) else "not measured"
    return f"{shown} {mark(gate['verdict'] == 'pass')}"


def _optimize(path: Path, precision: str) -> dict | None:
    from trtpipe.optimize.variants import optimize_bundle

    # forced: the variant is written and the gate's verdict recorded, pass or fail
    return optimize_bundle(path, precision, force=True)


def _rtx(path: Path) -> str:
    if importlib.util.find_spec("tensorrt_rtx") is None:
        return "not measured (tensorrt-rtx is not installed)"
    from trtpipe.engines.builder import build_engine
    from trtpipe.engines.plan import BuildOptions
    from trtpipe.runtime import UserError

    try:
        result = build_engine(path, BuildOptions(variant="fp32", flavour="rtx", overwrite=True))
    except UserError as exc:
        return f"❌ {exc}"
    return f"✅ {result.entry['bytes'] / 2**20:.1f} MiB in {result.seconds:.1f} s"


def stage_matrix(work: Path) -> list[str]:
    from trtpipe.export import export_bundle
    from trtpipe.models import MODELS
    from trtpipe.runtime import Bundle

    header = (
        "| family | inputs | parity (classify, embed) | "
        + " | ".join(name for name, _ in FUSED_COLUMNS)
        + " | fp16 embed cos min | int8 embed cos min | int8-qdq embed cos min | int8 classify label agreement"
        + " | RTX fp32 plan |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    gaps = []
    for family in FAMILIES:
        print(f"== {family}", flush=True)
        paths = {
            task: export_bundle(f"tiny-{family}", task, work / f"{family}-{task}", overwrite=True)
            for task in ("classify", "embed")
        }
        bundles = {task: Bundle.load(p) for task, p in paths.items()}
        parity = ", ".join(b.variants["fp32"]["parity"]["ort-cpu"]["verdict"] for b in bundles.values())
        fused = _optimize(paths["embed"], "fused")["report"]
        counts = [
            str(sum(fused["fused_ops"].get(op, 0) for op in ops.split("|"))) for _, ops in FUSED_COLUMNS
        ]
        if fused.get("unfusable"):
            gaps.append(f"- {fused['unfusable']}.")
        fp16 = _optimize(paths["embed"], "fp16")
        int8 = _optimize(paths["embed"], "int8")
        qdq = _optimize(paths["embed"], "int8-qdq")
        int8_classify = _optimize(paths["classify"], "int8")
        layers = bundles["embed"].model["num_layers"]
        lines.append(
            f"| {MODELS[family].display} ({layers} layers) | {', '.join(bundles['classify'].input_names())} | "
            f"{parity} | {' | '.join(counts)} | {_gate(fp16, 'embedding_cosine_min')} | "
            f"{_gate(int8, 'embedding_cosine_min')} | {_gate(qdq, 'embedding_cosine_min')} | "
            f"{_gate(int8_classify, 'label_agreement')} | "
            f"{_rtx(paths['classify'])} |"
        )
    lines += [
        "",
        "Fused-op counts are per graph (one per layer where a pattern matched). Where ONNX Runtime's optimizer has no "
        "pattern, the optimize report says so in its `unfusable` key and the missing-fusion warning names it:",
        "",
        *gaps,
        "",
        "int8 is the dynamic CPU variant (its per-weight plan searched under the gate), int8-qdq the static one "
        "TensorRT takes (calibrated). No trained checkpoint of the new families exists offline (only "
        "all-MiniLM-L6-v2, a BERT, does), so classification is gated on label agreement with fp32 on a random "
        "head, over the held-out texts; a random head's logits sit close together, so it is a stricter test than a "
        "trained head's. Variants are forced here so that a gate that fails is shown (❌) rather than skipped. "
        "The RTX plans are built on this CPU and not run (no GPU here).",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--skip-base", action="store_true", help="only the tiny stage matrix")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    lines = [] if args.skip_base else side_by_side(args.threads, args.seq)
    with tempfile.TemporaryDirectory(prefix="trtpipe-families-") as work:
        lines += [
            "**Every stage, per family**, on the `tiny-<family>` presets (seeded random weights, the family's own "
            "tokenizer type):",
            "",
            *stage_matrix(Path(work)),
        ]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("families", body)


if __name__ == "__main__":
    main()
