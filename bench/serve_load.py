"""Serving many users at once: Triton on loopback (the nvidia-pytriton wheel's tritonserver, Python backend,
ort-cpu) under a closed-loop load at concurrency 1, 2, 4, 8, 16, batching on against batching off, on real
mixed-length text. Encoders (minilm-embed, demo-bert-classify): one held-out sentence or docs paragraph per HTTP
request. Generation (gpt2-generate, demo-gpt2-generate): gRPC streaming, prompts of 8 to 256 tokens from the
docs, max_new_tokens 16 to 128, half greedy and half sampled, TTFT and TPOT read off each token's arrival.

Side by side in the same run: batching off (one request at a time per instance: no dynamic batching, one
generation slot), the request-level batching this project had before in-flight batching (the code of commit
BASELINE, served through the repository's `sys_path` parameter) at concurrency 8, and onnxruntime-genai running
the same prompts as one static batch, outside Triton (its best case). `--soak-minutes 10` adds the soak: the
generation model at concurrency 8 with the Python stub's resident memory sampled every 10 s.
Writes the `serve` (and `serve-soak`) sections of docs/benchmarks.md and docs/img/serve-load.png.

    python bench/serve_load.py                    # ≈ 25 min on 2 cores
    python bench/serve_load.py --soak-minutes 10  # + the 10-minute soak (make bench-serve)
    python bench/serve_load.py --soak-only --soak-minutes 10   # the soak alone
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import REPORTS, ROOT, ensure_bundle, write_section

BASELINE = "59a199c"  # the last commit with request-level batching for generation (before BatchEngine)
MODELS = [  # Triton model name, preset, task
    ("minilm-embed", "minilm", "embed"),
    ("demo-bert-classify", "demo-bert-classify", "classify"),
    ("gpt2-generate", "gpt2", "generate"),
    ("demo-gpt2-generate", "demo-gpt2", "generate"),
]
TASKS = {name: task for name, _, task in MODELS}
OUTPUTS = {"embed": ["embedding"], "classify": ["label", "score"]}


def text_input(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def generation_inputs(requests):
    def make(client: int, index: int):
        r = requests[(client * 1000 + index) % len(requests)]
        return [
            ("text", text_input(r.prompt)),
            ("max_new_tokens", np.array([[r.max_new_tokens]], np.int32)),
            ("temperature", np.array([[r.temperature]], np.float32)),
            ("seed", np.array([[r.seed]], np.int64)),
        ]

    return make


def measure(server, name: str, task: str, work, clients: int, args) -> dict:
    from trtpipe.serving.load import run_load, run_stream_load

    if task == "generate":
        per_client = max(2, -(-args.gen_requests // clients))
        # warm-up: the first streamed responses of a fresh model arrive late (Triton's side), whatever the engine does
        run_stream_load(server.grpc_url, name, generation_inputs(work), clients, 3, timeout_s=180)
        report = run_stream_load(
            server.grpc_url, name, generation_inputs(work), clients, per_client, timeout_s=args.seconds
        )
    else:
        per_client = max(4, -(-args.requests // clients))

        def make(client, index):
            return [("text", text_input(work[(client * 1000 + index) % len(work)]))]

        run_load(server.http_url, name, make, clients, 4, OUTPUTS[task], timeout_s=60)  # warm-up
        report = run_load(
            server.http_url, name, make, clients, per_client, OUTPUTS[task], timeout_s=args.seconds
        )
    print(
        f"#   {name} c={clients}: {report['throughput_rps']} req/s"
        + (
            f", {report['tokens_per_s']} tok/s, TPOT p99 {report['tpot_p99_ms']} ms"
            if task == "generate"
            else ""
        )
        + f", p99 {report['p99_ms']} ms, {report['errors']} errors",
        flush=True,
    )
    return report


def serve_and_measure(root: Path, mode: str, options, bundles: dict, work: dict, args, levels) -> list[dict]:
    from trtpipe.serving import start_server, write_repository

    repo = root / ("repo-" + re.sub(r"[^a-z0-9]+", "-", mode.lower()).strip("-"))
    write_repository([f"{name}={path}" for name, path in bundles.items()], repo, options)
    print(f"# {mode}: starting tritonserver ({', '.join(bundles)})", flush=True)
    server = start_server(repo, timeout_s=600)
    rows = []
    try:
        for name in bundles:
            task = TASKS[name]
            for clients in levels:
                report = measure(server, name, task, work[name], clients, args)
                rows.append({"model": name, "mode": mode, **report})
    finally:
        server.stop()
    return rows


def baseline_source(root: Path, commit: str = BASELINE) -> Path | None:
    """The trtpipe package of `commit`, extracted from git history (None outside a git checkout)."""
    target = root / f"baseline-src-{commit}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit, "trtpipe"], capture_output=True, check=False
    )
    if archive.returncode:
        return None
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def genai_static(bundle_path: Path, requests, threads: int) -> dict | None:
    """onnxruntime-genai on our model.onnx, the same prompts as one left-padded static batch: useful tokens (what
    each request asked for) per second of the whole batch."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return None
    from trtpipe.benchmark.peers import GenaiDecoder
    from trtpipe.runtime import Bundle
    from trtpipe.runtime.text import TextEncoder

    bundle = Bundle.load(bundle_path)
    decoder = GenaiDecoder(bundle, threads)
    encoder = TextEncoder(bundle)
    prompts = [encoder.encode_prompt(r.prompt) for r in requests]
    pad = int(bundle.manifest["tokenizer"].get("pad_id", 0))
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), pad, dtype=np.int32)
    for row, p in enumerate(prompts):
        ids[row, width - len(p) :] = p
    max_length = min(width + max(r.max_new_tokens for r in requests), bundle.limits["max_positions"])
    params = og.GeneratorParams(decoder.model)
    params.set_search_options(max_length=max_length, batch_size=len(prompts), do_sample=False)
    generator = og.Generator(decoder.model, params)
    started = time.perf_counter()
    generator.append_tokens(ids)
    while not generator.is_done():
        generator.generate_next_token()
    seconds = time.perf_counter() - started
    useful = sum(min(r.max_new_tokens, max_length - width) for r in requests)
    return {
        "requests": len(requests),
        "seconds": round(seconds, 2),
        "tokens_per_s": round(useful / seconds, 1),
    }


