"""In-flight batching: every request gets exactly what it gets alone, slots are reused, prompts prefill in chunks,
cancelled requests free their slot, the queue is bounded, bad requests fail alone, the thread shuts down cleanly."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from trtpipe import corpus
from trtpipe.optimize.variants import optimize_bundle
from trtpipe.runtime import BatchEngine, Generator, Sampling, UserError
from trtpipe.runtime.request import EngineStopped, QueueFull


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


def _mix(generator: Generator, count: int = 12) -> list[dict]:
    """Requests of different lengths and settings: greedy and seeded samples (top-k, top-p, repetition penalty),
    different max_new_tokens, and stop strings taken from what the request would generate (so they trigger)."""
    texts = corpus.sample(count, split="heldout", seed=5)
    rng = np.random.default_rng(1)
    mix = []
    for index, text in enumerate(texts):
        ids = generator.encoder.encode_prompt(" ".join([text] * 4))[: 3 + 13 * index]
        if index % 3 == 0:
            sampling = Sampling()
        else:
            sampling = Sampling(
                temperature=0.7 + 0.1 * (index % 4),
                top_k=(0, 40)[index % 2],
                top_p=(1.0, 0.9)[(index // 2) % 2],
                repetition_penalty=(1.0, 1.3)[(index // 3) % 2],
                seed=100 + index,
            )
        item = {"prompt": ids, "max_new_tokens": int(rng.integers(2, 30)), "sampling": sampling, "stop": None}
        if index % 4 == 1:
            text_alone = generator.generate([ids], item["max_new_tokens"], sampling)[0].text
            if len(text_alone) > 6:
                item["stop"] = [text_alone[len(text_alone) // 2 : len(text_alone) // 2 + 2]]
        mix.append(item)
    return mix


def _alone(generator: Generator, item: dict):
    return generator.generate([item["prompt"]], item["max_new_tokens"], item["sampling"], item["stop"])[0]


@pytest.mark.parametrize("backend", ["ort-cpu", "ov"])
def test_a_mix_of_requests_gets_what_each_gets_alone(gpt2, backend):
    if backend == "ov":
        pytest.importorskip("openvino")
    generator = Generator(gpt2, backend=backend)
    mix = _mix(generator)
    expected = [_alone(generator, item) for item in mix]
    assert any(e.finish == "stop" for e in expected)  # the stop strings do trigger
    engine = BatchEngine(gpt2, slots=4, chunk=16, backend=backend)
    widths = []  # (rows the step computed, rows running): running rows are packed, nothing rides along
    decode = engine.runner.decode

    def counted(tokens, lengths, cache, mask=None):
        widths.append((len(tokens), sum(r is not None and r.state == "running" for r in engine.table)))
        return decode(tokens, lengths, cache, mask)

    engine.runner.decode = counted
    requests, slots_seen = [], {}
    for index, item in enumerate(mix):  # arrivals spread over the run: four now, then one every other step
        requests.append(engine.submit(item["prompt"], item["max_new_tokens"], item["sampling"], item["stop"]))
        if index >= 3:
            engine.step()
            engine.step()
        for request in requests:
            if request.slot >= 0:
                slots_seen.setdefault(request.slot, set()).add(request.id)
    engine.run()
    for item, want, request in zip(mix, expected, requests):
        got = request.result()
        assert got.ids == want.ids, (item, got.ids, want.ids)
        assert got.text == want.text and got.finish == want.finish
    assert max(len(ids) for ids in slots_seen.values()) >= 2  # a freed slot was taken by a later request
    assert max(len(item["prompt"]) for item in mix) > 16  # some prompts were prefilled in several chunks
    assert engine.busy == 0 and engine.idle()
    assert engine.stats["prefill_tokens"] == sum(len(item["prompt"]) for item in mix)
    assert all(width == running for width, running in widths)
    assert engine.stats["moves"] > 0  # rows did move (and still got what they get alone)


@pytest.mark.parametrize("backend", ["ort-cpu", "ov"])
@pytest.mark.parametrize("precision", ["int8-wo", "int4", "int8"])
def test_quantized_variants_batch_too(gpt2, copy_bundle, precision, backend):
    if backend == "ov":
        pytest.importorskip("openvino")
    path = copy_bundle(gpt2)
    optimize_bundle(path, precision, force=True)
    generator = Generator(path, variant=precision, backend=backend)
    assert generator.variant == (f"{precision}.kv-inplace" if backend == "ort-cpu" else precision)
    mix = _mix(generator, count=5)
    engine = BatchEngine(path, variant=precision, slots=3, chunk=8, backend=backend)
    requests = [engine.submit(i["prompt"], i["max_new_tokens"], i["sampling"], i["stop"]) for i in mix]
    engine.run()
    for item, request in zip(mix, requests):
        assert request.result().ids == _alone(generator, item).ids


def test_on_openvino_rows_share_a_width_that_moves_in_buckets(gpt2):
    """The interop graph's rows share one width: it moves in buckets (OpenVINO prepares kernels per shape, so the
    graph sees few shapes), a long request that leaves has its columns dropped, no step's present is wider than
    the capacity, and each row still gets what it gets alone."""
    pytest.importorskip("openvino")
    from trtpipe.runtime.slots import BUCKET

    generator = Generator(gpt2, backend="ov")
    engine = BatchEngine(gpt2, slots=3, chunk=64, capacity=200, backend="ov")
    prompts = [[5 + i % 50 for i in range(n)] for n in (150, 3, 20, 8, 25, 2)]
    news = [10, 60, 40, 50, 40, 60]
    requests = [engine.submit(p, n, ignore_eos=True) for p, n in zip(prompts, news)]
    widths = []
    while engine.step():
        widths.append(engine.cache.width)
        running = [r for r in engine.table if r is not None and r.state == "running"]
        for r in running:  # a joined row's cached tokens are unmasked, and are the last columns
            if engine.cache.joined[r.slot]:
                cached = len(r.ids) + len(r.tokens) - 1
                assert engine.cache.mask[r.slot, engine.cache.width - cached :].all()
                assert engine.cache.mask[r.slot].sum() == cached
    changes = sum(a != b for a, b in zip(widths, widths[1:]))
    assert max(widths) < 200 and changes <= len(widths) // 8
    assert (
        max(widths) >= 150 and widths[-1] <= max(widths) - BUCKET
    )  # the long request's columns were dropped
    for prompt, n, request in zip(prompts, news, requests):
        alone = [t.id for t in generator.stream([prompt], n, ignore_eos=True)]
        assert request.result().ids == alone


def test_batching_runs_on_host_backends_only(gpt2):
    with pytest.raises(UserError, match=r"ort-cpu or ov.*Generator"):
        BatchEngine(gpt2, backend="trt")


def test_cancelled_requests_free_their_slot_and_the_others_go_on(gpt2):
    generator = Generator(gpt2)
    engine = BatchEngine(gpt2, slots=2, chunk=64)
    doomed = engine.submit("The list of", max_new_tokens=100, ignore_eos=True)
    other = engine.submit("A class", max_new_tokens=12)
    queued = engine.submit("def main", max_new_tokens=100)
    for _ in range(3):
        engine.step()
    assert doomed.state == "running" and queued.state == "waiting"
    engine.cancel(doomed)
    engine.cancel(queued)
    engine.step()  # the next step retires the cancelled row before it decodes
    assert doomed.slot not in [r.slot for r in engine.table if r is not None]
    # step 1: prefill (token 1) and decode (token 2); steps 2, 3: one token each; step 4 retired it first
    assert doomed.finish == "cancelled" and len(doomed.tokens) == 4 and doomed.done.is_set()
    assert queued.finish == "cancelled" and not queued.tokens and not engine.waiting
    engine.run()
    assert other.result().ids == generator.generate("A class", max_new_tokens=12)[0].ids
    assert engine.busy == 0


def test_the_queue_is_bounded_and_bad_requests_fail_alone(gpt2):
    engine = BatchEngine(gpt2, slots=1, max_queue=1, capacity=64)
    first = engine.submit("The list", max_new_tokens=4)  # takes the slot
    second = engine.submit("A class", max_new_tokens=4)  # waits
    with pytest.raises(QueueFull, match=r"queue holds 1"):
        engine.submit("One more", max_new_tokens=4)
    with pytest.raises(UserError, match=r"a slot holds 64 positions"):
        engine.submit(list(range(1, 80)), max_new_tokens=4)
    with pytest.raises(UserError, match=r"^top_p must be in \(0, 1\]"):
        engine.submit("x", sampling=Sampling(top_p=1.5))
    with pytest.raises(UserError, match="outside the vocabulary"):
        engine.submit([1, 99999], max_new_tokens=2)
    with pytest.raises(UserError, match="max_new_tokens must be ≥ 1"):
        engine.submit("x", max_new_tokens=0)
    engine.run()
    assert len(first.result().ids) == 4 and len(second.result().ids) == 4
    for bad in ({"slots": 0}, {"chunk": 0}, {"capacity": 100_000}):
        with pytest.raises(UserError):
            BatchEngine(gpt2, **bad)


def test_a_truncated_request_warns_and_says_what_it_dropped(gpt2):
    """truncate=True in the engine keeps the tail that fits a slot, as the Generator does: a PromptTruncated
    warning, the kept tail as the prompt, the count dropped on the Completion, and the tokens the tail gets alone."""
    from trtpipe.runtime import PromptTruncated

    generator = Generator(gpt2)
    long_prompt = " ".join(corpus.sample(8, split="heldout", seed=2))
    ids = generator.encoder.encode_prompt(long_prompt)
    assert len(ids) > 60
    engine = BatchEngine(gpt2, slots=2, capacity=64)
    with pytest.warns(PromptTruncated, match=rf"has {len(ids)} tokens; truncated to 56"):
        request = engine.submit(long_prompt, max_new_tokens=8, truncate=True)
    short = engine.submit("The list", max_new_tokens=8, truncate=True)
    engine.run()
    done = request.result()
    assert done.prompt_tokens_dropped == len(ids) - 56 and done.prompt_tokens == 56
    assert done.prompt == generator.encoder.decode(ids[-56:], skip_special_tokens=False) != long_prompt
    assert done.ids == generator.generate([ids[-56:]], 8)[0].ids
    assert short.result().prompt_tokens_dropped == 0


def test_streams_token_by_token_like_the_generator(gpt2):
    generator = Generator(gpt2)
    engine = BatchEngine(gpt2, slots=2)
    request = engine.submit("Hello there", max_new_tokens=10)
    background = engine.submit("The list", max_new_tokens=7)
    tokens = list(engine.stream(request))
    alone = list(generator.stream("Hello there", max_new_tokens=10))
    assert [(t.id, t.text, t.finish) for t in tokens] == [(t.id, t.text, t.finish) for t in alone]
    engine.run()
    assert background.result().ids == generator.generate("The list", max_new_tokens=7)[0].ids


def test_the_engine_thread_serves_many_callers_and_shuts_down_cleanly(gpt2):
    generator = Generator(gpt2)
    engine = BatchEngine(gpt2, slots=3, chunk=8).start()
    prompts = [f"Prompt number {i} says" for i in range(8)]
    results: dict[int, list[int]] = {}

    def client(index: int) -> None:
        results[index] = engine.submit(prompts[index], max_new_tokens=6).result(timeout=60).ids

    callers = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert {i: results[i] for i in range(8)} == {
        i: generator.generate(p, max_new_tokens=6)[0].ids for i, p in enumerate(prompts)
    }
    heard = []
    running = engine.submit(
        "A long one", max_new_tokens=200, ignore_eos=True, listener=lambda r, t: heard.append(t)
    )
    while not heard:
        pass
    engine.close(timeout=30)
    assert not engine.thread.is_alive()
    assert running.done.is_set() and isinstance(running.error, EngineStopped) and heard[-1] is None
    with pytest.raises(EngineStopped):
        running.result()
    with pytest.raises(EngineStopped, match="stopped"):
        engine.submit("too late")


def test_needs_the_in_place_variant(gpt2, copy_bundle):
    import json

    path = copy_bundle(gpt2)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["variants"]["kv-inplace"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"no kv-inplace variant.*trtpipe optimize"):
        BatchEngine(path)


def test_cache_rows_swap_their_cached_tokens_only():
    """Packing the running rows moves a row's cached positions (in place) or its whole row and mask (the interop
    layout); what lies past a row's length is not copied, and the other rows are untouched."""
    from trtpipe.runtime.kv import KVCache
    from trtpipe.runtime.slots import SlotCache

    cache = KVCache(layers=1, batch=3, heads=2, head_dim=4, capacity=8, inplace=True)
    rng = np.random.default_rng(0)
    for buffer in cache.buffers[0]:
        buffer[:] = rng.standard_normal(buffer.size)
    before = [cache.view(0, i, 0).copy() for i in range(2)]
    cache.swap_rows(0, 2, 5, 3)
    for index, old in enumerate(before):
        now = cache.view(0, index, 0)
        assert np.array_equal(now[2, :, :5], old[0, :, :5]) and np.array_equal(now[0, :, :3], old[2, :, :3])
        assert np.array_equal(now[1], old[1])
        assert np.array_equal(now[2, :, 5:], old[2, :, 5:])  # past row 0's length: row 2's own, not copied
    with pytest.raises(ValueError, match="ping-pong"):
        KVCache(1, 2, 2, 4, 8, inplace=False).swap_rows(0, 1, 1, 1)

    slots = SlotCache(layers=1, slots=3, heads=2, head_dim=4, capacity=16)
    slots.own[2] = [np.full((1, 2, 3, 4), 7.0, np.float32)] * 2
    slots.own[0] = [np.full((1, 2, 2, 4), 5.0, np.float32)] * 2
    slots.join(0)  # row 0 shared (2 columns), row 2 still prefilling on its own buffers
    slots.swap_rows(0, 2)
    assert slots.joined.tolist() == [False, False, True] and list(slots.own) == [0]
    assert slots.own[0][0].shape == (1, 2, 3, 4) and slots.mask[2].sum() == 2 and slots.mask[0].sum() == 0
    assert (slots.kv[0][2] == 5.0).all()
