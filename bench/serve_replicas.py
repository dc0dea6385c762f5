"""Replicas behind a load balancer on this machine: 1, 2 and 3 tritonservers behind HAProxy (trtpipe.serving.replicas)
against one server reached directly, closed-loop HTTP clients at concurrency 8, interleaved rounds; then the faults:
under the same load, one of three replicas is killed (SIGKILL to its process group; "hang-then-crash": SIGSTOP for
0.3 s first, so requests are in flight on it), restarted on its ports 2 s later, and the load goes on. Every answer
is checked against the runtime's. Writes the `replicas` section of docs/benchmarks.md.

    python bench/serve_replicas.py            # ≈ 7 min on 2 cores (make bench-serve runs it)
    python bench/serve_replicas.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from common import REPORTS, ensure_bundle, write_section

CLIENTS = 8
SETS = (1, 2, 3)
LABELS = {
    "direct": "direct (1 server)",
    "direct-3i": "direct, 3 instances × 1 thread",
    "3t1": "3 behind HAProxy, 1 thread each",
    "1k": "1 behind HAProxy, client keep-alive",
}


def text_input(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


def workload(bundle: Path, task: str):
    """(texts, make_inputs, check, outputs): real mixed-length texts, and the runtime's own answer for each."""
    from trtpipe.benchmark.serve import encoder_texts
    from trtpipe.runtime import Bundle, load_pipeline

    texts = encoder_texts(Bundle.load(bundle), count=128)
    pipeline = load_pipeline(bundle)
    if task == "embed":
        want = pipeline.embed(texts)
        outputs = ["embedding"]

        def check(client, index, result):
            got = result.as_numpy("embedding")[0]
            expected = want[(client * 1000 + index) % len(texts)]
            assert np.abs(got - expected).max() <= 1e-4, "embedding differs from the runtime's"
    else:
        labels = [a["label"] for a in pipeline.classify(texts)]
        outputs = ["label", "score"]

        def check(client, index, result):
            label = result.as_numpy("label")[0, 0].decode()
            assert label == labels[(client * 1000 + index) % len(texts)], f"label {label}"

    def make(client, index):
        return [("text", text_input(texts[(client * 1000 + index) % len(texts)]))]

    return make, check, outputs


def cpu_seconds(groups: set[int], pids: set[int]) -> float:
    """CPU time so far of every process in these process groups (a server and its stubs) or with these pids."""
    ticks = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) in groups or int(entry.name) in pids:
                ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def processes(target) -> tuple[set[int], set[int]]:
    """(process groups, pids) whose CPU a target spends: its servers and stubs, and HAProxy."""
    servers = getattr(target, "servers", None) or [target]
    haproxy = getattr(target, "haproxy", None)
    return {s.process.pid for s in servers if s is not None}, {haproxy.pid} if haproxy else set()


