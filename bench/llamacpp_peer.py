"""llama.cpp beside trtpipe for GPT-2 124M batch-1 decoding (issue 20): llama-cpp-python on F32 / Q8_0 / Q4_0 GGUF
files made from the gpt2 bundle's own weights, against trtpipe fp32 / int8-wo / int4 (ONNX Runtime CPU, in-place
KV), in one run: the same prompt token ids, greedy, 64 new tokens, a clock at each token as the caller receives
it, rounds interleaved (llama.cpp runs in its own venv's worker process, idle while ours run). Rewrites the
`llamacpp` section of docs/benchmarks.md.

    python bench/llamacpp_peer.py [--threads 2] [--rounds 5] [--no-write]

llama-cpp-python lives in .venv-llamacpp (`make bench-peers`); without it every llama.cpp row says "not measured
(why)" and ours still run.
"""

from __future__ import annotations

import argparse
import json
import os

from common import REPORTS, ensure_bundle, ensure_variant, load_line, targets_table, write_section

NEW_TOKENS = 64
PROMPTS = (32, 512)


class LazyWorker:
    """One llama.cpp worker for the run, started by the first row that needs it; a failure to start (or to make
    the GGUF files) is that row's reason and every later llama.cpp row's."""

    def __init__(self, bundle, threads: int):
        self.bundle, self.threads = bundle, threads
        self.worker, self.files, self.error = None, None, None

    def get(self):
        from trtpipe.benchmark.llamacpp_peer import LlamaCppWorker, gguf_files

        if self.error:
            raise RuntimeError(self.error)
        if self.worker is None:
            try:
                self.worker = LlamaCppWorker()
                self.files = gguf_files(self.bundle, self.worker, self.threads)
            except Exception as exc:
                self.error = str(exc).splitlines()[0][:200]
                raise
        return self.worker

    def close(self):
        if self.worker is not None:
            self.worker.close()


