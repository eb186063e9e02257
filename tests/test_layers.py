"""The house plan: imports point down the layers, no cycles, scikit-learn and skorch
only in the estimators (docs/architecture.md draws the same table)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "skpose"

#: Layer of each top-level part of the package: a module may import from its own part
#: and from parts of a lower layer, never from a sibling of the same layer or above.
LAYERS = {
    "skpose._validation": 0,
    "skpose._compat": 0,
    "skpose._threads": 0,
    "skpose.geometry": 1,
    "skpose.imaging": 2,
    "skpose.io": 3,
    "skpose.metrics": 4,
    "skpose.simulate": 4,
    "skpose.search": 5,
    "skpose.learn": 5,
    "skpose.estimators": 6,
    "skpose.distributed": 7,
    "skpose.plotting": 7,
    "skpose.cli": 8,
    "skpose.__main__": 9,
    "skpose": 9,
}
#: Third-party packages allowed only in some parts.
CONFINED = {"sklearn": {"skpose.estimators"}, "skorch": {"skpose.estimators"}}
#: The command line is written against the public API (``import skpose``).
ALLOWED_UP = {("skpose.cli", "skpose")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _part(module: str) -> str:
    """The entry of :data:`LAYERS` a module belongs to."""
    owners = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return max(owners, key=len)


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # ``from skpose.search import grid`` imports skpose.search.grid.
            names = [base]
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if (ROOT.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    ROOT.parent / candidate.replace(".", "/") / "__init__.py"
                ).exists():
                    names.append(candidate)
        else:
            continue
        found += [(name, node.lineno, id(node) in top_level) for name in names]
    return found


FILES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in FILES:
        module = _module_name(path)
        assert any(module == p or module.startswith(p + ".") for p in LAYERS), (
            f"{module} is in no layer: add its part to LAYERS here and to "
            "docs/architecture.md"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down(path):
    module = _module_name(path)
    part = _part(module)
    for name, line, _ in _imports(path):
        top = name.split(".")[0]
        if top in CONFINED:
            assert part in CONFINED[top], (
                f"{module}:{line} imports {name}, allowed only in {CONFINED[top]}"
            )
        if top != "skpose":
            continue
        target = _part(name)
        if target == part or (part, target) in ALLOWED_UP:
            continue
        assert LAYERS[target] < LAYERS[part], (
            f"{module}:{line} imports {name}: layer {LAYERS[target]} ({target}) is not "
            f"below layer {LAYERS[part]} ({part})"
        )


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in FILES}
    for path in FILES:
        here = _module_name(path)
        graph[here] = {
            name
            for name, _, top_level in _imports(path)
            if top_level
            and name in modules
            and name != here
            # A package importing its own submodules is how re-exports work.
            and not name.startswith(here + ".")
        }
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checks_catch_a_breach(tmp_path, monkeypatch):
    """The layering check fails on an upward import (it is not vacuous)."""
    bad = ROOT / "geometry" / "rotations.py"
    source = bad.read_text() + "\nfrom skpose.estimators import ProjectionMatcher\n"
    fake = tmp_path / "skpose" / "geometry" / "rotations.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path / "skpose")
    with pytest.raises(AssertionError, match="is not below"):
        test_imports_point_down(fake)