def throughput_rounds(targets: dict, models: dict, args) -> list[dict]:
    """targets: name → a TritonServer or a ReplicaSet."""
    from trtpipe.serving.load import run_load

    samples: dict[tuple, list[dict]] = {}
    for target in targets.values():  # warm-up: every replica loads its sessions' first shapes
        for name, (make, check, outputs, _) in models.items():
            run_load(target.http_url, name, make, CLIENTS, 8, outputs, timeout_s=120, check=check)
    for round_ in range(args.rounds):
        for config, target in targets.items():
            for name, (make, check, outputs, requests) in models.items():
                own = processes(target)
                server_cpu, client_cpu = cpu_seconds(*own), sum(os.times()[:2])
                report = run_load(
                    target.http_url, name, make, CLIENTS, -(-requests // CLIENTS), outputs, 300, check=check
                )
                cpu = cpu_seconds(*own) - server_cpu + sum(os.times()[:2]) - client_cpu
                report["cores"] = cpu / report["seconds"]  # servers, stubs, HAProxy and the clients together
                report["per_core_s"] = report["completed"] / cpu
                samples.setdefault((name, config), []).append(report)
                print(
                    f"# round {round_ + 1} {name} {config}: {report['throughput_rps']} req/s on "
                    f"{report['cores']:.2f} cores",
                    flush=True,
                )
    rows = []
    for name, config in [(name, config) for name in models for config in targets]:
        reports = samples[(name, config)]
        rows.append(
            {
                "model": name,
                "config": config,
                "throughput_rps": statistics.median(r["throughput_rps"] for r in reports),
                "p50_ms": statistics.median(r["p50_ms"] for r in reports),
                "p99_ms": statistics.median(r["p99_ms"] for r in reports),
                "cores": statistics.median(r["cores"] for r in reports),
                "per_core_s": statistics.median(r["per_core_s"] for r in reports),
                "requests": sum(r["completed"] + r["errors"] for r in reports),
                "errors": sum(r["errors"] for r in reports),
                "wrong": sum(r["wrong_answers"] for r in reports),
            }
        )
    return rows


def fault(replica_set, index: int, kind: str, name: str, work, args) -> dict:
    """Load at CLIENTS; kill replica `index` after args.before_s, restart it args.down_s later, go on args.after_s."""
    from trtpipe.serving.load import run_load

    make, check, outputs, _ = work
    logged = len(replica_set.requests())
    stop, report = threading.Event(), {}
    began = time.time()
    driver = threading.Thread(
        target=lambda: report.update(
            run_load(replica_set.http_url, name, make, CLIENTS, 10**9, outputs, 300, check=check, stop=stop)
        ),
        daemon=True,
    )
    driver.start()
    try:
        time.sleep(args.before_s)
        if kind == "hang-then-crash":
            os.kill(replica_set.servers[index].process.pid, signal.SIGSTOP)
            time.sleep(0.3)
        killed = replica_set.kill(index)
        leave_s = replica_set.wait_status(index, "DOWN", 10)
        time.sleep(args.down_s)
        started = time.monotonic()
        replica_set.restart(index)
        restart_s = time.monotonic() - started
        back = time.time()
        rejoin_s = replica_set.wait_status(index, "UP", 10)
        time.sleep(args.after_s)
    finally:
        stop.set()
        driver.join(120)
    ended = time.time()
    sent = report["completed"] + report["errors"]
    deadline = time.monotonic() + 5
    while len(log := replica_set.requests()[logged:]) < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    me = replica_set.names[index]
    failed = [r for r in log if r.status != 200]

    def rate(lo: float, hi: float) -> float:
        return sum(1 for r in log if lo <= r.end < hi) / (hi - lo) if hi > lo else float("nan")

    return {
        "fault": kind,
        "sent": sent,
        "logged": len(log),
        "failed": report["errors"],
        "failed_logged": len(failed),
        "failed_in_flight_on_it": sum(
            1 for r in failed if r.replica == me and r.start <= killed + 0.05 and r.end >= killed - 0.05
        ),
        "retried": sum(1 for r in log if r.retries),
        "retried_ok": sum(1 for r in log if r.retries and r.status == 200),
        "wrong": report["wrong_answers"],
        "leave_s": leave_s,
        "restart_s": restart_s,
        "rejoin_s": rejoin_s,
        "rps_before": rate(began + 0.5, killed),
        "rps_down": rate(killed + leave_s, back),
        "rps_after": rate(back + rejoin_s, ended),
        "served_after": sum(1 for r in log if r.replica == me and r.start >= back),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests", type=int, default=240, help="minilm-embed requests per round and target"
    )
    parser.add_argument(
        "--tiny-requests", type=int, default=2400, help="tiny-bert-classify requests per round"
    )
    parser.add_argument("--before-s", type=float, default=3.0)
    parser.add_argument("--down-s", type=float, default=2.0)
    parser.add_argument("--after-s", type=float, default=3.0)
    parser.add_argument("--quick", action="store_true", help="smoke test: one short round")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.requests, args.tiny_requests, args.before_s, args.after_s = 1, 64, 400, 1.5, 1.0

    import warnings

    from trtpipe.export import export_bundle
    from trtpipe.serving import RepoOptions, start_server, write_repository
    from trtpipe.serving.replicas import start_replicas

    warnings.simplefilter("ignore")
    args.load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        root = Path(tmp)
        tiny = export_bundle("tiny-bert", "classify", root / "tiny-bert-classify")
        minilm = ensure_bundle("minilm", "embed")
        pair = [f"tiny-bert-classify={tiny}", f"minilm-embed={minilm}"]
        write_repository(pair, root / "repo", RepoOptions())
        write_repository(pair, root / "repo-1t", RepoOptions(threads=1))
        write_repository(pair, root / "repo-3i", RepoOptions(instances=3, threads=1))
        models = {
            "tiny-bert-classify": (*workload(tiny, "classify"), args.tiny_requests),
            "minilm-embed": (*workload(minilm, "embed"), args.requests),
        }
        servers, sets = {}, {}
        try:
            servers["direct"] = start_server(root / "repo", timeout_s=600)
            servers["direct-3i"] = start_server(root / "repo-3i", timeout_s=600)
            for n in SETS:
                sets[n] = start_replicas(root / "repo", replicas=n, timeout_s=600)
            sets["3t1"] = start_replicas(root / "repo-1t", replicas=3, timeout_s=600)
            sets["1k"] = start_replicas(root / "repo", replicas=1, timeout_s=600, keepalive=True)
            targets = {**servers, **sets}
            rows = throughput_rounds(targets, models, args)
            for name in [k for k in sets if k != 3]:
                sets.pop(name).stop()  # the faults run on 3 replicas alone
            for server in servers.values():
                server.stop()
            faults = [
                fault(sets[3], 1, "crash", "minilm-embed", models["minilm-embed"], args),
                fault(sets[3], 2, "hang-then-crash", "minilm-embed", models["minilm-embed"], args),
            ]
        finally:
            for server in servers.values():
                server.stop()
            for replica_set in sets.values():
                replica_set.stop()
    args.load_after = os.getloadavg()[0]
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "serve-replicas.json").write_text(json.dumps({"rows": rows, "faults": faults}, indent=2))
    body = report(rows, faults, args)
    print(body)
    if not args.no_write:
        write_section("replicas", body)


