"""The package's structure: no import cycle anywhere in src/, and caches are changed only by cache code."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "lavakv"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> lavakv modules it imports, anywhere in the file (function-level imports included).

    ``from X import Y`` counts as an import of ``X.Y`` when that is a module, else of ``X``. Importing a module
    also runs its parent packages' ``__init__``; those implicit edges are left out (every module would otherwise
    depend on ``lavakv/__init__``): a package's ``__init__`` may re-export its own submodules. Imports under
    ``if TYPE_CHECKING:`` never run and are left out too.
    """
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str] = set()
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), filename=str(path))
        for block in ast.walk(tree):
            if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING":
                block.body = []
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("lavakv"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("lavakv"):
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    edges.add(sub if sub in modules else target)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_in_src():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_runtime_never_imports_methods_and_scorers_never_import_allocation():
    graph = import_graph()
    for name, edges in graph.items():
        if name.startswith(("lavakv.runtime", "lavakv.cache", "lavakv.attention")):
            assert "lavakv.methods" not in edges, name
        if name.startswith("lavakv.scorers"):
            assert not any(e.startswith("lavakv.allocation") for e in edges), name
        if name.startswith("lavakv.allocation"):
            assert not any(e.startswith("lavakv.scorers") for e in edges), name
        if name.startswith(("lavakv.eval", "lavakv.cli", "lavakv.bench")):  # public session API only
            inner = [e for e in edges if e.startswith(("lavakv.attention", "lavakv.cache"))]
            assert inner in ([], ["lavakv.attention.native"]), (name, inner)


def _attribute_writes_on_caches(path: Path) -> list[str]:
    """``x.attr = ...`` / ``setattr(x, ...)`` where x names a cache or a cache layer (``cache``, ``layer``,
    ``...layers[i]``)."""

    def names_cache(node: ast.AST) -> bool:
        if isinstance(node, ast.Subscript):
            node = node.value
            return isinstance(node, ast.Attribute) and node.attr == "layers"
        return isinstance(node, ast.Name) and ("cache" in node.id.lower() or "layer" in node.id.lower())

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            for t in ast.walk(target):
                if isinstance(t, ast.Attribute) and isinstance(t.ctx, ast.Store) and names_cache(t.value):
                    found.append(f"{path.name}:{t.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and names_cache(node.args[0]):
            found.append(f"{path.name}:{node.lineno}")
    return found


def test_nothing_outside_the_cache_package_sets_attributes_on_a_cache():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name != "cache":
            offenders += _attribute_writes_on_caches(path)
    assert offenders == []
