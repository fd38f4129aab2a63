"""The layout's rules, read from the source with `ast`: no import cycle in app/ or workers/, and an engine that
imports nothing of the service (app/, FastAPI, SQLAlchemy, Celery).

Every import counts, a function-local one too (an import moved into a function to dodge a cycle still ties the
two modules together); only imports under `if TYPE_CHECKING:` are left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "workers")
SERVICE_STACK = ("app", "fastapi", "starlette", "sqlalchemy", "celery", "kombu", "alembic")


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the checked packages (a package is its __init__)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name an import statement of the module names: `import a.b` names a.b, `from a import b`
    names a.b (a submodule, or a name defined in a)."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of app/ and workers/ it imports. A name that is no module is the module defining it
    (`from a import f` depends on a, even from inside package a); importing a module also runs its packages'
    __init__, except the importer's own packages (already running when it is imported)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        own = set(_ancestors(module))
        targets = set()
        for name in imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py"):
            while name and name not in files:
                name = name.rpartition(".")[0]
            if name:
                targets |= {name} | (set(_ancestors(name)) - own)
        graph[module] = {t for t in targets if t in files and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
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
            connect(v)
    return found


def test_the_checker_sees_a_cycle_and_a_function_local_import() -> None:
    a = ast.parse("import x.b\n")
    b = ast.parse("def f():\n    from x import a\n")
    assert imported_names(a, "x.a", False) == {"x.b"}
    assert imported_names(b, "x.b", False) == {"x.a"}
    assert cycles({"x.a": {"x.b"}, "x.b": {"x.a"}, "x.c": {"x.a"}}) == [["x.a", "x.b"]]
    hidden = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x.b\n")
    assert imported_names(hidden, "x.a", False) == {"typing.TYPE_CHECKING"}


def test_no_import_cycle_in_app_or_workers() -> None:
    graph = import_graph()
    assert len(graph) > 100 and "app.forget.service" in graph["app.forget.router"]  # the graph is really read
    assert cycles(graph) == []


def test_the_engine_imports_nothing_of_the_service() -> None:
    files = module_files()
    offending = {}
    for module, path in files.items():
        if module == "workers.engine" or module.startswith("workers.engine."):
            names = imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
            bad = sorted(n for n in names if n.split(".")[0] in SERVICE_STACK)
            if bad:
                offending[module] = bad
    assert offending == {}
