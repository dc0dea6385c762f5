"""Optimization profiles for TensorRT builds: defaults, trtexec-style shape flags, profile files.

A profile is a dict {"name", "shapes": {input: {"min": [..], "opt": [..], "max": [..]}}}, exactly what the manifest's
engine entry stores. Profiles are made from ranges of the bundle's *named* dimensions (batch, sequence,
total_sequence, past_sequence) applied to each input's manifest shape, so every input of a profile agrees.

- Encoders: one profile, "default".
- GPT-2: two profiles on one engine (DESIGN §9): 0 "prefill" (sequence 1..max prompt, empty past) and
  1 "decode" (sequence 1, past 1..max length − 1).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..runtime.bundle import Bundle
from ..runtime.errors import UserError
from ..runtime.paths import read_json

SELECTORS = ("min", "opt", "max")
PROFILE_FORMAT = 1


def input_specs(bundle: Bundle, variant: str | None = None) -> list[dict]:
    entry = bundle.variants.get(variant or "fp32", {})
    return entry.get("inputs") or bundle.manifest["inputs"]


def materialize(specs: list[dict], dims: dict[str, tuple[int, int, int]], name: str) -> dict:
    """A profile from named-dimension ranges: each input's named axes take their range, fixed axes stay."""
    shapes = {}
    for spec in specs:
        ranges = {sel: [] for sel in SELECTORS}
        for axis in spec["shape"]:
            if isinstance(axis, int):
                low = opt = high = axis
            elif axis in dims:
                low, opt, high = dims[axis]
            else:
                raise UserError(
                    f"input {spec['name']!r} has a dimension {axis!r} that no profile rule covers; "
                    "give its shapes with --min-shapes/--opt-shapes/--max-shapes"
                )
            ranges["min"].append(int(low))
            ranges["opt"].append(int(opt))
            ranges["max"].append(int(high))
        shapes[spec["name"]] = ranges
    return {"name": name, "shapes": shapes}


def _clamp_triple(low: int, opt: int, high: int) -> tuple[int, int, int]:
    opt = min(max(opt, low), high)
    return low, opt, high


def encoder_dims(
    bundle: Bundle, batch: tuple[int, int, int] | None = None, sequence: tuple[int, int, int] | None = None
) -> dict[str, tuple[int, int, int]]:
    limit = bundle.max_length
    batch = batch or bundle.kind.profile_batch
    sequence = sequence or (1, min(128, limit), limit)
    return {"batch": _clamp_triple(*batch), "sequence": _clamp_triple(*sequence)}


def decoder_dims(
    bundle: Bundle,
    batch: tuple[int, int, int] | None = None,
    prompt: tuple[int, int, int] | None = None,
    total: tuple[int, int, int] | None = None,
) -> tuple[dict, dict]:
    """(prefill dims, decode dims). total = past + 1 during decode, so past spans total − 1."""
    limit = bundle.max_length
    batch = _clamp_triple(*(batch or bundle.kind.profile_batch))
    prompt = _clamp_triple(*(prompt or (1, min(64, limit), limit)))
    total = _clamp_triple(*(total or (2, min(128, limit), limit)))
    prefill = {"batch": batch, "sequence": prompt, "total_sequence": prompt, "past_sequence": (0, 0, 0)}
    decode = {
        "batch": batch,
        "sequence": (1, 1, 1),
        "total_sequence": total,
        "past_sequence": (total[0] - 1, total[1] - 1, total[2] - 1),
    }
    return prefill, decode


def default_profiles(bundle: Bundle, variant: str | None = None) -> list[dict]:
    specs = input_specs(bundle, variant)
    if bundle.is_decoder:
        prefill, decode = decoder_dims(bundle)
        return [materialize(specs, prefill, "prefill"), materialize(specs, decode, "decode")]
    return [materialize(specs, encoder_dims(bundle), "default")]


# ------------------------------------------------------------------------------------------------ shape flags


def parse_shapes(text: str | None, option: str) -> dict[str, list[int]]:
    """trtexec syntax: "input_ids:1x128,attention_mask:1x128" → {"input_ids": [1, 128], ...}."""
    if text is None:
        return {}
    shapes: dict[str, list[int]] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, dims = part.rpartition(":")
        if not sep or not name or not re.fullmatch(r"\d+(x\d+)*", dims):
            raise UserError(
                f"{option} {part!r} is not NAME:DIMS; write e.g. {option} input_ids:8x128,attention_mask:8x128"
            )
        if name in shapes:
            raise UserError(f"{option} names {name!r} twice")
        shapes[name] = [int(d) for d in dims.split("x")]
    return shapes


