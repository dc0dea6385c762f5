"""Triton on loopback: a closed-loop load test (trtpipe.serving.load.run_load, N concurrent HTTP clients) against
Python-backend models written by write_repository and served by the nvidia-pytriton wheel's tritonserver on
127.0.0.1, per bundle and setting: dynamic batching, 1 instance; no dynamic batching, 1 instance; dynamic
batching, 2 instances (encoders). Bundles: tiny-bert classify and tiny-gpt2 generate (exported into a temp dir),
and bundles/minilm-embed when present. Writes the `triton` section of docs/benchmarks.md.

    python bench/triton_load.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import BUNDLES, write_section

from trtpipe import corpus

# one real held-out sentence per request, cycling through 16 of them (the offline corpus, as every other benchmark)
TEXTS = list(corpus.sentences("heldout", max_words=30)[:16])
PROMPTS = ["The list", "Hello there, how", "def main", "Once upon a time", "The weather today"]


@dataclass(frozen=True)
class Setting:
    label: str
    dynamic_batching: bool
    instances: int
    encoders_only: bool = False


SETTINGS = [
    Setting("dynamic batching, 1 instance", True, 1),
    Setting("no dynamic batching, 1 instance", False, 1),
    Setting("dynamic batching, 2 instances", True, 2, encoders_only=True),
]


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def make_inputs(task: str, new_tokens: int):
    """make_inputs(client, i) for run_load: one sentence (or prompt) per request, as tests/test_triton.py sends."""
    if task == "generate":
        steps = np.array([[new_tokens]], dtype=np.int32)
        return lambda c, i: [("text", _text(PROMPTS[(c + i) % len(PROMPTS)])), ("max_new_tokens", steps)]
    return lambda c, i: [("text", _text(TEXTS[(c + i) % len(TEXTS)]))]


OUTPUTS = {"classify": ["label", "score"], "embed": ["embedding"], "generate": ["completion", "ids"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="requests per client, encoders")
    parser.add_argument("--gen-requests", type=int, default=50, help="requests per client, generation")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=10, help="warm-up requests per client before each row")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per measurement at most")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 clients × 10 requests")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.clients, args.requests, args.gen_requests, args.warmup = 2, 10, 10, 2

    import warnings

    from trtpipe.export import export_bundle
    from trtpipe.runtime import Bundle, UserError
    from trtpipe.serving import RepoOptions, start_server, write_repository
    from trtpipe.serving.load import run_load

    warnings.simplefilter("ignore")
    notes: list[str] = []
    rows: list[tuple[str, str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        root = Path(tmp)
        probe = root / "empty"
        probe.mkdir()
        try:  # can the wheel's tritonserver start here at all? (an empty repository)
            start_server(probe, timeout_s=60).stop()
        except UserError as exc:
            sys.exit(f"tritonserver cannot start on this machine: {exc}")
        bundles = [
            export_bundle("tiny-bert", "classify", root / "tiny-bert-classify", check=False),
        ]
        minilm = BUNDLES / "minilm-embed"
        try:
            Bundle.load(minilm).model_path()
            bundles.append(minilm)
        except UserError:
            notes.append(f"minilm-embed skipped: no bundle at {minilm} (`make export` writes it).")
        bundles.append(export_bundle("tiny-gpt2", "generate", root / "tiny-gpt2-generate", check=False))
        tasks = {path.name: Bundle.load(path).task for path in bundles}

        for number, setting in enumerate(SETTINGS):
            served = [p for p in bundles if not (setting.encoders_only and tasks[p.name] == "generate")]
            repo = root / f"repo{number}"
            options = RepoOptions(
                backend="python",
                max_batch=args.max_batch,
                instances=setting.instances,
                dynamic_batching=setting.dynamic_batching,
            )
            write_repository([str(p) for p in served], repo, options)
            print(
                f"# {setting.label}: starting tritonserver ({', '.join(p.name for p in served)})", flush=True
            )
            server = start_server(repo, timeout_s=300)
            try:
                for path in served:
                    name, task = path.name, tasks[path.name]
                    requests = args.gen_requests if task == "generate" else args.requests
                    inputs = make_inputs(task, args.new_tokens)
                    if args.warmup:
                        run_load(server.http_url, name, inputs, args.clients, args.warmup, OUTPUTS[task], 120)
                    report = run_load(
                        server.http_url,
                        name,
                        inputs,
                        clients=args.clients,
                        requests=requests,
                        outputs=OUTPUTS[task],
                        timeout_s=args.timeout,
                    )
                    print(
                        f"#   {name}: {report['throughput_rps']} req/s, p50 {report['p50_ms']} ms, "
                        f"p99 {report['p99_ms']} ms, {report['errors']} errors",
                        flush=True,
                    )
                    if report["errors"]:
                        notes.append(f"{name}, {setting.label}: first error: {report['first_error']}")
                    wanted = args.clients * requests
                    if report["completed"] + report["errors"] < wanted:
                        notes.append(
                            f"{name}, {setting.label}: stopped at the {args.timeout:.0f} s limit after "
                            f"{report['completed']} of {wanted} requests."
                        )
                    rows.append((name, setting.label, report))
            finally:
                server.stop()

    body = markdown(rows, notes, args)
    print(body)
    if not args.no_write:
        write_section("triton", body)


def load_cells(r: dict) -> str:
    """Throughput, p50 and p99 cells of one load report; with no completed request the latencies were not
    measured (run_load reports NaN), and say so."""
    if not r.get("completed"):
        why = "not measured (no request completed)"
        return f"{r['throughput_rps']:.0f} | {why} | {why}"
    return f"{r['throughput_rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f}"


def markdown(rows: list[tuple[str, str, dict]], notes: list[str], args: argparse.Namespace) -> str:
    lines = [
        f"Loopback only: {args.clients} concurrent HTTP clients (tritonclient, same machine, sharing its CPUs with "
        f"the server) × {args.requests} requests of one sentence each (generation: × {args.gen_requests} "
        f"requests of {args.new_tokens} new tokens), through `trtpipe.serving.load.run_load`; Python backend on "
        f"`ort-cpu`, `--max-batch {args.max_batch}`, the nvidia-pytriton wheel's tritonserver, "
        f"{args.warmup} warm-up requests per client before each row. Latency is client side.",
        "",
        "| bundle | setting | throughput req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    order = list(dict.fromkeys(name for name, _, _ in rows))  # bundle by bundle, settings in order
    for name, setting, r in sorted(rows, key=lambda row: order.index(row[0])):
        lines.append(f"| {name} | {setting} | {load_cells(r)} | {r['errors']} |")
    ratios = []
    by_key = {(name, setting): r for name, setting, r in rows}
    for name in order:
        dynamic = by_key.get((name, SETTINGS[0].label))
        plain = by_key.get((name, SETTINGS[1].label))
        if dynamic and plain and plain["throughput_rps"] > 0:
            ratios.append(f"{dynamic['throughput_rps'] / plain['throughput_rps']:.1f}× for {name}")
    if ratios:
        lines += [
            "",
            "Dynamic batching speed-up (throughput with / without, 1 instance): " + ", ".join(ratios) + ".",
        ]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
