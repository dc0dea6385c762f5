"""The package keeps the shape docs/architecture.md describes: no import cycles, short files that say their one
idea, and no branch on a model family outside the spec table (models.py), export/ and demo/."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "trtpipe"
MAX_LINES = 400
# Generic stages: what differs between families is answered by models.py's spec table, not by branches here.
GENERIC = ("runtime", "optimize", "engines", "serving", "benchmark", "parity", "commands")
FAMILY_BRANCH = re.compile(
    r"""family\s*[!=]=|model_type\s*[!=]=|"""
    r"""["'](bert|albert|gpt2|distilbert|roberta|xlm-roberta|electra|mpnet|deberta-v2|modernbert)["']"""
)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package modules it imports, at module level or inside functions alike (a lazy import is
    still a dependency)."""
    known = modules(root)
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known:
                        deps.add(sub)
                    elif target in known:
                        deps.add(target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names if alias.name in known)
        deps.discard(name)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for dep in sorted(graph.get(node, ())):
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in on_stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path):
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text('"""p"""\n')
    (root / "a.py").write_text("from .sub import b\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "b.py").write_text("def f():\n    from ..a import g\n")
    (root / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(root)) == [["pkg.a", "pkg.sub.b"]]


def test_no_import_cycles_inside_trtpipe():
    assert cycles(import_graph()) == []


def test_the_runtime_imports_only_itself_and_the_spec_table():
    graph = import_graph()
    outside = {
        f"{name} -> {dep}"
        for name, deps in graph.items()
        if name.startswith("trtpipe.runtime")
        for dep in deps
        if not dep.startswith("trtpipe.runtime") and dep != "trtpipe.models"
    }
    assert outside == set()


@pytest.mark.parametrize("path", sorted(modules().values()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_each_file_is_short_and_opens_with_its_idea(path):
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines (at most {MAX_LINES}): split it by idea"
    docstring = ast.get_docstring(ast.parse(text))
    assert docstring and len(docstring.split()) >= 5, f"{path.name} needs a docstring that says its one idea"


def test_no_branch_on_a_family_outside_the_spec_table():
    offenders = []
    for stage in GENERIC:
        for path in sorted((PACKAGE / stage).rglob("*.py")):
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if FAMILY_BRANCH.search(code):
                    offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_family_grep_catches_what_it_is_for():
    assert FAMILY_BRANCH.search('if family == "gpt2":')
    assert FAMILY_BRANCH.search('model_type = "gpt2" if x else "bert"')
    assert FAMILY_BRANCH.search("if config.model_type != spec:")
    assert not FAMILY_BRANCH.search("if bundle.is_decoder:")


def a_before_a_name(source: str) -> list[int]:
    """Lines of f-strings whose text puts a fixed "a " right before a placeholder ("is a {task} bundle"): the article
    depends on the name there, so it goes through runtime.errors.with_article ("is an embed bundle")."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr):
            parts = node.values
            for part, after in zip(parts, parts[1:]):
                text = part.value if isinstance(part, ast.Constant) else ""
                if isinstance(after, ast.FormattedValue) and re.search(r"(^|[^\w$])[aA] $", str(text)):
                    lines.append(node.lineno)
    return lines


def test_no_message_puts_a_fixed_a_before_a_name():
    offenders = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in a_before_a_name(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], (
        'write f"is {with_article(name)} …" (trtpipe.runtime.errors), not f"is a {name} …"'
    )


def test_the_article_check_catches_what_it_is_for():
    assert a_before_a_name('f"{path} is a {bundle.task} bundle"') == [1]
    assert a_before_a_name('x = (\n    "is a "\n    f"{task} bundle"\n)') == [2]
    assert a_before_a_name('f"A {kind} has no name"') == [1]
    assert a_before_a_name('f"is {with_article(task)} bundle"') == []
    assert a_before_a_name('f"{bos} $A {eos}"') == []
    assert a_before_a_name('"""a {question} dict in a docstring"""') == []
