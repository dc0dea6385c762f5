"""The fused step graph (decoding rows and one prompt chunk in one pass) gives exactly what the two passes give."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from trtpipe.optimize.kv_fused import fused_feeds, rewrite_kv_fused, run_fused
from trtpipe.runtime import Bundle, Generator


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


def test_one_fused_pass_equals_a_decode_step_and_a_chunk(gpt2, tmp_path):
    bundle = Bundle.load(gpt2)
    model = bundle.model
    path = tmp_path / "model.kv-fused.onnx"
    plain = onnx.load(bundle.model_path("kv-inplace"))
    onnx.save(rewrite_kv_fused(plain, model["num_layers"], model["num_heads"], model["head_dim"]), path)
    fused = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    runner = Generator(gpt2, kv="inplace").runner
    rng = np.random.default_rng(3)
    caches = [runner.new_cache(5, 64) for _ in range(2)]
    for buffers in zip(*(c.buffers[0] for c in caches)):  # the same cached K/V in both
        value = rng.standard_normal(buffers[0].size).astype(np.float32)
        for buffer in buffers:
            buffer[:] = value
    vocab = runner.vocab
    tokens, lengths = rng.integers(0, vocab, 3), np.array([5, 11, 2])
    chunk, row, past = [int(t) for t in rng.integers(0, vocab, 7)], 4, 6

    step, _ = runner.decode(tokens, lengths, caches[0], None)
    last = np.empty((1, vocab), np.float32)
    runner.prefill_row(chunk, caches[0], row, past, last)
    got = run_fused(fused, caches[1], fused_feeds(tokens, lengths, chunk, past), row)

    assert got.shape == (4, vocab)
    np.testing.assert_allclose(got[:3], step[:3], rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[3], last[0], rtol=0, atol=1e-5)
    for a, b in zip(caches[0].buffers[0], caches[1].buffers[0]):  # the same K/V written in the same places
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="GroupQueryAttention"):
        rewrite_kv_fused(
            onnx.load(bundle.model_path()), model["num_layers"], model["num_heads"], model["head_dim"]
        )
