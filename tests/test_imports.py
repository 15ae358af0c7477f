"""The project's import graph, read from the source (nothing is imported): dependency arrows
point one way, CLI -> orchestration -> tracking/search -> trainables -> base.

Imports inside functions count as arrows too: a cycle held together by them is still a cycle.
A function-local import of a project module is allowed only where it keeps a heavy dependency
(torch, ray, mlflow, ...) off a light path (``tunebert --help``, ``predict``), and says so in a
comment containing ``local:`` on its line or the line above.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuning", "trainables", "search_spaces")
# package -> the packages it must never import
FORBIDDEN = {"trainables": ("search_spaces", "tuning"), "search_spaces": ("tuning",)}
MAX_LOCAL_IMPORTS = 20  # what the tree has now (62 before commands were defined in tuning.cli.commands)


def _modules() -> dict[str, Path]:
    mods = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The project module ``name`` names (a name inside a module: that module), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _targets(node: ast.AST, module: str) -> set[str]:
    """The project modules an import statement reads: ``from pkg import name`` reads ``pkg`` (its
    ``__init__`` runs) and ``pkg.name`` when that is a module."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
            parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
        return set()
    return {_resolve(name) for name in names} - {None, module}


def _graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Every module's imported project modules, and the function-local project imports as
    (module, line, source line)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    local = []
    for module, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
        lines = source.splitlines()
        inner = {id(node) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn)}
        for node in ast.walk(tree):
            targets = _targets(node, module)
            edges[module] |= targets
            if targets and id(node) in inner:
                local.append((module, node.lineno, _comment_zone(lines, node.lineno)))
    return edges, local


def _comment_zone(lines: list[str], lineno: int) -> str:
    """Where the reason for the import on line ``lineno`` may stand: its own line, the import
    lines just above it (one comment serves a block of imports) and the line above those."""
    first = lineno - 1
    while first > 0 and lines[first - 1].lstrip().startswith(("import ", "from ")):
        first -= 1
    return "\n".join(lines[max(first - 1, 0):lineno])


def _a_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


EDGES, LOCAL = _graph()


def test_the_project_has_no_import_cycle_counting_imports_inside_functions():
    cycle = _a_cycle(EDGES)
    assert cycle is None, "import cycle: " + " -> ".join(cycle) + \
        " (move the shared piece into a lower module, or pass a value instead of importing)"


def test_packages_import_only_downwards():
    wrong = sorted(f"{a} -> {b}" for a, targets in EDGES.items() for b in targets
                   if b.split(".")[0] in FORBIDDEN.get(a.split(".")[0], ()))
    assert not wrong, f"imports against the layering (tuning -> search_spaces -> trainables): {wrong}"


def test_function_local_project_imports_are_few_and_each_says_why():
    unexplained = [f"{m}:{line}" for m, line, text in LOCAL if "local:" not in text]
    assert not unexplained, ("a project import inside a function needs a reason on its line or just "
                             f"above its block of imports ('# local: keeps torch off --help'), or "
                             f"move it to the top: {unexplained}")
    assert len(LOCAL) <= MAX_LOCAL_IMPORTS, \
        f"{len(LOCAL)} function-local project imports (at most {MAX_LOCAL_IMPORTS}): " + \
        ", ".join(f"{m}:{line}" for m, line, _ in LOCAL)


def test_the_walk_sees_a_cycle_and_a_local_import():
    # the checks above are only as good as this walk: a two-module loop is found
    assert _a_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _a_cycle({"a": {"b"}, "b": set()}) is None
    assert EDGES["tuning.cli"], "the walk found no import in tuning/cli/__init__.py"