def stub_rss(model: str) -> int | None:
    """Resident memory of the Python backend stub serving `model` (its command line names the model)."""
    import psutil

    for process in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if "triton_python_backend_stub" in cmdline and f"/{model}/" in cmdline:
            return process.memory_info().rss
    return None


def soak(root: Path, bundle: Path, requests, minutes: float, threads: int | None) -> dict:
    """Concurrency 8 for `minutes` against the generation model; the stub's RSS every 10 s."""
    from trtpipe.serving import RepoOptions, start_server, write_repository
    from trtpipe.serving.load import run_stream_load

    repo = root / "repo-soak"
    write_repository(
        [f"soak-generate={bundle}"], repo, RepoOptions(max_batch=16, stream=True, threads=threads)
    )
    server = start_server(repo, timeout_s=600)
    samples: list[tuple[float, int | None]] = []
    result: dict = {}
    try:
        load = threading.Thread(
            target=lambda: result.update(
                run_stream_load(
                    server.grpc_url, "soak-generate", generation_inputs(requests), 8, 100_000, minutes * 60
                )
            )
        )
        began = time.monotonic()
        load.start()
        while load.is_alive():
            samples.append((round(time.monotonic() - began), stub_rss("soak-generate")))
            load.join(10)
    finally:
        server.stop()
    return {**result, "rss": samples}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", default="1,2,4,8,16")
    parser.add_argument("--requests", type=int, default=400, help="encoder requests per level")
    parser.add_argument(
        "--gen-requests", type=int, default=48, help="generation requests per level (≥ 2 each)"
    )
    parser.add_argument("--seconds", type=float, default=180.0, help="no new request after this, per level")
    parser.add_argument(
        "--threads", type=int, default=None, help="intra-op threads per model (default: auto)"
    )
    parser.add_argument("--soak-minutes", type=float, default=0.0)
    parser.add_argument("--soak-only", action="store_true", help="only the soak (writes only its section)")
    parser.add_argument("--models", default=",".join(n for n, _, _ in MODELS))
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny counts")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.quick:
        args.requests, args.gen_requests, levels = 16, 2, levels[:2]

    import warnings

    from trtpipe.benchmark.serve import encoder_texts, generation_requests
    from trtpipe.runtime import Bundle
    from trtpipe.serving import RepoOptions

    warnings.simplefilter("ignore")
    chosen = args.models.split(",")
    bundles = {name: ensure_bundle(p, t) for name, p, t in MODELS if name in chosen}
    work = {}
    for name, path in bundles.items():
        bundle = Bundle.load(path)
        work[name] = generation_requests(bundle) if bundle.is_decoder else encoder_texts(bundle)
    modes = {
        "on": RepoOptions(max_batch=16, stream=True, threads=args.threads),
        "off": RepoOptions(max_batch=1, dynamic_batching=False, stream=True, threads=args.threads),
    }
    rows: list[dict] = []
    extra: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        root = Path(tmp)
        if not args.soak_only:
            for mode, options in modes.items():
                rows += serve_and_measure(root, mode, options, bundles, work, args, levels)
            generators = {n: p for n, p in bundles.items() if TASKS[n] == "generate"}
            source = baseline_source(root) if generators else None
            if source is not None and 8 in levels:
                before = RepoOptions(
                    max_batch=16, stream=True, threads=args.threads, python_path=(str(source),)
                )
                rows += serve_and_measure(
                    root, f"request-level ({BASELINE})", before, generators, work, args, [8]
                )
            for name, path in generators.items():
                extra[name] = genai_static(path, work[name][:8], args.threads or 2)
        if args.soak_minutes and "gpt2-generate" in bundles:
            extra["soak"] = soak(
                root, bundles["gpt2-generate"], work["gpt2-generate"], args.soak_minutes, args.threads
            )
    REPORTS.mkdir(exist_ok=True)
    name = "serve-soak.json" if args.soak_only else "serve-load.json"
    (REPORTS / name).write_text(json.dumps({"rows": rows, "extra": extra}, indent=2, default=str))
    if rows:
        body = report(rows, extra, args, levels)
        print(body)
        if not args.no_write:
            write_section("serve", body)
    if "soak" in extra:
        body = soak_report(extra["soak"], args.soak_minutes)
        print(body)
        if not args.no_write:
            write_section("serve-soak", body)


