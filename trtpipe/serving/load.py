"""Bounded closed-loop load tests against a Triton server: N clients, each sending M requests back to back (HTTP
infer for answers; gRPC streaming for generation, where TTFT and TPOT are read off each token's arrival), and the
same streaming loop against an OpenAI-compatible completions server (server-sent events), so a peer's server is
measured by the same clock.

Throughput counts completed requests over wall time; latency percentiles are per request, client side (they
include tritonclient's own encode/decode, which on a small machine shares the CPUs with the server).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import numpy as np

Inputs = list[tuple[str, np.ndarray]]


def _http_inputs(pairs: Inputs):
    import tritonclient.http as http

    out = []
    for name, value in pairs:
        datatype = "BYTES" if value.dtype == np.object_ else http_dtype(value.dtype)
        tensor = http.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value, binary_data=True)
        out.append(tensor)
    return out


def http_dtype(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def run_load(
    url: str,
    model: str,
    make_inputs: Callable[[int, int], Inputs],
    clients: int = 8,
    requests: int = 200,
    outputs: list[str] | None = None,
    timeout_s: float = 120.0,
    check: Callable[[int, int, object], None] | None = None,
    stop: threading.Event | None = None,
) -> dict:
    """Run `clients` threads × `requests` HTTP requests (make_inputs(client, i) → [(name, array)]); stops at
    `timeout_s` (or when `stop` is set) whatever is left. Returns counts, throughput and p50/p90/p99 latency in
    ms. check(client, i, result), if given, judges each answer: an exception counts it in `wrong_answers`.
    `failures` lists the failed requests (the first 1,000) with their Unix send and failure times."""
    import tritonclient.http as http

    _loopback(url)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    failures: list[dict] = []
    wrong: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + timeout_s
    start_gate = threading.Barrier(clients + 1, timeout=60)

    def client(index: int) -> None:
        try:
            connection = http.InferenceServerClient(url, connection_timeout=30.0, network_timeout=60.0)
            wanted = (
                [http.InferRequestedOutput(name, binary_data=True) for name in outputs] if outputs else None
            )
        except Exception as exc:
            with lock:
                errors.append(f"client setup: {exc.__class__.__name__}: {exc}")
            start_gate.abort()  # nobody waits for a client that will never start
            return
        try:
            start_gate.wait()
            for i in range(requests):
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    break
                # built when sent: `requests` may be a bound, not a plan
                inputs = _http_inputs(make_inputs(index, i))
                sent, tick = time.time(), time.perf_counter()
                try:
                    result = connection.infer(model, inputs, outputs=wanted)
                except Exception as exc:  # counted and reported, the load goes on
                    with lock:
                        errors.append(f"{exc.__class__.__name__}: {exc}")
                        if len(failures) < 1000:
                            failures.append(
                                {"client": index, "index": i, "sent": sent, "failed": time.time()}
                            )
                    continue
                latencies[index].append(time.perf_counter() - tick)
                if check is not None:
                    try:
                        check(index, i, result)
                    except Exception as exc:
                        with lock:
                            wrong.append(f"request {i} of client {index}: {exc}")
        except threading.BrokenBarrierError:
            pass
        finally:
            connection.close()

    seconds = _drive(client, clients, start_gate, deadline, grace_s=30)
    done = np.array([t for per in latencies for t in per], dtype=np.float64) * 1000.0
    pct = (lambda q: float(np.percentile(done, q))) if len(done) else (lambda q: float("nan"))
    return {
        "model": model,
        "clients": clients,
        "requests_per_client": requests,
        "completed": int(len(done)),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "failures": failures,
        "wrong_answers": len(wrong),
        "first_wrong": wrong[0] if wrong else None,
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(done) / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(pct(50), 2),
        "p90_ms": round(pct(90), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(float(done.max()), 2) if len(done) else float("nan"),
    }


def run_stream_load(
    url: str,
    model: str,
    make_inputs: Callable[[int, int], Inputs],
    clients: int = 8,
    requests: int = 20,
    timeout_s: float = 300.0,
    keep_ids: bool = False,
) -> dict:
    """`clients` threads, each with its own gRPC stream, send `requests` generation requests one after another
    (make_inputs(client, i) → [(name, array)]) to a decoupled (streaming) model and time every token; no new
    request starts after `timeout_s`. Returns `summarize_streams` of the per-request records; keep_ids adds each
    request's new token ids (the model's `ids` output) under "ids", keyed "client/i"."""
    import tritonclient.grpc as grpc

    loop = _StreamLoop(url, clients, timeout_s)

    def client(index: int) -> None:
        import queue

        answers: queue.Queue = queue.Queue()
        try:
            connection = grpc.InferenceServerClient(url, channel_args=[("grpc.enable_http_proxy", 0)])
            connection.start_stream(
                callback=lambda result, error: answers.put((time.perf_counter(), result, error))
            )
        except Exception as exc:
            loop.failed(f"client setup: {exc.__class__.__name__}: {exc}")
            loop.start_gate.abort()
            return
        try:
            loop.start_gate.wait()
            for i in range(requests):
                if time.monotonic() > loop.deadline:
                    break
                inputs = _grpc_inputs(grpc, make_inputs(index, i))  # built when sent, not all up front
                sent = time.perf_counter()
                connection.async_stream_infer(model, inputs, enable_empty_final_response=True)
                times, ids, failure = [], [], None
                while True:
                    arrived, result, error = answers.get(timeout=600)
                    if error is not None:
                        failure = str(error)
                        break
                    response = result.get_response()
                    if response.outputs:
                        times.append(arrived)
                        if keep_ids:
                            ids += [int(t) for t in result.as_numpy("ids").ravel()]
                    if response.parameters["triton_final_response"].bool_param:
                        break
                if failure is not None:
                    loop.failed(failure)
                    continue
                loop.done(index, i, sent, times, ids)
        except threading.BrokenBarrierError:
            pass
        finally:
            connection.stop_stream()
            connection.close()

    return loop.report(loop.run(client), model, requests, keep_ids)


def run_openai_stream_load(
    url: str,
    make_body: Callable[[int, int], dict],
    clients: int = 8,
    requests: int = 20,
    timeout_s: float = 300.0,
    keep_ids: bool = False,
) -> dict:
    """The streaming closed loop of `run_stream_load` against an OpenAI-compatible server at `url` (host:port on
    loopback): each client thread keeps one HTTP connection and POSTs make_body(client, i) (a /v1/completions body;
    "stream" is set) one request after another, reading its server-sent events. A token's clock is the arrival of
    the event that carries it: tokens that arrive in one event share its time, as a client sees them. Counts tokens
    by the events' `token_ids` (vLLM's `return_token_ids`, set here), so every token is counted whatever its text.
    Returns the same report as run_stream_load."""
    import http.client
    import json

    loop = _StreamLoop(url, clients, timeout_s)
    host, port = url.rsplit(":", 1)
    model = ""

    def client(index: int) -> None:
        nonlocal model
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=600)
        try:
            loop.start_gate.wait()
            for i in range(requests):
                if time.monotonic() > loop.deadline:
                    break
                body = {**make_body(index, i), "stream": True, "return_token_ids": True}
                model = body.get("model", model)
                payload = json.dumps(body).encode()
                sent = time.perf_counter()
                try:
                    connection.request(
                        "POST", "/v1/completions", payload, {"Content-Type": "application/json"}
                    )
                    response = connection.getresponse()
                    if response.status != 200:
                        raise RuntimeError(f"HTTP {response.status}: {response.read()[:200]!r}")
                    times, ids = [], []
                    for line in response:
                        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                            continue
                        arrived = time.perf_counter()
                        for choice in json.loads(line[6:])["choices"]:
                            new = choice.get("token_ids") or []
                            times += [arrived] * len(new)
                            ids += new
                except Exception as exc:  # noqa: BLE001 - a failed request is counted, the loop goes on
                    connection.close()
                    loop.failed(f"{exc.__class__.__name__}: {exc}")
                    continue
                loop.done(index, i, sent, times, ids)
        except threading.BrokenBarrierError:
            pass
        finally:
            connection.close()

    seconds = loop.run(client)  # `model` is known once a client has sent
    return loop.report(seconds, model, requests, keep_ids)


def _loopback(url: str) -> None:
    if not url.startswith(("127.0.0.1:", "localhost:", "[::1]:")):
        raise ValueError(f"load tests target loopback only, not {url}")


class _StreamLoop:
    """What the two streaming closed loops share: the loopback check, the clients' start gate and deadline, the
    per-request records and errors (from the client threads), and the report."""

    def __init__(self, url: str, clients: int, timeout_s: float):
        _loopback(url)
        self.clients = clients
        self.records: list[dict] = []
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + timeout_s
        self.start_gate = threading.Barrier(clients + 1, timeout=60)

    def done(self, client: int, i: int, sent: float, times: list[float], ids: list[int]) -> None:
        with self.lock:
            self.records.append({"sent": sent, "token_times": times, "client": client, "i": i, "ids": ids})

    def failed(self, message: str) -> None:
        with self.lock:
            self.errors.append(message)

    def run(self, client) -> float:
        """client(index) on every client thread (_drive): the seconds from the start gate to the last one's end."""
        return _drive(client, self.clients, self.start_gate, self.deadline, grace_s=600)

    def report(self, seconds: float, model: str, requests: int, keep_ids: bool) -> dict:
        """`summarize_streams` of the records, with the run's facts (and each request's ids with keep_ids)."""
        report = summarize_streams(self.records, seconds)
        report.update(
            model=model, clients=self.clients, requests_per_client=requests, errors=len(self.errors)
        )
        report["first_error"] = self.errors[0] if self.errors else None
        if keep_ids:
            report["ids"] = {f"{r['client']}/{r['i']}": r["ids"] for r in self.records}
        return report


