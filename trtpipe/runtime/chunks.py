"""How much of a prompt one prefill pass takes: up to the step's budget, never a lone token after others.

A piece of one token with tokens already cached runs ONNX Runtime's GroupQueryAttention on its one-token path, which
rounds otherwise than the same token inside a longer piece (GPT-2 124M, a 240-token prompt: 1.9e-6 in fp32 logits,
3e-2 at int4 on random weights; every other cut measured exact, bench/pair_rows.py). The prompt decoded alone is
prefilled in one piece, so BatchEngine would hand a request other tokens than alone whenever a step's budget ran out
one token into a prompt, or left one. A piece is therefore never one token after the first, and never leaves one:
it is a token shorter, or one longer than the budget (a soft limit) where shorter would make it one.
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
