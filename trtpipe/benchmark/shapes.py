"""The shapes a benchmark measures: what was asked, or the defaults cut to what the bundle holds.

A default that does not fit a bundle (prompt 512 on a model with 256 positions, sequence 128 on a shorter encoder,
batch 8 on an engine built for batch 1) is dropped or shrunk, with a note that says so; a value the user gave that
does not fit is a UserError naming the limit and the fix."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError, with_article

DEFAULT_BATCHES = (1, 8)
DEFAULT_SEQ = 128
DEFAULT_PROMPT_LENS = (32, 512)
DEFAULT_NEW_TOKENS = 64
MIN_NEW_TOKENS = 2  # the first token comes from the prefill: TPOT needs at least one decode step


@dataclass
class Shapes:
    batches: list[int] = field(default_factory=list)
    seq: int = 0
    prompt_lens: list[int] = field(default_factory=list)
    new_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def _listed(values) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def engine_limits(bundle: Bundle) -> tuple[int | None, int | None]:
    """(largest batch, largest sequence) any TensorRT engine of the bundle accepts, from its manifest profiles;
    (None, None) without engines."""
    batch = seq = None
    for entry in bundle.engines.values():
        for profile in entry.get("profiles", []):
            high = (profile.get("shapes", {}).get("input_ids") or {}).get("max")
            if high and len(high) == 2:
                batch, seq = max(batch or 0, int(high[0])), max(seq or 0, int(high[1]))
    return batch, seq


def encoder_shapes(
    bundle: Bundle,
    batches: list[int] | None,
    seq: int | None,
    max_batch: int | None = None,
    max_seq: int | None = None,
) -> Shapes:
    """Batches and sequence length for encoder rows; None = the defaults, cut to the bundle's max length (and to
    `max_batch` / `max_seq`, an engine's profile maxima, when given)."""
    name = bundle.name
    seq_limit, where = bundle.max_length, f"{name}'s max length {bundle.max_length}"
    if max_seq is not None and max_seq < seq_limit:
        seq_limit, where = max_seq, f"the largest sequence its TensorRT engine takes ({max_seq})"
    shapes = Shapes()
    if seq is None:
        shapes.seq = min(DEFAULT_SEQ, seq_limit)
        if shapes.seq < DEFAULT_SEQ:
            shapes.notes.append(f"sequence length {DEFAULT_SEQ} does not fit {where}; measuring {shapes.seq}")
    elif seq > seq_limit:
        raise UserError(f"--seq {seq} exceeds {where}; pass --seq {seq_limit} or less")
    else:
        shapes.seq = seq
    if batches is None:
        shapes.batches = [b for b in DEFAULT_BATCHES if max_batch is None or b <= max_batch]
        dropped = [b for b in DEFAULT_BATCHES if b not in shapes.batches]
        if dropped:
            shapes.batches = shapes.batches or [max_batch]
            shapes.notes.append(
                f"batch{'es' if len(dropped) > 1 else ''} {_listed(dropped)} "
                f"{'do' if len(dropped) > 1 else 'does'} not fit {name}'s TensorRT engine (largest batch {max_batch}); "
                f"measuring {_listed(shapes.batches)} only"
            )
    else:
        too_big = [b for b in batches if max_batch is not None and b > max_batch]
        if too_big:
            raise UserError(
                f"--batch {too_big[0]} exceeds the largest batch {name}'s TensorRT engine takes ({max_batch}); "
                f"pass --batch {max_batch} or less, or rebuild the engine with `trtpipe build {bundle.path} "
                "--max-shapes …`"
            )
        shapes.batches = list(batches)
    return shapes