def profiles_from_flags(
    bundle: Bundle,
    min_shapes: str | None,
    opt_shapes: str | None,
    max_shapes: str | None,
    variant: str | None = None,
) -> list[dict]:
    """Profiles from trtexec-style flags; anything not given keeps its default.

    Encoders: each named input sets the named dimensions of its shape (batch, sequence), shared by all inputs.
    GPT-2: `input_ids` B×S bounds the prefill profile (batch, prompt length) and `attention_mask` B×T the decode
    profile (batch, total length = past + 1); position_ids and past_key_values follow."""
    given = {
        sel: parse_shapes(text, f"--{sel}-shapes")
        for sel, text in zip(SELECTORS, (min_shapes, opt_shapes, max_shapes))
    }
    if not any(given.values()):
        return default_profiles(bundle, variant)
    specs = {spec["name"]: spec for spec in input_specs(bundle, variant)}
    for sel, shapes in given.items():
        for name, dims in shapes.items():
            if name not in specs:
                raise UserError(
                    f"--{sel}-shapes names {name!r}, which is not an input of {bundle.path} "
                    f"(inputs: {', '.join(specs)})"
                )
            if len(dims) != len(specs[name]["shape"]):
                raise UserError(
                    f"--{sel}-shapes {name}:{'x'.join(map(str, dims))} has rank {len(dims)}; "
                    f"{name} is {specs[name]['shape']}"
                )
    if bundle.is_decoder:
        return _decoder_from_flags(bundle, given, list(specs.values()))
    dims = {k: list(v) for k, v in encoder_dims(bundle).items()}
    opt_given: set[str] = set()
    for index, sel in enumerate(SELECTORS):
        seen: dict[str, tuple[int, str]] = {}
        for name, values in given[sel].items():
            for axis, value in zip(specs[name]["shape"], values):
                if isinstance(axis, int):
                    if value != axis:
                        raise UserError(f"--{sel}-shapes {name}: axis {axis} is fixed; got {value}")
                    continue
                if axis in seen and seen[axis][0] != value:
                    raise UserError(
                        f"--{sel}-shapes gives {axis}={value} for {name} but {axis}={seen[axis][0]} for "
                        f"{seen[axis][1]}; inputs share their {axis} dimension"
                    )
                seen[axis] = (value, name)
                dims[axis][index] = value
                if sel == "opt":
                    opt_given.add(axis)
    for axis, (low, opt, high) in dims.items():
        if axis not in opt_given:  # a default opt follows the user's min and max
            dims[axis][1] = min(max(opt, low), high)
    return [materialize(list(specs.values()), {k: tuple(v) for k, v in dims.items()}, "default")]


def _decoder_from_flags(bundle: Bundle, given: dict, specs: list[dict]) -> list[dict]:
    allowed = {"input_ids", "attention_mask"}
    for sel, shapes in given.items():
        extra = sorted(set(shapes) - allowed)
        if extra:
            raise UserError(
                f"--{sel}-shapes names {', '.join(extra)}; for GPT-2 give input_ids (prefill batch × prompt) and "
                "attention_mask (decode batch × total length): position_ids and past_key_values follow"
            )
    prefill, decode = decoder_dims(bundle)
    batch = list(prefill["batch"])
    prompt = list(prefill["sequence"])
    total = list(decode["total_sequence"])
    decode_batch = list(batch)
    for index, sel in enumerate(SELECTORS):
        if "input_ids" in given[sel]:
            batch[index], prompt[index] = given[sel]["input_ids"]
            decode_batch[index] = batch[index]
        if "attention_mask" in given[sel]:
            decode_batch[index], total[index] = given[sel]["attention_mask"]
    prefill, _ = decoder_dims(bundle, tuple(batch), tuple(prompt), tuple(total))
    _, decode = decoder_dims(bundle, tuple(decode_batch), tuple(prompt), tuple(total))
    return [materialize(specs, prefill, "prefill"), materialize(specs, decode, "decode")]


def shape_flags(profiles: list[dict], decoder: bool) -> dict[str, str]:
    """The --min/opt/max-shapes values that reproduce `profiles` through profiles_from_flags."""
    flags = {}
    for sel in SELECTORS:
        if decoder:
            parts = [
                f"input_ids:{'x'.join(map(str, profiles[0]['shapes']['input_ids'][sel]))}",
                f"attention_mask:{'x'.join(map(str, profiles[1]['shapes']['attention_mask'][sel]))}",
            ]
        else:
            parts = [f"{n}:{'x'.join(map(str, b[sel]))}" for n, b in profiles[0]["shapes"].items()]
        flags[sel] = ",".join(parts)
    return flags


# ------------------------------------------------------------------------------------------------ validation


