"""GPT-2: the decoder export contract, the torch-free generation loop against its oracles, interop, bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from trtpipe.cli import app
from trtpipe.runtime import Bundle, Generator, PromptTruncated, Sampling, UserError, open_session
from trtpipe.runtime.generate import generate_uncached
from trtpipe.runtime.kv import KVCache
from trtpipe.runtime.sampling import sample_next
from trtpipe.runtime.text import TextStream

PROMPTS = [
    "The list of",
    "Return the value",
    "A class is",
    "If the",
    "Python",
    "The exception is raised when",
    "Names listed in a",
    "for loop",
]


@pytest.fixture(scope="session")
def gpt2_bundle(make_bundle):
    return make_bundle("tiny-gpt2", "generate", logits="all")


@pytest.fixture(scope="session")
def generator(gpt2_bundle):
    return Generator(gpt2_bundle)


def test_decoder_graph_contract(gpt2_bundle):
    bundle = Bundle.load(gpt2_bundle)
    model = onnx.load(str(bundle.model_path()))
    assert "If" not in {n.op_type for n in model.graph.node}
    names = [i.name for i in model.graph.input]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    outputs = {
        o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in model.graph.output
    }
    assert outputs["logits"] == ["batch", 1, 2048]  # last position only
    assert outputs["present.1.value"] == ["batch", 4, "total_sequence", 8]
    past = model.graph.input[3].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in past] == ["batch", 4, "past_sequence", 8]
    # the tied wte / lm_head matrix is stored once
    vocab_mats = [i for i in model.graph.initializer if 2048 in i.dims and len(i.dims) == 2]
    assert len(vocab_mats) == 1
    assert bundle.variants["fp32"]["bytes"] <= 1.1 * bundle.model["parameter_bytes"]
    assert {"fp32", "all-logits", "kv-inplace"} <= set(bundle.variants)
    assert (gpt2_bundle / "genai_config.json").exists()


def test_export_parity_levels_all_pass(gpt2_bundle):
    parity = Bundle.load(gpt2_bundle).variants["fp32"]["parity"]["ort-cpu"]
    assert parity["verdict"] == "pass"
    assert {"present.0.key", "present.1.value", "logits"} <= set(parity["outputs"])
    levels = parity["levels"]
    assert levels["cache"]["passed"] and levels["cache"]["max_abs"] <= 1e-4
    assert levels["cache_pingpong"]["passed"]
    assert levels["topk"]["top1"] == 1.0
    assert levels["sequences"]["equal"] == levels["sequences"]["prompts"] >= 8
    assert levels["batch"]["passed"]


@pytest.mark.parametrize("kv", ["inplace", "pingpong"])
def test_cached_equals_uncached_oracle(gpt2_bundle, kv):
    bundle = Bundle.load(gpt2_bundle)
    gen = Generator(bundle, kv=kv)
    standard = open_session(bundle)
    model = bundle.model
    for prompt in PROMPTS[:4]:
        ids = gen.encode(prompt)[0][0]
        cached = gen.generate([ids], max_new_tokens=12)[0].ids
        oracle = generate_uncached(
            standard, ids, 12, model["num_layers"], model["num_heads"], model["head_dim"], eos_id=gen.eos_id
        )
        assert cached == oracle, (prompt, kv)


def test_greedy_ids_match_transformers_generate(generator):
    import torch
    from transformers import GPT2LMHeadModel

    from trtpipe.export.inputs import load_source

    model = load_source("tiny-gpt2", "generate").model
    assert isinstance(model, GPT2LMHeadModel)
    for prompt in PROMPTS:
        ids = generator.encode(prompt)[0][0]
        ours = generator.generate([ids], max_new_tokens=16)[0].ids
        with torch.no_grad():
            theirs = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=0,
            )
        assert ours == theirs[0, len(ids) :].tolist(), prompt
    assert len({tuple(generator.generate(p, max_new_tokens=6)[0].ids) for p in PROMPTS}) > 4  # not degenerate


@pytest.mark.parametrize("kv", ["inplace", "pingpong"])
def test_mixed_length_batch_equals_single_prompts(gpt2_bundle, kv):
    gen = Generator(gpt2_bundle, kv=kv)
    batched = gen.generate(PROMPTS, max_new_tokens=10)
    for prompt, completion in zip(PROMPTS, batched):
        assert completion.ids == gen.generate(prompt, max_new_tokens=10)[0].ids, prompt


def test_kv_buffers_are_allocated_once_per_request(gpt2_bundle, monkeypatch):
    created = []
    original = KVCache.__init__

    def tracking(self, *args, **kwargs):
        original(self, *args, **kwargs)
        created.append(self)

    monkeypatch.setattr(KVCache, "__init__", tracking)
    gen = Generator(gpt2_bundle, kv="pingpong")
    stats = {}
    tokens = list(gen.stream(PROMPTS[:2], max_new_tokens=20, stats=stats))
    assert len(created) == 1
    cache = created[0]
    assert cache.capacity == max(len(gen.encode(p)[0][0]) for p in PROMPTS[:2]) + 20
    assert not cache.inplace and len(cache.buffers) == 2  # ping-pong
    addresses = [b.ctypes.data for copy in cache.buffers for b in copy]
    assert 20 <= len(tokens) <= 40 and stats["kv"] == "pingpong"  # a row may end early at EOS
    assert addresses == [b.ctypes.data for copy in cache.buffers for b in copy]


def test_in_place_decoding_binds_once_per_request(gpt2_bundle, monkeypatch):
    """In place, the KV and logits buffers never move: one IOBinding per prefilled row and one for all decode
    steps — a step never builds a new binding."""
    gen = Generator(gpt2_bundle, kv="inplace")
    session = gen.runner.session.session
    made = []
    original = session.io_binding

    def counting():
        made.append(1)
        return original()

    monkeypatch.setattr(session, "io_binding", counting)
    for prompts in (PROMPTS[:1], PROMPTS[:3]):
        made.clear()
        tokens = list(gen.stream(prompts, 16, ignore_eos=True))
        assert len(tokens) == 16 * len(prompts)
        assert len(made) == len(prompts) + 1


def test_repetition_history_is_one_buffer_written_in_place(generator, monkeypatch):
    """The repetition penalty's history is allocated once per request and written in place: no step copies a
    growing array (it was np.append per token per row)."""
    import trtpipe.runtime.generate as generate_module

    seen = []
    original = generate_module.sample_next

    def spy(logits, sampling, rng, history=None):
        seen.append([(row.__array_interface__["data"][0], len(row), row.base is not None) for row in history])
        return original(logits, sampling, rng, history)

    monkeypatch.setattr(generate_module, "sample_next", spy)
    prompts = PROMPTS[:2]
    lengths = [len(generator.encode(p)[0][0]) for p in prompts]
    list(generator.stream(prompts, 12, Sampling(repetition_penalty=1.3), ignore_eos=True))
    assert len(seen) == 12
    for row in range(2):
        assert len({step[row][0] for step in seen}) == 1  # the same memory every step
        assert all(step[row][2] for step in seen)  # a view of the request's buffer, not a new array
        assert [step[row][1] for step in seen] == [lengths[row] + i for i in range(12)]


def test_repetition_penalty_generation_matches_transformers(generator):
    import torch

    from trtpipe.export.inputs import load_source

    model = load_source("tiny-gpt2", "generate").model
    for prompt in PROMPTS[:4]:
        ids = generator.encode(prompt)[0][0]
        ours = generator.generate([ids], max_new_tokens=16, sampling=Sampling(repetition_penalty=1.3))[0].ids
        with torch.no_grad():
            theirs = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=16,
                do_sample=False,
                repetition_penalty=1.3,
                pad_token_id=0,
                eos_token_id=0,
            )
        assert ours == theirs[0, len(ids) :].tolist(), prompt


def test_optimum_ortmodel_loads_our_export_and_agrees(gpt2_bundle, generator):
    import torch
    from optimum.onnxruntime import ORTModelForCausalLM

    model = ORTModelForCausalLM.from_pretrained(
        gpt2_bundle,
        file_name="model.onnx",
        use_cache=True,
        use_io_binding=False,
        provider="CPUExecutionProvider",
    )
    for prompt in PROMPTS[:4]:
        ids = generator.encode(prompt)[0][0]
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=0,
        )
        assert out[0, len(ids) :].tolist() == generator.generate([ids], max_new_tokens=12)[0].ids


def test_onnxruntime_genai_runs_our_export_and_agrees(gpt2_bundle, generator):
    og = pytest.importorskip("onnxruntime_genai")
    config = og.Config(str(gpt2_bundle))
    config.clear_providers()
    model = og.Model(config)
    for prompt in PROMPTS[:4]:
        ids = generator.encode(prompt)[0][0]
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(ids) + 12, do_sample=False, batch_size=1)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(ids, dtype=np.int32))
        theirs = []
        while not gen.is_done():
            gen.generate_next_token()
            theirs.append(int(gen.get_next_tokens()[0]))
        ours = generator.generate([ids], max_new_tokens=12)[0].ids
        assert theirs[: len(ours)] == ours, prompt


def test_sampling_is_seeded_and_degenerates_to_greedy(generator):
    greedy = generator.generate(PROMPTS[0], max_new_tokens=12)[0].ids
    a = generator.generate(PROMPTS[0], max_new_tokens=12, sampling=Sampling(temperature=1.0, seed=7))[0].ids
    b = generator.generate(PROMPTS[0], max_new_tokens=12, sampling=Sampling(temperature=1.0, seed=7))[0].ids
    c = generator.generate(PROMPTS[0], max_new_tokens=12, sampling=Sampling(temperature=1.0, seed=8))[0].ids
    assert a == b and a != c
    assert (
        generator.generate(
            PROMPTS[0], max_new_tokens=12, sampling=Sampling(temperature=0.7, top_k=1, seed=3)
        )[0].ids
        == greedy
    )
    assert (
        generator.generate(
            PROMPTS[0], max_new_tokens=12, sampling=Sampling(temperature=0.7, top_p=1e-6, seed=3)
        )[0].ids
        == greedy
    )


@pytest.mark.parametrize("temperature", [5e-324, 1e-45, 1e-38, 1e-20])
def test_a_tiny_temperature_samples_the_argmax_without_nan(temperature):
    """logits / T overflowed to inf for a tiny T, and inf - inf made every probability NaN (the fuzz test's
    warnings): such a softmax is one-hot, so the argmax comes back, and numpy warns about nothing."""
    import warnings

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 30, (3, 500)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for top_k, top_p in ((0, 1.0), (5, 1.0), (0, 0.9)):
            sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p, seed=0)
            assert (sample_next(logits, sampling, rng) == logits.argmax(-1)).all()


def test_greedy_sampling_reads_the_logits_without_copying_them():
    """Every decode step samples: greedy without a penalty must not allocate a [B, V] copy of the logits (200 KiB
    per step for GPT-2's vocabulary), and no mode may change the caller's logits."""
    import tracemalloc

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 50257)).astype(np.float32)
    before = logits.copy()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        ids = sample_next(logits, Sampling(), rng)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < logits.nbytes // 10, peak
    np.testing.assert_array_equal(ids, before.argmax(-1))
    history = [np.array([int(ids[0])]), np.array([int(ids[1])])]
    for sampling in (Sampling(repetition_penalty=1.3), Sampling(temperature=0.8, top_p=0.9, seed=1)):
        sample_next(logits, sampling, rng, history)
        np.testing.assert_array_equal(logits, before)


def test_top_k_top_p_keep_the_same_set_as_transformers():
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (4, 5000)).astype(np.float32)
    for top_k, top_p in ((0, 0.9), (50, 1.0), (40, 0.8), (0, 0.5)):
        scores = torch.tensor(logits)
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        allowed = [set(np.flatnonzero(np.isfinite(row.numpy()))) for row in scores]
        seen = [set() for _ in range(4)]
        rng2 = np.random.default_rng(1)
        for _ in range(300):
            picks = sample_next(logits, Sampling(temperature=1.0, top_k=top_k, top_p=top_p), rng2)
            for row, pick in enumerate(picks):
                seen[row].add(int(pick))
        for row in range(4):
            assert seen[row] <= allowed[row], (top_k, top_p)


def test_repetition_penalty_matches_transformers():
    import torch
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    from trtpipe.runtime.sampling import apply_repetition_penalty

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 100)).astype(np.float32)
    history = [np.array([1, 5, 5, 7]), np.array([0, 99])]
    ours = logits.copy()
    apply_repetition_penalty(ours, history, 1.3)
    proc = RepetitionPenaltyLogitsProcessor(1.3)
    for row in range(2):
        theirs = proc(torch.tensor(history[row])[None], torch.tensor(logits[row : row + 1]))[0].numpy()
        np.testing.assert_allclose(ours[row], theirs, rtol=1e-6)


def test_stop_strings_end_the_row_and_never_stream_partially(generator):
    full = generator.generate(PROMPTS[1], max_new_tokens=16)[0].text
    assert len(full) > 6
    stop = full[3:6]
    streamed = [t.text for t in generator.stream(PROMPTS[1], max_new_tokens=16, stop=[stop])]
    text = "".join(streamed)
    assert stop not in text and full.startswith(text) and len(text) <= full.index(stop)
    completion = generator.generate(PROMPTS[1], max_new_tokens=16, stop=[stop])[0]
    assert completion.finish == "stop" and completion.text == text


def test_text_stream_never_splits_utf8_characters(generator):
    text = "héllo wörld — naïve café ☕ 🙂 ok"
    ids = generator.encoder.encode_prompt(text)
    stream = TextStream(generator.encoder)
    pieces = [stream.put(i) for i in ids]
    assert "".join(pieces) == generator.encoder.decode(ids)
    assert not any("\ufffd" in p for p in pieces)
    assert len(ids) > len(text.split())  # multi-byte characters really were split into byte-level pieces


def test_perplexity_all_logits_equals_cached_and_torch(gpt2_bundle, tmp_path):
    import math

    import torch

    from trtpipe import corpus
    from trtpipe.export.inputs import load_source
    from trtpipe.runtime.score import perplexity

    text = " ".join(corpus.sample(6))
    fast = perplexity(gpt2_bundle, text, window=64, stride=32)
    bundle = Bundle.load(gpt2_bundle)
    del bundle.manifest["variants"]["all-logits"]
    slow = perplexity(bundle, text, window=64, stride=32)
    assert fast["method"].startswith("all-logits") and slow["method"].startswith("teacher-forced")
    assert abs(fast["nll"] - slow["nll"]) < 1e-4 and fast["scored"] == slow["scored"] == fast["tokens"] - 1
    model = load_source("tiny-gpt2", "generate").model
    ids = Generator(gpt2_bundle).encoder.encode_prompt(text)
    nll, count, prev = 0.0, 0, 0
    for begin in range(0, len(ids), 32):
        end = min(begin + 64, len(ids))
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[begin:end]])).logits[0].double(), -1)
        for pos in range(max(prev, begin + 1), end):
            nll -= float(logp[pos - begin - 1, ids[pos]])
            count += 1
        prev = end
        if end == len(ids):
            break
    assert math.isclose(fast["nll"], nll / count, abs_tol=1e-4)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{b}", "x", "--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1"),
        (["{b}", "x", "--temperature", "-1"], "--temperature must be ≥ 0"),
        (["{b}", "x", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["{b}", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["{b}", "x", "--top-k", "-2"], "--top-k must be ≥ 0"),
        (["{b}", ""], "empty"),
        (["{b}", "word " * 300, "-n", "8"], "--truncate"),
        (["{b}", "x", "--kv", "magic"], "kv must be"),
    ],
)
def test_generate_bad_input(gpt2_bundle, args, message):
    result = CliRunner().invoke(app, ["generate", *[a.format(b=gpt2_bundle) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_errors_name_the_argument_in_each_callers_words(gpt2_bundle, generator):
    """The Python API names keywords (temperature, max_new_tokens, truncate=True); the CLI names its flags; a Triton
    client (render(switch=False)) is offered no truncate, which its requests cannot pass."""
    from trtpipe.runtime.errors import cli_flag

    with pytest.raises(UserError) as bad:
        Sampling(temperature=-1)
    assert str(bad.value) == "temperature must be ≥ 0 (0 = greedy), got -1"
    assert bad.value.render(cli_flag).startswith("--temperature must be ≥ 0")
    with pytest.raises(UserError) as long:
        generator.generate("word " * 300, max_new_tokens=8)
    text = str(long.value)
    assert "with max_new_tokens 8 it must be ≤ 248" in text and "--" not in text
    assert text.endswith("; shorten it or pass truncate=True to keep its tail")
    cli = long.value.render(cli_flag)
    assert "with --max-new-tokens 8 it must be ≤ 248" in cli and cli.endswith(
        "or pass --truncate to keep its tail"
    )
    assert long.value.render(switch=False).endswith("; shorten it")
    result = CliRunner().invoke(app, ["generate", str(gpt2_bundle), "x", "--temperature", "-1"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == ["error: --temperature must be ≥ 0 (0 = greedy), got -1.0"]


def test_generate_truncate_keeps_the_tail(generator):
    long_prompt = "Start here. " + "word " * 300
    ids = generator.encode(long_prompt)[0][0]
    with pytest.warns(PromptTruncated, match=rf"prompt 1 has {len(ids)} tokens; truncated to 248"):
        completion = generator.generate(long_prompt, max_new_tokens=8, truncate=True)[0]
    assert completion.prompt_tokens == 256 - 8 and len(ids) > 248
    assert completion.prompt_tokens_dropped == len(ids) - 248
    assert completion.prompt == generator.encoder.decode(ids[-248:], skip_special_tokens=False)
    assert "Start here" not in completion.prompt and long_prompt.endswith(completion.prompt)
    assert completion.ids == generator.generate([ids[-248:]], max_new_tokens=8)[0].ids


@pytest.mark.parametrize("mode", [[], ["--no-stream"], ["--json"]])
def test_generate_cli_truncate_warns_and_echoes_the_prompt_it_used(gpt2_bundle, generator, mode):
    long_prompt = "Start here. " + "word " * 300
    dropped = len(generator.encode(long_prompt)[0][0]) - 248
    result = CliRunner().invoke(
        app, ["generate", str(gpt2_bundle), long_prompt, "-n", "8", "--truncate", *mode]
    )
    assert result.exit_code == 0, result.output
    assert f"truncated to 248 (its first {dropped} dropped" in result.stderr
    if mode == ["--json"]:
        completion = json.loads(result.stdout)["completions"][0]
        assert completion["prompt_tokens_dropped"] == dropped and completion["prompt_tokens"] == 248
        assert "Start here" not in completion["prompt"]
    else:
        assert "Start here" not in result.stdout and result.stdout.startswith(" word")


def test_ids_out_of_range_and_encoder_bundle(generator, make_bundle):
    with pytest.raises(UserError, match="outside the vocabulary"):
        generator.generate([[5, 2048]], max_new_tokens=2)
    result = CliRunner().invoke(app, ["generate", str(make_bundle("tiny-bert", "classify")), "hi"])
    assert result.exit_code == 2 and "generation needs a GPT-2 bundle" in result.output
    result = CliRunner().invoke(app, ["run", str(generator.bundle.path), "hi"])
    assert result.exit_code == 2 and "trtpipe generate" in result.output


def test_generate_cli_streams_and_prints_json(gpt2_bundle):
    result = CliRunner().invoke(app, ["generate", str(gpt2_bundle), "The list of", "-n", "8"])
    assert result.exit_code == 0 and result.stdout.startswith("The list of")
    assert "ms/token" in result.output
    result = CliRunner().invoke(
        app, ["generate", str(gpt2_bundle), "The list of", "Python", "-n", "5", "--json"]
    )
    data = json.loads(result.stdout)
    assert [len(c["ids"]) for c in data["completions"]] == [5, 5] and data["random_weights"] is True


def test_parity_cli_on_decoder(gpt2_bundle, copy_bundle):
    path = copy_bundle(gpt2_bundle)
    result = CliRunner().invoke(app, ["parity", str(path), "--json", "--samples", "4"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["verdict"] == "pass" and report["levels"]["sequences"]["passed"]


def test_export_max_length_bounds_every_decoding_path(make_bundle, tmp_path):
    """`export --max-length 48` on GPT-2: Generator, BatchEngine, perplexity, benchmark shapes and genai's config all
    hold prompt + new tokens to 48 (the TensorRT profiles already do), and the error names the export option."""
    from trtpipe.benchmark.shapes import decoder_shapes
    from trtpipe.export.genai import genai_config
    from trtpipe.runtime import BatchEngine
    from trtpipe.runtime.score import perplexity

    path = make_bundle("tiny-gpt2", "generate", max_length=48)
    bundle = Bundle.load(path)
    assert bundle.max_length == 48 < bundle.limits["max_positions"]
    generator = Generator(bundle)
    prompt = list(range(5, 45))  # 40 tokens
    assert len(generator.generate([prompt], max_new_tokens=8)[0].ids) == 8
    with pytest.raises(UserError, match="exported with max_length 48"):
        generator.generate([prompt], max_new_tokens=9)
    assert generator.fit([prompt], 9, truncate=True)[0] == prompt[1:]
    engine = BatchEngine(bundle, slots=2)
    assert engine.capacity == 48 and engine.cache.capacity == 48
    with pytest.raises(UserError, match="48"):
        engine.submit(prompt, max_new_tokens=9)
    shapes = decoder_shapes(bundle, None, None)
    assert all(p + shapes.new_tokens <= 48 for p in shapes.prompt_lens) and shapes.prompt_lens
    with pytest.raises(UserError, match="48 positions"):
        decoder_shapes(bundle, [40], 16)
    assert perplexity(bundle, "The list of values is sorted in place. " * 20)["window"] == 48
    assert genai_config(bundle.manifest)["search"]["max_length"] == 48
