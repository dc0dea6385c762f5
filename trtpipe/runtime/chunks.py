"""How much of a prompt one prefill pass takes: up to the step's budget, never a lone token after others.

A piece of one token with tokens already cached runs ONNX Runtime's GroupQueryAttention on its one-token path, which
rounds otherwise than the same token inside a longer piece (GPT-2 124M, a 240-token prompt: 1.9e-6 in fp32 logits,
3e-2 at int4 on random weights; every other cut measured exact, bench/pair_rows.py). The prompt decoded alone is
prefilled in one piece, so BatchEngine would hand a request other tokens than alone whenever a step's budget ran out
one token into a prompt, or left one. A piece is therefore never one token after the first, and never leaves one:
it is a token shorter, or one longer than the budget (a soft limit) where shorter would make it one.

A step's pieces (`step_pieces`): each at most `chunk` tokens, at most `chunk` prompt tokens in all, so a prompt never
stalls the decoding rows for long. With no row decoding there is no one to stall: every prompt that one piece
finishes takes it too, so a burst of short prompts decodes together from the next step (and prefills as one
batched pass where the prefill engine batches, `prefill.py`). Longer prompts keep the budget: where the bundle has
the fused step their chunks are cheaper riding with decoding rows (bench/prefill_burst.py measured the other way,
every prompt a chunk, 0.91x on a burst of the serve_load mix there, 1.31x on 8 prompts of 32 tokens).
"""

from __future__ import annotations


def piece_length(prefilled: int, total: int, budget: int) -> int:
    """Tokens of a prompt of `total` (with `prefilled` already in the cache) to prefill in a pass of `budget`
    tokens; 0 means wait for the next step's budget."""
    rest = total - prefilled
    length = min(budget, rest)
    if rest - length == 1:  # would leave a lone last token
        length = length - 1 if length > 2 else length + 1
    if length == 1 and prefilled:  # a lone token after others: wait for a budget of two
        return 0
    return length


def next_piece(ids: list[int], prefilled: int, budget: int) -> list[int]:
    """The prompt `ids`' next prefill piece in a pass of `budget` tokens (`piece_length`); empty: wait."""
    return ids[prefilled : prefilled + piece_length(prefilled, len(ids), budget)]


def step_pieces(prefilling: list, chunk: int, decoding: bool, budget: int | None = None) -> list[tuple]:
    """(request, piece) for one step over the prefilling requests (oldest first; each has `ids` and `prefilled`):
    `budget` (by default `chunk`) prompt tokens in all; by default, with no row `decoding`, every prompt whose rest
    one piece of `chunk` takes also takes it, outside the budget, so they all decode from the next step."""
    finish_short = budget is None and not decoding
    budget = chunk if budget is None else budget
    pieces = []
    for request in prefilling:
        if finish_short and len(request.ids) - request.prefilled <= chunk:
            piece = next_piece(request.ids, request.prefilled, chunk)  # the whole rest
        elif budget > 0:
            piece = next_piece(request.ids, request.prefilled, min(budget, chunk))
            budget -= len(piece)
        else:
            continue
        if piece:  # empty: its next piece would be a lone token; the next step's budget takes it
            pieces.append((request, piece))
    return pieces
