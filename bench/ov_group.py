"""OpenVINO's activation group for weight-only variants (trtpipe/runtime/ov.py `weight_group`): a prompt's prefill
on OpenVINO at its default group (32) against the variant's MatMulNBits block, side by side in one process.

OpenVINO's CPU plugin quantizes the activations of compressed-weight MatMuls to int8 in groups of
DYNAMIC_QUANTIZATION_GROUP_SIZE columns; ONNX Runtime's int8 compute quantizes them per weight block. For each
weight-only variant of GPT-2 124M (random weights: speed only) and of the trained demo GPT-2 (accuracy): the interop
graph's prefill of a real-text prompt at past 0 on both compiles, median ms over interleaved rounds after a pause,
and how far each one's logits lie from ONNX Runtime's on the same file (max |diff|, top-1 agreement over every
position). Writes the `ov-group` section of docs/benchmarks.md.

    python bench/ov_group.py          # ≈ 2 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

PROMPTS = (32, 512)
DEMO_PROMPT = 128  # the demo GPT-2 holds 256 positions


def prefill_feeds(bundle, ids: list[int]) -> dict:
    """The interop graph's inputs for `ids` at past 0 (empty past tensors)."""
    import numpy as np

    from trtpipe.runtime import kv

    model = bundle.model
    feeds = kv.chunk(ids, 0)
    for _, name, _ in kv.kv_names(model["num_layers"]):
        feeds[name] = np.zeros((1, model["num_heads"], 0, model["head_dim"]), np.float32)
    return feeds


def compiles(bundle, variant: str, threads: int) -> dict:
    """OpenVINO's default group and the variant's own (`OvSession.from_bundle`), on the same file."""
    from trtpipe.runtime.ov import OvSession

    entry = bundle.variant(variant)
    ours = OvSession.from_bundle(bundle, variant=variant, threads=threads)
    default = OvSession(
        bundle.model_path(variant),
        threads=threads,
        specs=entry.get("inputs") or bundle.manifest["inputs"],
        limits=bundle.limits,
        variant=variant,
    )
    return {"OpenVINO's default": default, "the weight block": ours}


def group_of(session) -> int:
    return int(session.compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE"))


def off(logits, want) -> str:
    import numpy as np

    agree = float((logits.argmax(-1) == want.argmax(-1)).mean())
    return f"{float(np.abs(logits - want).max()):.1e} / {agree:.3f}"


def main() -> int:
    import numpy as np
    from common import (
        ensure_bundle,
        ensure_variant,
        load_line,
        targets_table,
        variant_copy,
        without_openvino,
        write_section,
    )

    from trtpipe.benchmark.decode import SETTLE_S, prompt_ids
    from trtpipe.runtime import Bundle
    from trtpipe.runtime.session import open_session

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if without_openvino("ov-group", not args.no_write):
        return 0
    load = os.getloadavg()[0]
    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    bundle = Bundle.load(path)
    lines = [
        "**OpenVINO's activation group**: the interop graph's prefill of a real-text prompt (past 0) on OpenVINO "
        f"compiled at its default DYNAMIC_QUANTIZATION_GROUP_SIZE and at the variant's weight block, {args.threads} "
        f"threads, median of {args.rounds} interleaved rounds after a warm-up, each call after a {SETTLE_S} s pause. "
        "Off ONNX Runtime: the largest |logit difference| against ONNX Runtime's CPU provider on the same file, and "
        "top-1 agreement over every position.",
        "",
        "| model | variant (block) | prompt | group | prefill ms | × default | off ONNX Runtime (max / top-1) |",
        "|---|---|---|---|---|---|---|",
    ]
    targets = []
    for variant in ("int8-wo", "int4"):
        block = bundle.variants[variant]["report"]["block_size"]
        sessions = compiles(bundle, variant, args.threads)
        reference = open_session(bundle, variant=variant, threads=args.threads)
        for p in PROMPTS:
            feeds = prefill_feeds(bundle, prompt_ids(bundle, p))
            want = reference.run(feeds)["logits"][0]
            spent, got = {name: [] for name in sessions}, {}
            for round_index in range(args.rounds + 1):
                for name, session in sessions.items():
                    time.sleep(SETTLE_S)
                    started = time.perf_counter()
                    got[name] = session.run(feeds)["logits"][0]  # the same every round
                    if round_index:
                        spent[name].append(time.perf_counter() - started)
            ms = {name: float(np.median(v)) * 1e3 for name, v in spent.items()}
            base = ms["OpenVINO's default"]
            for name, session in sessions.items():
                lines.append(
                    f"| GPT-2 124M | {variant} ({block}) | {p} | {group_of(session)} ({name}) | {ms[name]:.1f} | "
                    f"{base / ms[name]:.2f}× | {off(got[name], want)} |"
                )
            ratio = base / ms["the weight block"]
            targets.append(
                (
                    f"GPT-2 124M {variant}, prompt {p}: prefill at the weight block faster",
                    f"{ratio:.2f}×",
                    ratio > 1,
                )
            )
        for session in (*sessions.values(), reference):
            session.close()
    # the trained demo GPT-2: accuracy, at the blocks `optimize` writes for it
    demo_path = ensure_bundle("demo-gpt2", "generate")
    with tempfile.TemporaryDirectory(dir=Path(demo_path).parent) as scratch:
        for variant in ("int8-wo", "int4"):
            copy, entry = variant_copy(Path(demo_path), Path(scratch) / variant, variant)
            demo = Bundle.load(copy)
            block = entry["report"]["block_size"]
            sessions = compiles(demo, variant, args.threads)
            feeds = prefill_feeds(demo, prompt_ids(demo, DEMO_PROMPT))
            want = open_session(demo, variant=variant, threads=args.threads).run(feeds)["logits"][0]
            for name, session in sessions.items():
                lines.append(
                    f"| demo GPT-2 (trained) | {variant} ({block}) | {DEMO_PROMPT} | {group_of(session)} ({name}) "
                    f"| – | – | {off(session.run(feeds)['logits'][0], want)} |"
                )
                session.close()
    lines += ["", *targets_table(targets, head="check"), "", load_line(load)]
    body = "\n".join(lines)
    print(body)
    if not args.no_write:
        write_section("ov-group", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
