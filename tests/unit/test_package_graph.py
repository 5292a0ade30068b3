"""The package graph, read from the source with ``ast``: who may import whom.

Layers, from the bottom: ``protos`` (generated contracts) -> ``rideshare`` (the shared
runtime) -> the services -> ``scripts`` (developer tools run from a checkout). A package
imports only the layers below it and itself:

- a service imports ``protos`` and ``rideshare``, never another service: services talk over
  gRPC and NATS, so one can change (or run as N copies) without the others;
- ``rideshare`` imports no service and no script. One exception, by name: the launcher
  ``rideshare.cli`` signs tokens with the edge's own code, imported inside the function
  that needs it, so importing the shared runtime still imports no service;
- nothing installed imports ``scripts`` or ``tests``;
- within a package, modules import each other without a circle. Imports under
  ``TYPE_CHECKING`` count: they are the same coupling, only deferred.

Every import counts wherever it is written (module level, a function body, a
``TYPE_CHECKING`` block), as in tests/unit/test_pure_imports.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping, Set
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("rider", "driver", "trip", "location", "notification", "edge")
PACKAGES = ("protos", "rideshare", *SERVICES, "scripts")
MAY_IMPORT: Mapping[str, frozenset[str]] = {
    "protos": frozenset(),
    "rideshare": frozenset({"protos"}),
    **{service: frozenset({"protos", "rideshare"}) for service in SERVICES},
    "scripts": frozenset({"protos", "rideshare", *SERVICES}),
}

# Upward imports allowed by name: (importer, imported), each only inside a function body.
LAZY_UPWARD: frozenset[tuple[str, str]] = frozenset(
    {
        ("rideshare.cli", "edge.auth"),  # rideshare token: the edge's signing
        ("rideshare.cli", "edge.settings"),  # ... and its secret in the data dir
    }
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    in_function: bool
    line: int

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.importer} imports {self.imported} ({where}, line {self.line})"


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {
        module_name(path, root): path
        for package in PACKAGES
        for path in sorted((root / package).rglob("*.py"))
    }


def _walk(node: ast.AST, in_function: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    for child in ast.iter_child_nodes(node):
        yield child, in_function
        nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
        yield from _walk(child, nested)


def read_imports(name: str, path: Path, modules: Set[str]) -> list[Import]:
    """What module ``name`` imports of ``modules``: each name resolved to the module that
    defines it (``from rideshare import bus`` is ``rideshare.bus``; ``from edge.auth import
    issue_token`` is ``edge.auth``), relative imports resolved against ``name``'s package."""

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: list[Import] = []
    for node, in_function in _walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            imported = resolve(target)
            if imported is not None and imported != name:
                found.append(Import(name, imported, in_function, node.lineno))
    return found


def all_imports(root: Path = ROOT) -> list[Import]:
    modules = project_modules(root)
    return [i for name, path in modules.items() for i in read_imports(name, path, set(modules))]


def circles(edges: Set[tuple[str, str]]) -> list[list[str]]:
    """The import circles among ``edges``: strongly connected sets of two or more modules
    (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                found.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def _package(module: str) -> str:
    return module.split(".")[0]


IMPORTS = all_imports()


def within(package: str) -> set[tuple[str, str]]:
    return {
        (i.importer, i.imported)
        for i in IMPORTS
        if _package(i.importer) == package and _package(i.imported) == package
    }


def test_every_package_is_read() -> None:
    names = {_package(i.importer) for i in IMPORTS}
    assert names == set(PACKAGES)
    assert ("rideshare.cli", "rideshare.supervisor") in {(i.importer, i.imported) for i in IMPORTS}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_layers_below_it(package: str) -> None:
    wrong = [
        str(i)
        for i in IMPORTS
        if _package(i.importer) == package
        and _package(i.imported) not in {package, *MAY_IMPORT[package]}
        and not (i.in_function and (i.importer, i.imported) in LAZY_UPWARD)
    ]
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])}:\n" + "\n".join(
        wrong
    )


def test_the_allowed_upward_imports_are_lazy_and_still_there() -> None:
    lazy = {(i.importer, i.imported) for i in IMPORTS if i.in_function}
    assert lazy >= LAZY_UPWARD


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_has_no_import_circle(package: str) -> None:
    found = circles(within(package))
    assert not found, f"import circles in {package}: {found}"


def test_the_reader_resolves_relative_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    (tmp_path / "edge" / "routes").mkdir(parents=True)
    files = {
        "edge/__init__.py": "",
        "edge/app.py": "from edge.routes import admin\n",
        "edge/routes/__init__.py": "",
        "edge/routes/admin.py": (
            "from typing import TYPE_CHECKING\n"
            "from .. import app as _app\n"
            "if TYPE_CHECKING:\n    from ..app import Ctx\n"
            "def f():\n    from rideshare.cli import main\n"
        ),
        "rideshare/__init__.py": "",
        "rideshare/cli.py": "",
    }
    (tmp_path / "rideshare").mkdir()
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    modules = {module_name(tmp_path / name, tmp_path) for name in files}
    found = read_imports("edge.routes.admin", tmp_path / "edge/routes/admin.py", modules)
    assert {(i.imported, i.in_function) for i in found} == {
        ("edge.app", False),
        ("rideshare.cli", True),
    }
    assert circles({("edge.app", "edge.routes.admin"), ("edge.routes.admin", "edge.app")}) == [
        ["edge.app", "edge.routes.admin"]
    ]
