"""Replicas behind a load balancer on this machine: three tritonservers on loopback behind HAProxy (Debian's
package), driven by the load client. Every answer through the balancer equals the runtime's; a replica killed
with SIGKILL mid-load costs only the requests it was running, the balancer retries the rest elsewhere, and the
replica rejoins when it comes back on its ports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trtpipe.runtime import UserError, load_pipeline
from trtpipe.runtime.bundle import Bundle
from trtpipe.serving import RepoOptions, write_repository
from trtpipe.serving import replicas as replicas_module
from trtpipe.serving.load import run_load
from trtpipe.serving.replicas import haproxy_config, parse_log, start_replicas

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "The film was a delight from start to finish.",
    "Terrible service, cold food.",
    "An average day at the office",
    "Stock prices fell sharply on Monday.",
    "Cats sleep for most of the day.",
]
CLASSIFY = "tiny-bert-classify"
CLIENTS = 6
SLACK_S = 0.05  # HAProxy's log has millisecond dates, taken once per event-loop pass
NO_HAPROXY = (
    "haproxy is not installed (apt-get install haproxy; `make install` does it where apt-get is available)"
)


def _text(value: str) -> np.ndarray:
    return np.array([[value.encode()]], dtype=np.object_)


@pytest.fixture(scope="module")
def classify(make_bundle):
    return make_bundle("tiny-bert", "classify")


@pytest.fixture(scope="module")
def embed(make_bundle):
    return make_bundle("tiny-bert", "embed")


@pytest.fixture(scope="module")
def expected(classify, embed):
    """What the runtime answers directly, per text: label, scores in label-id order, embedding."""
    answers = load_pipeline(classify).classify(TEXTS, top_k=None)
    names = [label for _, label in sorted(Bundle.load(classify).labels.items())]
    vectors = load_pipeline(embed).embed(TEXTS)
    return {
        text: (a["label"], np.array([a["scores"][n] for n in names]), vector)
        for text, a, vector in zip(TEXTS, answers, vectors, strict=True)
    }


@pytest.fixture(scope="module")
def balanced(tmp_path_factory, classify, embed):
    """Three replicas of one repository (tiny BERT classify + embed) behind HAProxy."""
    if shutil.which("haproxy") is None:
        pytest.skip(NO_HAPROXY)
    root = tmp_path_factory.mktemp("replicas")
    write_repository([str(classify), str(embed)], root / "repo", RepoOptions(max_batch=8))
    try:
        replica_set = start_replicas(root / "repo", replicas=3, timeout_s=120)
    except UserError as exc:
        if "haproxy" in str(exc):
            raise
        pytest.skip(f"tritonserver cannot start on this machine: {exc}")
    try:
        yield replica_set
    finally:
        replica_set.stop()


def _classify_inputs(client: int, index: int):
    return [("text", _text(TEXTS[(client + index) % len(TEXTS)]))]


def _checker(expected):
    def check(client: int, index: int, result) -> None:
        label, scores, _ = expected[TEXTS[(client + index) % len(TEXTS)]]
        assert result.as_numpy("label")[0, 0].decode() == label
        np.testing.assert_allclose(result.as_numpy("scores")[0], scores, atol=1e-5, rtol=0)

    return check


def _sessions(replica_set) -> dict[str, int]:
    return {name: int(row["stot"]) for name, row in replica_set.stats().items() if name != "BACKEND"}


def test_the_config_holds_the_checks_and_the_retry_rules_and_haproxy_accepts_it(tmp_path):
    text = haproxy_config(8000, [9001, 9002], tmp_path / "admin.sock")
    for line in (
        "bind 127.0.0.1:8000",
        "server replica0 127.0.0.1:9001 check",
        "server replica1 127.0.0.1:9002 check",
        "option httpchk GET /v2/health/ready",
        "http-check expect status 200",
        "retry-on conn-failure",
        "option redispatch 1",
        "option httpclose",
        "inter 250ms",
    ):
        assert line in text, line
    assert "empty-response" not in text and "all-retryable-errors" not in text  # never run a request twice
    kept = haproxy_config(8000, [9001], tmp_path / "admin.sock", keepalive=True)
    assert "option http-server-close" in kept and "option httpclose" not in kept
    if shutil.which("haproxy") is None:
        pytest.skip(NO_HAPROXY)
    (tmp_path / "haproxy.cfg").write_text(text)
    checked = subprocess.run(
        ["haproxy", "-c", "-f", str(tmp_path / "haproxy.cfg")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_the_request_log_parses_and_haproxys_own_lines_are_skipped():
    log = (
        "trtpipe-request 1700000000.250 0 10 40 replica1 200 +1 ----\n"
        "[WARNING]  (12) : Server replicas/replica1 is DOWN, reason: Layer4 connection problem\n"
        "trtpipe-request 1700000000.300 0 0 500 replica0 502 0 SH--\n"
        "trtpipe-request 1700000000.3"
    )
    first, second = parse_log(log)
    assert (first.replica, first.status, first.retries) == ("replica1", 200, 1)
    assert first.start == pytest.approx(1700000000.26) and first.end == pytest.approx(1700000000.30)
    assert (second.replica, second.status, second.termination) == ("replica0", 502, "SH--")


def test_without_haproxy_it_is_one_line_naming_the_fix(monkeypatch, tmp_path):
    monkeypatch.setattr(replicas_module.shutil, "which", lambda name: None)
    with pytest.raises(UserError, match="apt-get install haproxy"):
        start_replicas(tmp_path, replicas=2)
    with pytest.raises(UserError, match="^replicas must be at least 1") as refused:
        start_replicas(tmp_path, replicas=0)
    assert refused.value.render(lambda f: "--" + f).startswith("--replicas must")


def test_every_request_through_the_balancer_is_answered_like_the_runtime(balanced, expected):
    import tritonclient.http as http

    before = _sessions(balanced)
    report = run_load(
        balanced.http_url,
        CLASSIFY,
        _classify_inputs,
        clients=CLIENTS,
        requests=60,
        outputs=["label", "scores"],
        timeout_s=60,
        check=_checker(expected),
    )
    assert report["errors"] == 0, report["first_error"]
    assert report["wrong_answers"] == 0, report["first_wrong"]
    assert report["completed"] == CLIENTS * 60
    served = {name: count - before[name] for name, count in _sessions(balanced).items()}
    assert sum(served.values()) == CLIENTS * 60 and min(served.values()) >= 60, (
        served
    )  # round robin: each a third

    client = http.InferenceServerClient(balanced.http_url)
    for _ in range(3):  # embeddings too, one batch of every text on each replica in turn
        tensor = http.InferInput("text", [len(TEXTS), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[t.encode()] for t in TEXTS], dtype=np.object_))
        vectors = client.infer("tiny-bert-embed", [tensor]).as_numpy("embedding")
        np.testing.assert_allclose(vectors, np.stack([expected[t][2] for t in TEXTS]), atol=1e-5, rtol=0)
    client.close()


@pytest.mark.parametrize("fault", ["crash", "hang-then-crash"])
def test_a_replica_killed_mid_load_costs_only_its_requests_in_flight_and_rejoins(
    fault, balanced, expected, capsys
):
    """crash: SIGKILL mid-load (a tiny model's requests last a millisecond: often none is in flight on it then).
    hang-then-crash: SIGSTOP for 0.3 s first, so requests pile up on it, then SIGKILL: those fail, and only those."""
    logged_before = len(balanced.requests())
    stop, report = threading.Event(), {}

    def load() -> None:
        report.update(
            run_load(
                balanced.http_url,
                CLASSIFY,
                _classify_inputs,
                clients=CLIENTS,
                requests=10**9,
                outputs=["label", "scores"],
                timeout_s=90,
                check=_checker(expected),
                stop=stop,
            )
        )

    driver = threading.Thread(target=load, daemon=True)
    driver.start()
    try:
        time.sleep(1.5)
        pid = balanced.servers[1].process.pid
        if fault == "hang-then-crash":
            os.kill(pid, signal.SIGSTOP)  # it accepts connections (the kernel does) and answers nothing
            time.sleep(0.3)
        killed = balanced.kill(1)  # SIGKILL to the replica's process group: server and stubs
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        leave_s = balanced.wait_status(1, "DOWN", timeout_s=5)
        time.sleep(1.0)  # the two others carry the load alone
        balanced.restart(1)  # same ports
        back = time.time()
        rejoin_s = balanced.wait_status(1, "UP", timeout_s=5)
        time.sleep(1.0)
    finally:
        stop.set()
        driver.join(60)
    sent = report["completed"] + report["errors"]
    deadline = time.monotonic() + 5
    while len(log := balanced.requests()[logged_before:]) < sent and time.monotonic() < deadline:
        time.sleep(0.05)  # HAProxy logs a request once its answer has gone out
    with capsys.disabled():
        print(
            f"\nreplicas ({fault}): {sent} requests through 3 replicas, one killed: {report['errors']} failed, "
            f"{sum(1 for r in log if r.retries)} retried; out {leave_s:.2f}s after the kill, back "
            f"{rejoin_s:.2f}s after its restart"
        )

    # HAProxy saw every request the clients sent, and logged it (once, in a CI run, it logged one more than the
    # clients counted: the message says what the log held, to tell a client-side retry from a stray line)
    assert len(log) == sent, (sent, report["errors"], Counter((r.status, r.termination[:2]) for r in log))
    assert report["wrong_answers"] == 0, report["first_wrong"]  # retried ones included
    failed = [r for r in log if r.status != 200]
    # only what replica1 was running when it died: a 502 each, logged, counted by the clients too
    assert report["errors"] == len(failed) <= CLIENTS, (report["first_error"], failed)
    if fault == "hang-then-crash":
        assert failed  # what it held when it died is lost (a 502 each), never run a second time
    for r in failed:
        assert (r.replica, r.status, r.termination[:2]) == ("replica1", 502, "SH"), r
        assert r.start <= killed + SLACK_S and r.end >= killed - SLACK_S, (r, killed)
    for failure in report["failures"]:
        assert failure["sent"] <= killed + SLACK_S <= failure["failed"] + 2 * SLACK_S, (failure, killed)
    # requests the balancer sent to the dead replica before its checks failed were refused at connect and retried
    # on the others; they got the same answers (checked above)
    retried = [r for r in log if r.retries]
    assert retried and all(r.status == 200 and r.replica != "replica1" for r in retried)
    assert all(r.start >= killed - 1.0 for r in retried)
    on_dead = [r for r in log if r.replica == "replica1" and killed + SLACK_S < r.start < back - SLACK_S]
    assert on_dead == []  # nothing was answered by replica1 while it was down
    rejoined = [r for r in log if r.replica == "replica1" and r.start >= back]
    assert rejoined and all(r.status == 200 for r in rejoined)  # back in the rotation
    assert leave_s < 2.0 and rejoin_s < 2.0
    assert balanced.status() == {"replica0": "UP", "replica1": "UP", "replica2": "UP"}


def test_triton_serve_replicas_cli_runs_behind_haproxy_and_stops_by_itself(balanced):
    result = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "triton-serve", str(balanced.repositories[0])]
        + ["--replicas", "2", "--http-port", "0", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ready: HTTP http://127.0.0.1:" in result.stdout and "HAProxy → 2 replicas" in result.stdout
    assert CLASSIFY in result.stdout and "HAProxy and the replicas stopped" in result.stderr
