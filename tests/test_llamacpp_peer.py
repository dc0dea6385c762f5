"""The llama.cpp peer's own logic, without llama-cpp-python (it lives in .venv-llamacpp, `make bench-peers`)."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest

from trtpipe.benchmark import llamacpp_peer as peer
from trtpipe.runtime import UserError


def row(ttft=None, tpot=None, error=None):
    return SimpleNamespace(ttft={"p50_ms": ttft}, tpot={"p50_ms": tpot}, error=error)


def test_verdict_judges_tpot_and_ttft_as_speed_ratios():
    text, ok = peer.verdict("TPOT", 5.0, 10.0)  # ours twice as fast
    assert ok is True and text.startswith("2.00×")
    text, ok = peer.verdict("TPOT", 10.0, 5.0)
    assert ok is False and "0.50×" in text and "100% faster" in text
    assert peer.verdict("TTFT", None, 5.0) == ("not measured (a side has no number: see its row)", None)


def test_p50_is_none_for_a_row_that_did_not_run():
    assert peer.p50(row(ttft=12.5, tpot=3.0), "tpot") == 3.0
    assert peer.p50(row(error="no venv"), "tpot") is None
    assert peer.p50(None, "ttft") is None


def test_checkpoint_gets_n_ctx_and_keeps_its_weights_linked(tmp_path):
    source = tmp_path / "hf"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_positions": 64}))
    (source / "model.safetensors").write_bytes(b"weights")
    out = peer.hf_with_n_ctx(source, tmp_path / "patched")
    config = json.loads((out / "config.json").read_text())
    assert config["n_ctx"] == 64 and config["n_positions"] == 64
    assert (
        os.path.islink(out / "model.safetensors") and (out / "model.safetensors").read_bytes() == b"weights"
    )
    assert json.loads((source / "config.json").read_text()) == {"model_type": "gpt2", "n_positions": 64}


def test_missing_venv_names_make_bench_peers(tmp_path, monkeypatch):
    monkeypatch.setattr(peer, "VENV", tmp_path / "nowhere")
    with pytest.raises(UserError, match="make bench-peers"):
        peer.LlamaCppWorker()
    with pytest.raises(UserError, match="make bench-peers"):
        peer.convert_script()


def test_worker_without_llama_cpp_answers_with_the_reason(tmp_path, monkeypatch):
    """The worker runs (protocol, stdout kept for answers) but llama_cpp is missing: one line, not a hang."""
    pytest.importorskip("numpy")
    if any(p for p in sys.path if os.path.isdir(os.path.join(p, "llama_cpp"))):
        pytest.skip("llama_cpp is importable here")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    monkeypatch.setattr(peer, "VENV", venv)
    with pytest.raises(UserError, match="No module named 'llama_cpp'"):
        peer.LlamaCppWorker()
