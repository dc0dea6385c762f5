"""Real English text that is on every machine offline: the Python documentation shipped with CPython.

Two sources, both under the PSF license: `pydoc_data.topics` (the language reference topics, ~0.5 MB) and the
docstrings of the standard library's modules (read with `ast`, nothing is imported). Splits are deterministic:
a sentence belongs to the held-out split when its sha1 falls in the last tenth, so it never depends on order.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import re
import sysconfig
from pathlib import Path

_SKIP_DIRS = {
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "site-packages",
    "dist-packages",
    "turtledemo",
    "ensurepip",
    "__pycache__",
    "tkinter",
    "pydoc_data",
    "encodings",
}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    return text.strip()


@functools.lru_cache(maxsize=1)
def topics() -> dict[str, str]:
    from pydoc_data.topics import topics as data

    return dict(sorted(data.items()))


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[tuple[str, str], ...]:
    """(module, docstring) for every module, class and function docstring in the standard library sources."""
    root = Path(sysconfig.get_paths()["stdlib"])
    items: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    items.append((module, doc))
    return tuple(items)


def is_heldout(text: str) -> bool:
    return hashlib.sha1(text.encode("utf-8")).digest()[0] >= 230  # ~10 %


def split_sentences(text: str) -> list[str]:
    return [s for s in (_clean(p) for p in _SENTENCE_END.split(text)) if s]


@functools.lru_cache(maxsize=8)
def sentences(
    split: str = "all", min_words: int = 4, max_words: int = 60, docstrings: bool = False
) -> tuple[str, ...]:
    """Deterministic, de-duplicated English sentences. split: "train", "heldout" or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(split)
    sources = [text for text in topics().values()]
    if docstrings:
        sources += [doc for _, doc in stdlib_docstrings()]
    seen: set[str] = set()
    out: list[str] = []
    for text in sources:
        for sentence in split_sentences(text):
            words = sentence.split()
            if not (min_words <= len(words) <= max_words) or sentence in seen:
                continue
            if sum(ch.isalpha() for ch in sentence) < 0.6 * len(sentence):
                continue  # mostly code or punctuation
            seen.add(sentence)
            if split == "all" or (split == "heldout") == is_heldout(sentence):
                out.append(sentence)
    return tuple(out)


def sample(n: int, split: str = "heldout", seed: int = 0, **kwargs) -> list[str]:
    """n sentences, spread evenly over the split (deterministic for a seed)."""
    pool = sentences(split, **kwargs)
    if n >= len(pool):
        return list(pool)
    step = len(pool) / n
    offset = seed % max(1, int(step))
    return [pool[min(len(pool) - 1, int(i * step) + offset)] for i in range(n)]


def fingerprint(texts) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8"))
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def read_texts(path: str | Path | None, n: int, split: str) -> list[str]:
    """Calibration text: one text per line from a UTF-8 file, or the offline corpus."""
    if path is None:
        return sample(n, split=split)
    from .runtime.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration file {path} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"calibration file {path} is not UTF-8 text; convert it with iconv") from None
    except OSError as exc:
        raise UserError(f"cannot read calibration file {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UserError(
            f"calibration file {path} is empty; give one text per line (32 or more is a good start)"
        )
    return lines[:n]