def report(rows: list[dict], extra: dict, args, levels: list[int]) -> str:
    from trtpipe.benchmark.serve import cell, load_table, plot, ratio

    lines = [
        f"Closed loop on loopback, concurrency {', '.join(map(str, levels))}; each level sends at least "
        f"{args.requests} encoder requests or {args.gen_requests} generation requests (≥ 2 per client) after a "
        "warm-up, no new request after "
        f"{args.seconds:.0f} s. Batching on: dynamic batching (encoders, length-grouped rows) and in-flight "
        "batching with 16 slots (generation); off: one request at a time per instance. Latency is client side.",
    ]
    by_model: dict[str, list[dict]] = {}
    for row in rows:
        by_model.setdefault(row["model"], []).append(row)
    targets = []  # (what, measured, goal, unit, higher is better)
    for model, mine in by_model.items():
        generation = TASKS[model] == "generate"
        lines += ["", f"**{model}**", ""] + load_table(mine, generation)
        if generation:
            anchor = extra.get(model)
            lines += [
                "",
                "onnxruntime-genai, the first 8 of these requests as one static batch (outside Triton; its best "
                f"case): {cell(anchor and anchor['tokens_per_s'], 1, 'not measured (onnxruntime-genai missing)')} "
                "useful tokens/s.",
            ]
            if model != "gpt2-generate":
                continue
            before = next((r for r in mine if r["mode"].startswith("request-level")), None)
            at8 = next((r for r in mine if r["mode"] == "on" and r["clients"] == 8), None)
            at1 = next((r for r in mine if r["mode"] == "on" and r["clients"] == 1), None)
            tpot = at8["tpot_p99_ms"] / at1["tpot_p50_ms"] if at1 and at8 else None
            targets += [
                (f"{model}: tokens/s at 8 ≥ 4× at 1", ratio(mine, "tokens_per_s", ("on", 8), ("on", 1)), 4.0),
                (
                    f"{model}: tokens/s at 16 ≥ 6× at 1",
                    ratio(mine, "tokens_per_s", ("on", 16), ("on", 1)),
                    6.0,
                ),
                (f"{model}: TPOT p99 at 8 ≤ 2× TPOT p50 at 1", tpot, -2.0),
                (
                    f"{model}: in-flight ≥ 1.5× request-level batching, tokens/s at 8",
                    at8["tokens_per_s"] / before["tokens_per_s"] if before and at8 else None,
                    1.5,
                ),
            ]
        else:
            targets.append(
                (
                    f"{model}: batching on ≥ 1.3× off at 8, requests/s",
                    ratio(mine, "throughput_rps", ("on", 8), ("off", 8)),
                    1.3,
                )
            )
    lines += ["", "| target | measured | |", "|---|---|---|"]
    for what, value, goal in targets:  # a negative goal is an upper bound
        met = value is not None and (value <= -goal if goal < 0 else value >= goal)
        mark = "not measured" if value is None else ("✅" if met else "❌ missed")
        lines.append(f"| {what} | {cell(value, 2)}{'' if value is None else '×'} | {mark} |")
    plotted = plot(by_model, (REPORTS if args.no_write else ROOT / "docs" / "img") / "serve-load.png")
    lines += ["", f"![throughput and p99 vs concurrency](img/{plotted.name})"]
    return "\n".join(lines)


def soak_report(s: dict, minutes: float) -> str:
    from trtpipe.benchmark.serve import cell

    rss = [v for _, v in s["rss"] if v]
    warm = rss[min(len(rss) - 1, 3)] / 2**20 if rss else None  # after 30 s of load
    last = rss[-1] / 2**20 if rss else None
    growth = 100 * (last / warm - 1) if rss else None
    ok = s.get("completed") and not s.get("errors") and growth is not None and growth < 5
    return "\n".join(
        [
            f"gpt2-generate at concurrency 8 for {minutes:g} minutes: {s.get('completed')} requests, "
            f"{s.get('errors')} failed{'' if not s.get('first_error') else ' (first: ' + str(s['first_error']) + ')'}, "
            f"{s.get('tokens_per_s')} tokens/s; stub RSS every 10 s: {cell(warm, 0)} MiB after 30 s of load → "
            f"{cell(last, 0)} MiB at the end ({cell(growth, 2)} %; target < 5 % and no failure: "
            f"{'✅' if ok else '❌ missed'}).",
            "",
            "RSS samples (s, MiB): " + ", ".join(f"{t}: {v / 2**20:.0f}" for t, v in s["rss"] if v),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
