"""Optional extras (`make slow`): full-size exports against PyTorch and a longer fuzzing run."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trtpipe.runtime import Bundle, Generator, UserError, load_pipeline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "preset, task", [("bert-base", "classify"), ("albert-base", "qa"), ("gpt2", "generate")]
)
def test_full_size_export_parity(make_bundle, preset, task):
    bundle = Bundle.load(make_bundle(preset, task))
    parity = bundle.variants["fp32"]["parity"]["ort-cpu"]
    assert parity["verdict"] == "pass", parity
    assert bundle.variants["fp32"]["bytes"] <= 1.1 * bundle.model["parameter_bytes"]


def test_full_size_gpt2_generates_like_the_oracle(make_bundle):
    from trtpipe.runtime import open_session
    from trtpipe.runtime.generate import generate_uncached

    path = make_bundle("gpt2", "generate")
    generator = Generator(path)
    bundle = Bundle.load(path)
    ids = generator.encode("The list of built-in functions")[0][0]
    fast = generator.generate([ids], max_new_tokens=8)[0].ids
    m = bundle.model
    slow = generate_uncached(
        open_session(bundle), ids, 8, m["num_layers"], m["num_heads"], m["head_dim"], eos_id=generator.eos_id
    )
    assert fast == slow


@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(st.text(max_size=600), max_size=8), batch=st.integers(1, 9))
def test_long_fuzz_of_the_classify_pipeline(make_bundle, texts, batch):
    pipe = _pipe(make_bundle)
    try:
        result = pipe.classify(texts, batch_size=batch, truncate=True)
    except UserError:
        return
    assert len(result) == len(texts)


_PIPES: dict = {}


def _pipe(make_bundle):
    if "p" not in _PIPES:
        _PIPES["p"] = load_pipeline(make_bundle("tiny-albert", "classify"))
    return _PIPES["p"]
