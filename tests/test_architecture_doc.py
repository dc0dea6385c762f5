"""docs/architecture.md's tree stays true: every .py file under trtpipe/ is in it with its one line, and every file
and folder it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
# One entry of the tree: an indent (two spaces a level), one or more names ("encode.py, decode.py", "runtime/"),
# then two or more spaces and the line that says what it is. A line that does not start with names continues the
# description above it.
NAME = r"[\w.-]+(?:\.py|/)"
ENTRY = re.compile(rf"^(?P<indent> *)(?P<names>{NAME}(?:, {NAME})*)(?: {{2,}}(?P<text>\S.*))?$")


def tree_block(markdown: str) -> list[str]:
    """The lines of the first code block after the "## The tree" heading."""
    after = markdown.split("\n## The tree", 1)[1]
    return after.split("```", 2)[1].strip("\n").splitlines()


def parse_tree(lines: list[str]) -> dict[str, str]:
    """Path (relative to the repository root; folders end with "/") → its description ("" when none)."""
    entries: dict[str, str] = {}
    folders: list[str] = []
    previous: list[str] = []
    for line in lines:
        match = ENTRY.match(line)
        if not match:
            assert line.strip() and previous, f"not a tree line: {line!r}"
            for path in previous:  # a continuation line
                entries[path] += " " + line.strip()
            continue
        depth, rest = divmod(len(match["indent"]), 2)
        assert not rest and depth <= len(folders), f"bad indent: {line!r}"
        del folders[depth:]
        previous = []
        for name in match["names"].split(", "):
            path = "".join(folders) + name
            assert path not in entries, f"{path} is listed twice"
            entries[path] = match["text"] or ""
            previous.append(path)
        if match["names"].endswith("/"):
            folders.append(match["names"])
    return entries


def problems(entries: dict[str, str], root: Path, package: str = "trtpipe") -> list[str]:
    """What the tree gets wrong about `root`: files missing from it or without their line, listed paths that do not
    exist. A package's __init__.py may be described by its folder's line instead of its own."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        folder = rel.rpartition("/")[0] + "/"
        if entries.get(rel) or (path.name == "__init__.py" and entries.get(folder)):
            continue
        found.append(
            f"{rel} is not in the tree with its one line" if rel not in entries else f"{rel} has no line"
        )
    for rel in entries:
        target = root / rel
        if not (target.is_dir() if rel.endswith("/") else target.is_file()):
            found.append(f"{rel} is listed but does not exist")
    return found


def test_the_tree_lists_every_file_with_its_line_and_nothing_else():
    entries = parse_tree(tree_block(DOC.read_text(encoding="utf-8")))
    assert "trtpipe/runtime/trt/session.py" in entries and "trtpipe/benchmark/decode.py" in entries
    assert problems(entries, ROOT) == []


def test_the_tree_check_catches_what_it_is_for(tmp_path):
    for rel in (
        "cli.py",
        "pkg/__init__.py",
        "pkg/a.py",
        "pkg/sub/__init__.py",
        "pkg/sub/b.py",
        "pkg/sub/c.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text('"""x"""\n')
    doc = "# A\n\n## The tree\n\n```\n" + "\n".join(
        [
            "cli.py                shim",
            "pkg/",
            "  __init__.py         version",
            "  a.py                the a module,",
            "                      over two lines",
            "  sub/                a folder",
            "    b.py, c.py        two files on one line",
            "```",
        ]
    )
    entries = parse_tree(tree_block(doc))
    assert entries["pkg/a.py"] == "the a module, over two lines"
    assert entries["pkg/sub/c.py"] == entries["pkg/sub/b.py"] == "two files on one line"
    assert entries["pkg/"] == "" and entries["pkg/sub/"] == "a folder"
    assert problems(entries, tmp_path, "pkg") == []
    (tmp_path / "pkg" / "sub" / "new.py").write_text('"""x"""\n')
    (tmp_path / "pkg" / "a.py").unlink()
    assert problems(entries, tmp_path, "pkg") == [
        "pkg/sub/new.py is not in the tree with its one line",
        "pkg/a.py is listed but does not exist",
    ]
    bare = parse_tree(["pkg/", "  a.py", "  sub/"])
    (tmp_path / "pkg" / "a.py").write_text('"""x"""\n')
    found = problems(bare, tmp_path, "pkg")
    assert "pkg/a.py has no line" in found
    assert (
        "pkg/sub/__init__.py is not in the tree with its one line" in found
    )  # its folder has no line either
