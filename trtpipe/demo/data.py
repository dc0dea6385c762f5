"""Demo training data from the offline corpus (Python docs, PSF license): text units, splits, token streams and
the docstring classification task.

A unit is one paragraph of a `pydoc_data.topics` page or one standard-library docstring. A unit is held out when
`corpus.is_heldout(unit)` (sha1 rule, ~10 %), so the split never depends on order, and a docstring is held out for
pretraining exactly when it is held out for classification: no model ever trains on a held-out docstring.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass

from .. import corpus

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
_RULE = re.compile(r"^[\s*=\-~^#+]+$")

# Docstring classification: which part of the standard library a docstring comes from. Label → top-level modules.
# Eight families with ≥ 20 held-out docstrings each that exist in every CPython 3.10–3.13 (no distutils).
CLASSES: dict[str, tuple[str, ...]] = {
    "networking": (
        "socket",
        "ssl",
        "socketserver",
        "selectors",
        "http",
        "urllib",
        "ftplib",
        "smtplib",
        "imaplib",
        "poplib",
        "nntplib",
        "telnetlib",
        "wsgiref",
        "ipaddress",
        "xmlrpc",
    ),
    "email": ("email", "mailbox", "mimetypes", "quopri", "base64"),
    "async I/O": ("asyncio",),
    "processes & threads": ("multiprocessing", "threading", "concurrent", "subprocess", "queue", "sched"),
    "files & archives": (
        "tarfile",
        "zipfile",
        "shutil",
        "pathlib",
        "glob",
        "fnmatch",
        "tempfile",
        "filecmp",
        "gzip",
        "bz2",
        "lzma",
        "os",
        "posixpath",
        "ntpath",
        "genericpath",
    ),
    "numbers & math": ("_pydecimal", "decimal", "fractions", "statistics", "numbers", "random"),
    "testing": ("unittest", "doctest"),
    "logging": ("logging",),
}


def unwrap(text: str) -> str:
    """Join the hard-wrapped lines of prose paragraphs; keep indented blocks (code, grammar) and rules as they are."""
    paragraphs = []
    for block in _PARAGRAPH.split(text.strip("\n")):
        lines = block.split("\n")
        prose = all(line and not line[0].isspace() and not _RULE.match(line) for line in lines)
        if prose:
            paragraphs.append(re.sub(r" {2,}", " ", " ".join(line.strip() for line in lines)))
        else:
            paragraphs.append(block.rstrip())
    return "\n\n".join(p for p in paragraphs if p.strip())


@functools.lru_cache(maxsize=1)
def documents() -> tuple[tuple[str, ...], ...]:
    """The corpus as documents of units: each topic page is a document of paragraphs, each docstring one unit."""
    docs: list[tuple[str, ...]] = []
    seen: set[str] = set()

    def fresh(units):
        out = tuple(u for u in units if u.strip() and u not in seen)
        seen.update(out)
        return out

    for text in corpus.topics().values():
        docs.append(fresh(_PARAGRAPH.split(unwrap(text))))
    for _, doc in corpus.stdlib_docstrings():
        docs.append(fresh([unwrap(doc)]))
    return tuple(d for d in docs if d)


def is_prose(paragraph: str) -> bool:
    """One unwrapped line of mostly letters and ≥ 4 words: not code, grammar, a table or a heading."""
    return (
        "\n" not in paragraph
        and not paragraph[:1].isspace()
        and len(paragraph.split()) >= 4
        and sum(ch.isalpha() for ch in paragraph) >= 0.6 * len(paragraph)
    )


def split_texts(split: str, limit: int | None = None, prose: bool = False) -> list[str]:
    """Pretraining text of one split, one string per document: the paragraphs of its units of that split, joined
    by blank lines; with `prose`, only prose paragraphs (no code examples, grammar rules, tables or headings)."""
    if split not in ("train", "heldout"):
        raise ValueError(split)
    want = split == "heldout"
    texts = []
    for doc in documents()[:limit]:
        units = [u for u in doc if corpus.is_heldout(u) == want]
        paragraphs = [p for u in units for p in _PARAGRAPH.split(u) if not prose or is_prose(p)]
        if paragraphs:
            texts.append("\n\n".join(paragraphs))
    return texts


# --------------------------------------------------------------------------------------------- classification


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    module: str


def _family(module: str) -> str | None:
    top = module.split(".")[0]
    for label, modules in CLASSES.items():
        if top in modules:
            return label
    return None


@functools.lru_cache(maxsize=2)
def classification_data(per_class_cap: int | None = None) -> dict[str, tuple[Example, ...]]:
    """Balanced docstring → module-family examples: {"train": …, "heldout": …}, deterministic.

    Docstrings that occur under two families are dropped, and so is a held-out docstring that occurs verbatim inside
    training text (the standard library repeats sentences: `FileHandler`'s docstring is part of a longer one), so
    held-out accuracy is never measured on text a model saw; each split keeps the same number per class (the
    smallest class), chosen by sha1 so the selection never depends on file order; train order is shuffled by
    the trainer, held-out order is by label then hash.
    """
    labels = list(CLASSES)
    found: dict[str, set[str]] = {}
    module_of: dict[str, str] = {}
    for module, doc in corpus.stdlib_docstrings():
        family = _family(module)
        if family is None:
            continue
        text = unwrap(doc)
        found.setdefault(text, set()).add(family)
        module_of.setdefault(text, module)
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "heldout": {}}
    seen_in_training = "\x00".join(split_texts("train"))
    for text, families in found.items():
        if len(families) != 1:
            continue
        split = "heldout" if corpus.is_heldout(text) else "train"
        if split == "heldout" and text in seen_in_training:
            continue
        by_split[split].setdefault(next(iter(families)), []).append(text)
    data = {}
    for split, groups in by_split.items():
        missing = [label for label in labels if label not in groups]
        if missing:
            raise RuntimeError(f"no {split} docstrings for classes {missing}")
        size = min(len(groups[label]) for label in labels)
        if per_class_cap:
            size = min(size, per_class_cap)
        examples = []
        for index, label in enumerate(labels):
            chosen = sorted(groups[label], key=_sha1)[:size]
            examples += [Example(text, index, module_of[text]) for text in chosen]
        data[split] = tuple(examples)
    return data


def _sha1(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()
