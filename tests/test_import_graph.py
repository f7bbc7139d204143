"""The weightvault modules import each other without a cycle at module level, and only
``weightvault.frameworks.torch`` imports torch.

Only imports that run when a module is first imported count: those at module level (inside
``try``/``if`` blocks too, but not under ``if TYPE_CHECKING:``). Imports inside functions run
later, when the modules are already there, and are what breaks a cycle on purpose. Importing
``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so those are edges too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import weightvault

SRC = Path(weightvault.__file__).parent
ROOT = "weightvault"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run at import time (not in functions, classes' methods or
    ``if TYPE_CHECKING:`` blocks)."""
    stack: list[ast.stmt] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if "TYPE_CHECKING" not in ast.unparse(node.test):
                stack.extend(node.body)
            stack.extend(node.orelse)
        elif isinstance(node, ast.Try):
            stack.extend([*node.body, *node.orelse, *node.finalbody])
            for handler in node.handlers:
                stack.extend(handler.body)
        elif isinstance(node, (ast.With, ast.ClassDef)):
            stack.extend(node.body)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _ancestors(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


def _targets(importer: str, target: str, known: dict[str, Path]) -> set[str]:
    """The modules importing ``target`` runs: it, and its packages that are not already being
    imported (an importer's own packages run before it, so they are no edge by themselves)."""
    implied = _ancestors(target) - _ancestors(importer)
    return ({target} | implied) & set(known)


def import_graph() -> dict[str, set[str]]:
    """``{module: modules it imports at module level}`` over weightvault's own modules."""
    known = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = _resolve(name, is_package, node)
                subs = [f"{base}.{alias.name}" for alias in node.names]
                # `from pkg import name` needs pkg's __init__ itself unless every name is a
                # submodule (then only the submodules run, pkg being already imported).
                whole = not all(sub in known for sub in subs)
                targets = [*([base] if whole else []), *(s for s in subs if s in known)]
            for target in targets:
                if target.split(".")[0] == ROOT:
                    edges |= _targets(name, target, known)
        edges.discard(name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_level_import_cycle() -> None:
    found = cycles(import_graph())
    assert found == [], "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_cycle_finder_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_module_level_imports_only() -> None:
    graph = import_graph()
    assert "weightvault.errors" in graph["weightvault"]  # `from weightvault.errors import ...`
    assert "weightvault.api" not in graph["weightvault"]  # imported lazily, in __getattr__


def test_torch_is_imported_in_one_place() -> None:
    # frameworks/ is torch's place: the adapter (frameworks/torch.py) for tensors, and modules
    # that exist only to plug into torch.distributed (DCP storage, DTensor sharded saves)
    importers = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == "torch" or n.startswith("torch.") for n in names):
                importers.append(name)
    assert "weightvault.frameworks.torch" in importers
    outside = sorted({m for m in importers if not m.startswith("weightvault.frameworks.")})
    assert outside == [], f"torch imported outside weightvault.frameworks: {outside}"
