"""manifest.json's schema: what a valid manifest holds, its bounds (a manifest is untrusted input and sizes in it
are checked before anything is allocated), and the in-memory upgrade of the previous format."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..models import ALL_TASKS, MODELS
from .errors import UserError, with_article
from .paths import inside

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # the current and the previous format
MANIFEST = "manifest.json"
DTYPES = ("int64", "int32", "float32", "float16", "bool")
MAX_POSITIONS_LIMIT = 1 << 17
MAX_VOCAB_LIMIT = 1 << 22
MAX_DIM_LIMIT = 1 << 16


def _require(cond: bool, root: Path, what: str) -> None:
    if not cond:
        raise UserError(f"bundle {root}: manifest.json {what}; re-export the bundle with `trtpipe export`")


def _check_io(root: Path, entries: Any, kind: str) -> None:
    _require(isinstance(entries, list) and entries, root, f"has no {kind}")
    for entry in entries:
        _require(isinstance(entry, dict), root, f"has a malformed {kind} entry")
        _require(
            isinstance(entry.get("name"), str) and entry["name"],
            root,
            f"has {with_article(kind)} without a name",
        )
        _require(
            entry.get("dtype") in DTYPES,
            root,
            f"{kind} {entry.get('name')!r} has dtype {entry.get('dtype')!r}",
        )
        shape = entry.get("shape")
        _require(
            isinstance(shape, list) and len(shape) <= 5, root, f"{kind} {entry['name']!r} has a bad shape"
        )
        for dim in shape:
            ok = (isinstance(dim, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_+\-]*", dim) is not None) or (
                isinstance(dim, int) and 0 <= dim <= MAX_VOCAB_LIMIT
            )
            _require(ok, root, f"{kind} {entry['name']!r} has an invalid dimension {dim!r}")


def validate_manifest(root: Path, data: Any) -> dict:
    """Check a manifest's schema and bounds; upgrade the previous format in memory. Returns the manifest."""
    _require(isinstance(data, dict), root, "is not a JSON object")
    version = data.get("format_version")
    if isinstance(version, int) and version > FORMAT_VERSION:
        raise UserError(
            f"bundle {root} has format_version {version}, newer than this trtpipe reads ({FORMAT_VERSION}); "
            "upgrade trtpipe (pip install -U trtpipe) or re-export the bundle with this version"
        )
    _require(version in READABLE_VERSIONS, root, f"has an unknown format_version {version!r}")
    if version == 1:
        data = upgrade_v1(data)
    _require(data.get("family") in MODELS, root, f"has an unknown family {data.get('family')!r}")
    _require(data.get("task") in ALL_TASKS, root, f"has an unknown task {data.get('task')!r}")
    _check_io(root, data.get("inputs"), "input")
    _check_io(root, data.get("outputs"), "output")
    limits = data.get("limits")
    _require(isinstance(limits, dict), root, "has no limits")
    for key, bound in (("max_positions", MAX_POSITIONS_LIMIT), ("vocab_size", MAX_VOCAB_LIMIT)):
        value = limits.get(key)
        _require(
            isinstance(value, int) and 0 < value <= bound, root, f"limits.{key}={value!r} is out of range"
        )
    max_length = limits.get("max_length", limits["max_positions"])
    _require(
        isinstance(max_length, int) and 0 < max_length <= limits["max_positions"],
        root,
        "limits.max_length is invalid",
    )
    model = data.get("model", {})
    _require(isinstance(model, dict), root, "has a malformed model section")
    for key in ("hidden_size", "num_layers", "num_heads", "head_dim"):
        value = model.get(key)
        _require(
            value is None or (isinstance(value, int) and 0 < value <= MAX_DIM_LIMIT),
            root,
            f"model.{key} is out of range",
        )
    labels = data.get("labels") or {}
    _require(
        isinstance(labels, dict) and all(isinstance(v, str) for v in labels.values()), root, "has bad labels"
    )
    variants = data.get("variants")
    _require(isinstance(variants, dict) and "fp32" in variants, root, "has no fp32 variant")
    for name, variant in variants.items():
        _require(
            isinstance(variant, dict) and isinstance(variant.get("file"), str),
            root,
            f"variant {name!r} is malformed",
        )
        _require(
            isinstance(variant.get("sha256"), dict) and variant["sha256"],
            root,
            f"variant {name!r} has no sha256",
        )
        for rel in variant["sha256"]:
            inside(root, rel)
    engines = data.get("engines", {})
    _require(isinstance(engines, dict), root, "has a malformed engines section")
    for rel in engines:
        inside(root, rel)
    tok = data.get("tokenizer", {})
    _require(isinstance(tok, dict) and isinstance(tok.get("file"), str), root, "has no tokenizer entry")
    inside(root, tok["file"])
    return data


def upgrade_v1(data: dict) -> dict:
    """Format 1 had no `engines` section and no `limits.max_length`: lift it into format 2 in memory."""
    data = dict(data)
    data.setdefault("engines", {})
    if isinstance(data.get("limits"), dict):
        data["limits"] = {"max_length": data["limits"].get("max_positions"), **data["limits"]}
    data["format_version"] = FORMAT_VERSION
    data["upgraded_from"] = 1
    return data
