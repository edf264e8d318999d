"""No import circles in ``quantsweep/`` (issue 15), counting every import the code can execute.

The graph is read from the source, not from ``sys.modules``: an arrow is drawn for

- every ``import`` / ``from ... import`` statement, wherever it stands (module level, inside a
  function, under ``if TYPE_CHECKING``), relative imports resolved;
- every package module named by a string in a module that loads modules by name
  (``importlib.import_module`` / ``__import__``): the lazy export table of ``quantsweep/__init__.py``
  and the method catalog's ``BUILTIN_METHOD_MODULES`` among them.

``from package import name`` points at ``package.name`` when that is a module, else at ``package``.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "quantsweep"


def module_names(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        if "_shipped" in path.parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_edges(root: Path) -> dict[str, set[str]]:
    """module -> the package modules it can import."""
    modules = module_names(root)
    top = root.name
    edges: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        loads_by_name = False
        strings = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    edges[name].add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    child = f"{source}.{alias.name}"
                    edges[name].add(child if child in modules else source)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                strings.add(node.value)
            elif isinstance(node, (ast.Attribute, ast.Name)):
                if getattr(node, "attr", None) == "import_module" or getattr(node, "id", None) in (
                    "import_module",
                    "__import__",
                ):
                    loads_by_name = True
        if loads_by_name:
            edges[name] |= {s for s in strings if s in modules}
        edges[name] = {e for e in edges[name] if e in modules and e != name and e.split(".")[0] == top}
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_quantsweep_has_no_import_circle():
    edges = import_edges(PACKAGE_ROOT)
    assert len(edges) > 50  # the whole package was read
    assert circles(edges) == []


def test_modules_loaded_by_name_are_counted():
    catalog = importlib.import_module("quantsweep.methods.catalog")
    edges = import_edges(PACKAGE_ROOT)
    assert set(catalog.BUILTIN_METHOD_MODULES) <= edges["quantsweep.methods.catalog"]
    assert "quantsweep.eval.harness" in edges["quantsweep"]  # the lazy export table of quantsweep/__init__.py


def test_the_check_finds_a_planted_circle_in_functions_and_by_name(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text(
        "import importlib\nMODULES = ('pkg.c',)\n\n\ndef load():\n    return [importlib.import_module(m) for m in MODULES]\n"
    )
    (package / "c.py").write_text("from . import a\n")
    edges = import_edges(package)
    assert edges["pkg.a"] == {"pkg.sub.b"} and edges["pkg.sub.b"] == {"pkg.c"} and edges["pkg.c"] == {"pkg.a"}
    assert circles(edges) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