def _drive(client, clients: int, start_gate: threading.Barrier, deadline: float, grace_s: float) -> float:
    """Start `clients` threads running client(index), open the start gate together, wait for them (up to the
    deadline plus `grace_s` for requests in flight); the seconds from the gate to the last one's end."""
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start_gate.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic() + grace_s))
    return time.perf_counter() - began


def _grpc_inputs(grpc, pairs: Inputs):
    out = []
    for name, value in pairs:
        datatype = "BYTES" if value.dtype == np.object_ else http_dtype(value.dtype)
        tensor = grpc.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        out.append(tensor)
    return out


def summarize_streams(records: list[dict], seconds: float) -> dict:
    """Requests/s, generated tokens/s, latency p50/p90/p99, TTFT p50/p99 and TPOT p50/p99 (each request's mean gap
    between tokens after its first) from per-request token arrival times."""
    done = [r for r in records if r["token_times"]]
    latency = np.array([r["token_times"][-1] - r["sent"] for r in done]) * 1000.0
    ttft = np.array([r["token_times"][0] - r["sent"] for r in done]) * 1000.0
    tpot = (
        np.array(
            [
                (r["token_times"][-1] - r["token_times"][0]) / (len(r["token_times"]) - 1)
                for r in done
                if len(r["token_times"]) > 1
            ]
        )
        * 1000.0
    )
    tokens = sum(len(r["token_times"]) for r in done)

    def pct(values: np.ndarray, q: float) -> float | None:
        return round(float(np.percentile(values, q)), 2) if len(values) else None

    return {
        "completed": len(done),
        "seconds": round(seconds, 3),
        "throughput_rps": round(len(done) / seconds, 2) if seconds > 0 else 0.0,
        "tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else 0.0,
        **{f"p{q}_ms": pct(latency, q) for q in (50, 90, 99)},
        "ttft_p50_ms": pct(ttft, 50),
        "ttft_p99_ms": pct(ttft, 99),
        "tpot_p50_ms": pct(tpot, 50),
        "tpot_p99_ms": pct(tpot, 99),
    }


__all__ = ["run_load", "run_openai_stream_load", "run_stream_load", "summarize_streams"]