def main() -> None:
    from trtpipe.benchmark.decode import make_rows, run_decode
    from trtpipe.benchmark.llamacpp_peer import FORMATS, LlamaCppDecoder, p50, verdict
    from trtpipe.benchmark.ov_peers import first_divergence
    from trtpipe.runtime import Bundle

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch docs/benchmarks.md")
    args = parser.parse_args()

    path = ensure_bundle("gpt2", "generate")
    for precision in ("int8-wo", "int4"):
        ensure_variant(path, precision)
    bundle = Bundle.load(path)
    lazy = LazyWorker(bundle, args.threads)

    def peer(ftype: str, variant: str):
        def make():
            worker = lazy.get()
            return LlamaCppDecoder(worker, ftype, lazy.files[ftype], variant, args.threads, 1024)

        return ("llama.cpp", make)

    rows = make_rows(bundle, [v for _, v in FORMATS], [], args.threads) + [peer(f, v) for f, v in FORMATS]
    load = os.getloadavg()[0]
    try:
        versions = lazy.get().versions if not lazy.error else {}
    except Exception:
        versions = {}
    try:
        results = run_decode(bundle, list(PROMPTS), NEW_TOKENS, rows, rounds=args.rounds)
    finally:
        lazy.close()
    by = {(r.kind, r.variant or "fp32", r.prompt_len): r for r in results}
    ours_int4 = bundle.variants["int4"].get("report", {})
    lines = [
        f"**GPT-2 124M decoding, batch 1** (random weights: speed only), greedy, {NEW_TOKENS} new tokens, "
        f"{args.threads} threads, {args.rounds} interleaved rounds after a warm-up, the same prompt token ids for "
        "every row; TTFT = first token (median over rounds), TPOT = token to token, p50 of every step. llama.cpp: "
        f"llama-cpp-python {versions.get('llama_cpp_python', '?')} (`Llama.generate`, top_k=1, `reset()` before "
        "each round so no prompt prefix is reused), n_threads = n_threads_batch = "
        f"{args.threads}, n_batch 512; built with `{versions.get('system', '?').strip()}`. GGUF files: "
        "llama.cpp's convert_hf_to_gguf.py (F32) on the bundle's own checkpoint, then its quantizer (Q8_0, Q4_0: "
        "symmetric, blocks of 32, an fp16 scale each). Ours: ONNX Runtime CPU, in-place KV; int8-wo / int4 are "
        f"MatMulNBits, block {ours_int4.get('block_size', '?')}, int8 compute (accuracy level "
        f"{ours_int4.get('accuracy_level', '?')}).",
        "",
        "| row | prompt | TTFT ms | TPOT p50 ms | tokens/s | greedy tokens equal to the same side's fp32 (random weights) |",
        "|---|---|---|---|---|---|",
    ]
    for p in PROMPTS:
        for r in [x for x in results if x.prompt_len == p]:
            if r.error:
                lines.append(f"| {r.label} | {p} | not measured ({r.error}) ||||")
                continue
            ref = by.get((r.kind, "fp32", p))
            if (r.variant or "fp32") == "fp32":
                ours = by.get(("ours", "fp32", p))
                agree = (
                    f"reference; vs trtpipe fp32: {first_divergence(r.ids, ours.ids)} of {len(ours.ids)} equal"
                    if r.kind == "llama.cpp" and ours is not None and ours.ids
                    else "reference"
                )
            elif ref is not None and ref.ids:
                agree = f"{first_divergence(r.ids, ref.ids)} of {len(ref.ids)} before the first difference"
            else:
                agree = "not measured (its fp32 row did not run)"
            lines.append(
                f"| {r.label} | {p} | {r.ttft['p50_ms']:.1f} | {r.tpot['p50_ms']:.2f} | {r.tokens_per_s:.1f} | {agree} |"
            )
    lines += [
        "",
        "| trtpipe speed ÷ llama.cpp speed (its ms ÷ ours) | prompt 32 TTFT | prompt 32 TPOT | prompt 512 TTFT | prompt 512 TPOT |",
        "|---|---|---|---|---|",
    ]
    targets = []
    for ftype, variant in FORMATS:
        cells = []
        for p in PROMPTS:
            ours, other = by.get(("ours", variant, p)), by.get(("llama.cpp", variant, p))
            for key in ("ttft", "tpot"):
                ok_rows = ours is not None and other is not None and not ours.error and not other.error
                cells.append(
                    f"{getattr(other, key)['p50_ms'] / getattr(ours, key)['p50_ms']:.2f}×"
                    if ok_rows
                    else "not measured"
                )
            text, ok = verdict("TPOT", p50(ours, "tpot"), p50(other, "tpot"))
            targets.append((f"GPT-2 {variant} prompt {p}: TPOT ≥ 1.0× llama.cpp {ftype}", text, ok))
            text, ok = verdict("TTFT", p50(ours, "ttft"), p50(other, "ttft"))
            targets.append((f"GPT-2 {variant} prompt {p}: TTFT ≤ llama.cpp {ftype}'s", text, ok))
        lines.append(f"| llama.cpp {ftype} vs trtpipe {variant} | {' | '.join(cells)} |")
    lines += ["", *targets_table(targets)]
    lines += [
        "",
        load_line(load),
    ]
    body = "\n".join(lines)
    print(body)
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "llamacpp.json").write_text(
        json.dumps(
            {
                "targets": targets,
                "rows": [
                    {
                        "label": r.label,
                        "prompt": r.prompt_len,
                        "error": r.error,
                        "ttft_ms": r.ttft.get("p50_ms"),
                        "tpot_ms": r.tpot.get("p50_ms"),
                        "ids": r.ids,
                    }
                    for r in results
                ],
            },  # fmt: skip
            indent=2,
        )
    )
    if not args.no_write:
        write_section("llamacpp", body)


if __name__ == "__main__":
    main()