def validate_profiles(bundle: Bundle, profiles: list[dict], variant: str | None = None) -> list[dict]:
    """Check profiles against the bundle (names, ranks, fixed axes, min ≤ opt ≤ max, model limits, GPT-2's two
    profiles); return them normalised to plain lists of ints."""
    specs = {spec["name"]: spec for spec in input_specs(bundle, variant)}
    if not isinstance(profiles, list) or not profiles:
        raise UserError("a profile file must hold a non-empty list of profiles")
    if bundle.is_decoder and len(profiles) != 2:
        raise UserError(
            f"a GPT-2 engine takes two profiles (prefill, decode); got {len(profiles)}; "
            "write one with `trtpipe advise BUNDLE --out FILE`"
        )
    if not bundle.is_decoder and len(profiles) != 1:
        raise UserError(f"an encoder engine takes one profile; got {len(profiles)}")
    limit = bundle.limits["max_positions"]
    out = []
    for index, profile in enumerate(profiles):
        if not isinstance(profile, dict) or not isinstance(profile.get("shapes"), dict):
            raise UserError(
                f"profile {index} is malformed: expected {{'name': ..., 'shapes': {{input: {{min, opt, max}}}}}}"
            )
        name = str(profile.get("name") or f"profile{index}")
        shapes = profile["shapes"]
        missing = [n for n in specs if n not in shapes]
        extra = [n for n in shapes if n not in specs]
        if missing or extra:
            raise UserError(
                f"profile {name!r}: "
                + (
                    f"missing input(s) {', '.join(missing)}"
                    if missing
                    else f"unknown input(s) {', '.join(extra)}"
                )
                + f"; the bundle's inputs are {', '.join(specs)}"
            )
        clean = {}
        for input_name, spec in specs.items():
            bounds = shapes[input_name]
            try:
                triple = {sel: [int(d) for d in bounds[sel]] for sel in SELECTORS}
            except (KeyError, TypeError, ValueError):
                raise UserError(
                    f"profile {name!r}: {input_name} needs integer min, opt and max shapes"
                ) from None
            for sel in SELECTORS:
                if len(triple[sel]) != len(spec["shape"]):
                    raise UserError(
                        f"profile {name!r}: {input_name} {sel} shape has rank {len(triple[sel])}; it is {spec['shape']}"
                    )
            for axis, dim in enumerate(spec["shape"]):
                low, opt, high = (triple[sel][axis] for sel in SELECTORS)
                if isinstance(dim, int) and not low == opt == high == dim:
                    raise UserError(f"profile {name!r}: {input_name} axis {axis} is fixed at {dim}")
                if not 0 <= low <= opt <= high:
                    raise UserError(
                        f"profile {name!r}: {input_name} axis {axis} needs 0 ≤ min ≤ opt ≤ max (got {low}, {opt}, {high})"
                    )
                if low == 0 and dim != "past_sequence":
                    raise UserError(f"profile {name!r}: {input_name} axis {axis} ({dim}) must be at least 1")
                if dim in ("sequence", "total_sequence", "past_sequence") and high > limit:
                    raise UserError(
                        f"profile {name!r}: {input_name} {dim} max {high} exceeds the model's {limit} positions"
                    )
            clean[input_name] = triple
        out.append({"name": name, "shapes": clean})
    if bundle.is_decoder:
        past = next(n for n in specs if n.startswith("past_key_values."))
        prefill, decode = out
        if prefill["shapes"][past]["max"][2] != 0:
            raise UserError("profile 0 (prefill) must have an empty past (past_sequence 0)")
        if decode["shapes"][past]["min"][2] < 1 or decode["shapes"]["input_ids"]["max"][1] != 1:
            raise UserError(
                "profile 1 (decode) must take one new token (sequence 1) and a past of at least 1"
            )
    return out


# ---------------------------------------------------------------------------------------------- profile files


def write_profile_file(path: Path, bundle: Bundle, profiles: list[dict], notes: dict | None = None) -> None:
    data = {
        "format": PROFILE_FORMAT,
        "bundle": bundle.name,
        "family": bundle.family,
        "task": bundle.task,
        "profiles": profiles,
        **({"notes": notes} if notes else {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def read_profile_file(path: Path, bundle: Bundle, variant: str | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"profile file {path} does not exist; write one with `trtpipe advise {bundle.path} --out {path}`"
        )
    data = read_json(
        path, f"profile file {path} is not valid JSON ({{error}}); rewrite it with `trtpipe advise`"
    )
    profiles = data.get("profiles") if isinstance(data, dict) else data
    return validate_profiles(bundle, profiles, variant)


def describe(profiles: list[dict]) -> str:
    """One line per profile: input_ids min → opt → max (the others follow it)."""
    lines = []
    for index, profile in enumerate(profiles):
        shapes = profile["shapes"]
        key = "attention_mask" if profile["name"] == "decode" and "attention_mask" in shapes else "input_ids"
        if key not in shapes:
            key = next(iter(shapes))
        bounds = shapes[key]
        text = " → ".join("x".join(map(str, bounds[sel])) for sel in SELECTORS)
        lines.append(f"profile {index} {profile['name']}: {key} {text}")
    return "; ".join(lines)