def report(rows: list[dict], faults: list[dict], args) -> str:
    lines = [
        f"HTTP clients at concurrency {CLIENTS} on loopback, closed loop, real mixed-length texts; {args.rounds} "
        "interleaved rounds (the median shown), every answer checked against the runtime's. *direct*: one "
        "tritonserver, no balancer (one instance per model, auto threads: 2 for MiniLM, 1 for the tiny model; "
        "*3 instances*: three copies of each model in that one server); *N behind HAProxy*: N tritonservers, each "
        "with every model and auto threads (*1 thread each*: `--threads 1`), behind `trtpipe.serving.replicas`' "
        "HAProxy (round robin, one connection per request; *client keep-alive*: `keepalive=True`, clients keep "
        "their connection to HAProxy). *cores used*: CPU seconds of the servers, their stubs, HAProxy and the "
        "clients per second of the run; *requests per core-second*: what that CPU bought. The machine's "
        f"1-minute load average was {args.load_before:.1f} when the run began and {args.load_after:.1f} when it "
        "ended (2 cores; anything above 2 is other work competing with this).",
        "",
        "| model | target | req/s | × 1 replica | p50 ms | p99 ms | cores used | requests per core-second | "
        "requests | failed | wrong |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        one = next(r for r in rows if r["model"] == row["model"] and r["config"] == 1)
        target = LABELS.get(row["config"], f"{row['config']} behind HAProxy")
        lines.append(
            f"| {row['model']} | {target} | {row['throughput_rps']:.0f} | "
            f"{row['throughput_rps'] / one['throughput_rps']:.2f}× | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['cores']:.2f} | {row['per_core_s']:.0f} | {row['requests']} | {row['errors']} | {row['wrong']} |"
        )
    lines += [
        "",
        balancer_cost(rows),
        "",
        f"**Faults** (minilm-embed, 3 replicas, concurrency {CLIENTS}): the load runs {args.before_s:g} s, one "
        f"replica is killed, restarted on its ports {args.down_s:g} s after HAProxy takes it out, and the load goes "
        f"on {args.after_s:g} s after it is back. *in flight*: failed requests HAProxy logged as started on the "
        "killed replica before the kill and ended after it; *retried*: requests refused at connect by the dead "
        "replica before its checks failed, sent to another (their answers checked like the rest).",
        "",
        "| fault | sent | failed | of which in flight on it | retried (answered) | wrong | out after | "
        "restart | back after | req/s: 3 up → 2 up → 3 again | its requests after |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in faults:
        lines.append(
            f"| {f['fault']} | {f['sent']} | {f['failed']} | {f['failed_in_flight_on_it']} | {f['retried']} "
            f"({f['retried_ok']}) | {f['wrong']} | {f['leave_s']:.2f} s | {f['restart_s']:.2f} s | "
            f"{f['rejoin_s']:.2f} s | {f['rps_before']:.0f} → {f['rps_down']:.0f} → {f['rps_after']:.0f} | "
            f"{f['served_after']} |"
        )
    lines += ["", scaling_line(rows)]
    return "\n".join(lines)


def balancer_cost(rows: list[dict]) -> str:
    parts = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rps = {r["config"]: r["throughput_rps"] for r in rows if r["model"] == model}
        parts.append(
            f"{model} {rps[1] / rps['direct']:.2f}× direct ({rps['1k'] / rps['direct']:.2f}× with client keep-alive)"
        )
    return (
        "HAProxy in front of one replica: "
        + "; ".join(parts)
        + ". One connection per request costs a connect on each side, which matters only where a request is as short "
        "as a connect (the tiny model); it is the default because with kept-alive client connections HAProxy "
        "answers a request lost with its replica by closing the connection silently — no 502, no log line — so "
        "the fault accounting below could not be done."
    )


def scaling_line(rows: list[dict]) -> str:
    parts = []
    for model in dict.fromkeys(r["model"] for r in rows):
        rps = {r["config"]: r["throughput_rps"] for r in rows if r["model"] == model}
        per = {r["config"]: r["per_core_s"] for r in rows if r["model"] == model}
        parts.append(
            f"{model} {' / '.join(f'{per[n]:.0f}' for n in SETS)} requests per core-second and "
            f"{' / '.join(f'{rps[n]:.0f}' for n in SETS)} req/s with {' / '.join(map(str, SETS))} "
            f"replicas ({rps[2] / rps[1]:.2f}× and {rps[3] / rps[1]:.2f}× one replica; 1 thread each: "
            f"{rps['3t1'] / rps[1]:.2f}×), against {rps['direct']:.0f} for one server and {rps['direct-3i']:.0f} "
            "for one server with 3 instances"
        )
    return "Replicas on these 2 cores: " + "; ".join(parts) + "."


if __name__ == "__main__":
    main()
