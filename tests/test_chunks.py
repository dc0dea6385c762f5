"""Prefill pieces (`runtime/chunks.py`): never a lone token after others and never one left, so a prompt prefilled
in BatchEngine's pieces writes exactly the K/V and logits it writes in one piece alone."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from trtpipe.runtime import BatchEngine, Generator, UserError
from trtpipe.runtime.chunks import next_piece, piece_length


@pytest.fixture(scope="module")
def gpt2(make_bundle):
    return make_bundle("tiny-gpt2", "generate")


def _cuts(total: int, budgets) -> list[tuple[int, int]]:
    """(past, length) of every piece of a `total`-token prompt when each step offers the next budget."""
    cuts, prefilled = [], 0
    for budget in budgets:
        if prefilled == total:
            break
        length = piece_length(prefilled, total, budget)
        if length:
            cuts.append((prefilled, length))
            prefilled += length
    assert prefilled == total, (total, cuts)
    return cuts


@pytest.mark.parametrize(
    ("total", "budget"), itertools.product([1, 2, 3, 4, 5, 17, 64, 65, 66, 130], [2, 3, 4, 64])
)
def test_a_prompt_is_cut_into_pieces_of_two_or_more_after_the_first(total, budget):
    rng = np.random.default_rng(total * 100 + budget)
    budgets = itertools.chain(
        rng.integers(1, budget + 1, 200), itertools.repeat(budget)
    )  # leftovers, then whole
    for past, length in _cuts(total, budgets):
        assert length >= 2 or past == 0  # the first token alone has nothing cached: measured exact
        assert total - past - length != 1  # never leaves one
    assert piece_length(0, 65, 64) == 63 and piece_length(63, 65, 64) == 2  # a token shorter, not one left
    assert piece_length(0, 3, 2) == 3  # shorter would be one: one longer than the budget
    assert piece_length(5, 40, 1) == 0 and next_piece(list(range(40)), 5, 1) == []  # wait for a budget of two


def _prefill(runner, ids: list[int], lengths: list[int]):
    cache, logits, past = runner.new_cache(1, 128), np.empty((1, runner.vocab), np.float32), 0
    for length in lengths:
        runner.prefill_row(ids[past : past + length], cache, 0, past, logits)
        past += length
    return logits, [cache.view(0, i, 0, 1, 0)[:, :, : len(ids)].copy() for i in range(len(cache.buffers[0]))]


def test_pieces_write_what_one_piece_writes(gpt2):
    runner = Generator(gpt2).runner
    ids = [int(t) for t in np.random.default_rng(0).integers(0, runner.vocab, 40)]
    want = _prefill(runner, ids, [40])
    for budgets in (
        [39, 64],
        [20, 1, 64],
        [7, 3, 2, 1, 1, 30, 64],
        [2] * 20,
    ):  # each would have cut a lone token
        lengths = [length for _, length in _cuts(40, budgets)]
        got = _prefill(runner, ids, lengths)
        np.testing.assert_array_equal(got[0], want[0])
        for a, b in zip(got[1], want[1]):
            np.testing.assert_array_equal(a, b)


def test_the_engine_never_prefills_a_lone_token(gpt2):
    """Two prompts in one step's budget: the second gets what is left only if that is two tokens or more."""
    generator = Generator(gpt2)
    engine = BatchEngine(gpt2, slots=4, chunk=16)
    pieces = []
    prefill_row = engine.runner.prefill_row

    def recorded(ids, cache, row, past, logits):
        pieces.append((past, len(ids)))
        return prefill_row(ids, cache, row, past, logits)

    engine.runner.prefill_row = recorded
    prompts = [list(range(5, 20)), list(range(30, 70)), list(range(100, 117))]  # 15 leaves 1 of 16; 40; 17
    requests = [engine.submit(p, 6) for p in prompts]
    engine.run()
    assert all(length >= 2 for past, length in pieces if past)
    assert sum(length for _, length in pieces) == sum(map(len, prompts))
    for prompt, request in zip(prompts, requests):
        assert request.result().ids == generator.generate([prompt], 6)[0].ids
    with pytest.raises(UserError, match="chunk must be an integer ≥ 2"):
        BatchEngine(gpt2, chunk=1)


def test_a_step_takes_chunk_prompt_tokens_and_with_none_decoding_every_prompt_one_piece_finishes():
    from types import SimpleNamespace

    from trtpipe.runtime.chunks import step_pieces

    waiting = [SimpleNamespace(ids=list(range(n)), prefilled=0) for n in (40, 10, 30, 16, 12)]
    lengths = lambda pieces: [len(p) for _, p in pieces]  # noqa: E731
    assert lengths(step_pieces(waiting, 16, decoding=True)) == [16]  # a step's budget: one chunk in all
    # none decoding: the budget goes to the oldest long prompt, and every prompt one piece finishes takes it
    assert lengths(step_pieces(waiting, 16, decoding=False)) == [16, 10, 16, 12]
    assert lengths(step_pieces(waiting, 16, decoding=False, budget=20)) == [16, 4]  # a budget given is kept
    waiting[0].prefilled = 23  # 17 left: a piece of 16 would leave one, so it takes 15 (next_piece)
    assert lengths(step_pieces(waiting, 16, decoding=True)) == [15, 1]  # the budget left: a first token
    waiting[0].prefilled = 24  # 16 left: one piece finishes it
    assert lengths(step_pieces(waiting, 16, decoding=False)) == [16, 10, 16, 16, 12]  # and 30 the budget
