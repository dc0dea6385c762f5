"""Files: paths confined to a bundle (no absolute paths, `..` or symlinks out), sha256, sizes, JSON documents."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from .errors import UserError


def inside(root: Path, relative: str) -> Path:
    """Resolve `relative` under `root`, refusing absolute paths, `..` and symlinks that lead outside."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise UserError(
            f"bundle {root}: invalid file name {relative!r} in manifest.json; re-export the bundle"
        )
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise UserError(
            f"bundle {root}: absolute path {relative!r} in manifest.json is not allowed; re-export"
        )
    parts = Path(relative).parts
    if ".." in parts:
        raise UserError(f"bundle {root}: path {relative!r} leaves the bundle ('..'); re-export the bundle")
    root_real = root.resolve()
    target = (root / relative).resolve()
    if target != root_real and root_real not in target.parents:
        raise UserError(
            f"bundle {root}: {relative!r} points outside the bundle (symlink?); re-export the bundle"
        )
    return root / relative


def sha256_file(path: Path, chunk: int = 1 << 23) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def read_json(path: Path, problem: str):
    """Parse a JSON file; if it is not valid JSON (or not UTF-8), a UserError made from `problem`, a message
    with `{error}` where the decoder's error class goes."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(problem.format(error=exc.__class__.__name__)) from None