def decoder_shapes(bundle: Bundle, prompt_lens: list[int] | None, new_tokens: int | None) -> Shapes:
    """Prompt lengths and new tokens for decoder rows; None = the defaults, cut so that prompt + new tokens fit the
    bundle's positions."""
    name, positions = bundle.name, bundle.max_length  # the model's positions, or export's --max-length
    shapes = Shapes()
    if new_tokens is not None:
        if new_tokens < MIN_NEW_TOKENS:
            raise UserError(f"--new-tokens must be ≥ {MIN_NEW_TOKENS} to measure TPOT (got {new_tokens})")
        if new_tokens >= positions:
            raise UserError(
                f"--new-tokens {new_tokens} leaves no room for a prompt in {name}'s {positions} positions; "
                f"pass --new-tokens {positions - 1} or less"
            )
    if prompt_lens is not None:
        longest = max(prompt_lens)
        if new_tokens is None:
            shapes.new_tokens = min(DEFAULT_NEW_TOKENS, positions - longest)
            if shapes.new_tokens < MIN_NEW_TOKENS:
                raise UserError(
                    f"--prompt-len {longest} leaves no room in {name}'s {positions} positions for the "
                    f"{MIN_NEW_TOKENS} new tokens TPOT needs; pass --prompt-len {positions - MIN_NEW_TOKENS} or less"
                )
            if shapes.new_tokens < DEFAULT_NEW_TOKENS:
                shapes.notes.append(
                    f"{DEFAULT_NEW_TOKENS} new tokens do not fit after prompt {longest} in {name}'s {positions} "
                    f"positions; measuring {shapes.new_tokens} new tokens"
                )
        else:
            shapes.new_tokens = new_tokens
            if longest + new_tokens > positions:
                raise UserError(
                    f"prompt {longest} + {new_tokens} new tokens exceeds {name}'s {positions} positions; pass "
                    f"--prompt-len {positions - new_tokens} or less (or fewer --new-tokens)"
                )
        shapes.prompt_lens = list(prompt_lens)
        return shapes
    shapes.new_tokens = DEFAULT_NEW_TOKENS if new_tokens is None else new_tokens
    if new_tokens is None and min(DEFAULT_PROMPT_LENS) + shapes.new_tokens > positions:
        # not even the shortest default prompt fits: fewer new tokens, the prompt keeps at least half the room
        shapes.new_tokens = max(MIN_NEW_TOKENS, min(DEFAULT_NEW_TOKENS, positions // 2))
        shapes.notes.append(
            f"{DEFAULT_NEW_TOKENS} new tokens after {with_article(min(DEFAULT_PROMPT_LENS))}-token prompt do not fit {name}'s "
            f"{positions} positions; measuring {shapes.new_tokens} new tokens"
        )
    room = positions - shapes.new_tokens
    shapes.prompt_lens = [p for p in DEFAULT_PROMPT_LENS if p <= room]
    dropped = [p for p in DEFAULT_PROMPT_LENS if p > room]
    if room < 1:
        raise UserError(f"{name}'s {positions} positions hold no prompt with {shapes.new_tokens} new tokens")
    if shapes.prompt_lens:
        instead = f"measuring {_listed(shapes.prompt_lens)} only"
    else:
        shapes.prompt_lens = [room]
        instead = f"measuring {with_article(room)}-token prompt instead"
    if dropped:
        shapes.notes.append(
            f"prompt length{'s' if len(dropped) > 1 else ''} {_listed(dropped)} "
            f"{'do' if len(dropped) > 1 else 'does'} not fit {name}'s {positions} positions with "
            f"{shapes.new_tokens} new tokens; {instead}"
        )
    return shapes


def compare_seq(bundles: list[Bundle], seq: int | None, decode_tokens: int) -> tuple[int, list[str]]:
    """Tokens per forward pass for `compare`: what was asked, or the default cut to the shortest bundle (a decoder
    also needs room for `decode_tokens` after its prompt)."""

    def room(bundle: Bundle) -> tuple[int, str]:
        if bundle.is_decoder:
            positions = bundle.max_length
            return (
                positions - decode_tokens,
                f"{bundle.name}'s {positions} positions with {decode_tokens} tokens decoded after the prompt",
            )
        return bundle.max_length, f"{bundle.name}'s max length {bundle.max_length}"

    limit, where = min((room(b) for b in bundles), key=lambda r: r[0])
    if seq is None:
        if limit >= DEFAULT_SEQ:
            return DEFAULT_SEQ, []
        if limit < 1:
            raise UserError(f"no prompt fits {where}")
        return limit, [f"sequence length {DEFAULT_SEQ} does not fit {where}; measuring {limit}"]
    if seq < 1:
        raise UserError(f"--seq must be ≥ 1 (got {seq})")
    if seq > limit:
        raise UserError(f"--seq {seq} exceeds {where}; pass --seq {limit} or less")
    return seq, []
