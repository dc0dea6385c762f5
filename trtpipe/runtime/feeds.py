"""Feed validation: every input checked against the manifest's specs before it reaches a backend."""

from __future__ import annotations

import numpy as np

from .errors import UserError

NP_DTYPES = {
    "int64": np.int64,
    "int32": np.int32,
    "float32": np.float32,
    "float16": np.float16,
    "bool": np.bool_,
}


def check_feeds(feeds: dict, specs: list[dict], limits: dict | None = None) -> dict[str, np.ndarray]:
    """Validate feeds against the manifest's input specs; return them as contiguous arrays of the right dtype.

    Catches what would otherwise be an opaque backend error: unknown/missing names, wrong rank, non-numeric data,
    inconsistent named dimensions, token ids outside the vocabulary and sequences beyond the model's positions.
    """
    if not isinstance(feeds, dict):
        raise UserError("feeds must be a dict of input name -> numpy array")
    expected = {spec["name"]: spec for spec in specs}
    unknown = sorted(set(feeds) - set(expected))
    if unknown == ["token_type_ids"] and "input_ids" in expected:
        raise UserError(
            f"this model has no token_type_ids input (its family has no segment embeddings); drop token_type_ids "
            f"from the feeds (tokenizer(..., return_token_type_ids=False)); it takes: {', '.join(expected)}"
        )
    if unknown:
        raise UserError(f"unknown input(s) {', '.join(unknown)}; this model takes: {', '.join(expected)}")
    missing = [name for name in expected if name not in feeds]
    if missing:
        raise UserError(f"missing input(s) {', '.join(missing)}; this model takes: {', '.join(expected)}")
    out: dict[str, np.ndarray] = {}
    dims: dict[str, tuple[int, str]] = {}
    for name, spec in expected.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            try:
                value = np.asarray(value)
            except Exception:
                raise UserError(f"input {name!r} must be a numpy array") from None
        want = NP_DTYPES[spec["dtype"]]
        if value.dtype != want:
            same_kind = (
                (np.issubdtype(value.dtype, np.integer) and np.issubdtype(want, np.integer))
                or (np.issubdtype(value.dtype, np.floating) and np.issubdtype(want, np.floating))
                or (value.dtype == np.bool_ and np.issubdtype(want, np.integer))
            )
            if not same_kind:
                raise UserError(f"input {name!r} has dtype {value.dtype}, expected {spec['dtype']}")
            value = value.astype(want)
        shape = spec["shape"]
        if value.ndim != len(shape):
            raise UserError(
                f"input {name!r} has shape {list(value.shape)}, expected rank {len(shape)} {shape}"
            )
        for axis, (dim, size) in enumerate(zip(shape, value.shape)):
            if isinstance(dim, int) and dim != size:
                raise UserError(f"input {name!r} axis {axis} is {size}, expected {dim} (shape {shape})")
            if isinstance(dim, str):
                if size == 0 and dim != "past_sequence":
                    raise UserError(
                        f"input {name!r} has an empty {dim} axis (shape {list(value.shape)}); "
                        "give at least one text / token"
                    )
                seen = dims.get(dim)
                if seen is not None and seen[0] != size:
                    raise UserError(
                        f"input {name!r} axis {axis} ({dim}) is {size} but {seen[1]} has {dim}={seen[0]}: "
                        "inputs must agree on their shared dimensions"
                    )
                dims.setdefault(dim, (size, name))
        out[name] = np.ascontiguousarray(value)
    if "past_sequence" in dims and "sequence" in dims and "total_sequence" in dims:
        past, seq, total = dims["past_sequence"][0], dims["sequence"][0], dims["total_sequence"][0]
        if past + seq != total:
            raise UserError(
                f"attention_mask covers {total} positions but past ({past}) + new tokens ({seq}) = {past + seq}"
            )
    if limits:
        ids = out.get("input_ids")
        vocab = limits.get("vocab_size")
        if ids is not None and ids.size and vocab:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab:
                bad = low if low < 0 else high
                raise UserError(
                    f"token id {bad} is outside the vocabulary [0, {vocab}); check the tokenizer matches the model"
                )
        positions = limits.get("max_positions")
        total = dims.get("total_sequence", dims.get("sequence", (0, "")))[0]
        if positions and total > positions:
            raise UserError(
                f"sequence of {total} tokens exceeds the model's {positions} positions; shorten the input or truncate"
            )
        pos = out.get("position_ids")
        if pos is not None and pos.size and positions and (int(pos.max()) >= positions or int(pos.min()) < 0):
            raise UserError(f"position id {int(pos.max())} is outside [0, {positions})")
    return out


class CheckedFeeds:
    """For host sessions that hold the manifest's `specs` and `limits`: `check` validates feeds against them (a
    session opened without specs passes feeds through)."""

    specs: list[dict] | None = None
    limits: dict | None = None

    def check(self, feeds: dict) -> dict:
        if self.specs is None:
            return feeds
        return check_feeds(feeds, self.specs, self.limits)
