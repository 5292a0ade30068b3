"""The pure cores import no I/O: read every ``domain.py`` and ``machine.py`` with ``ast``.

Dependencies point inward, so a service's ``domain.py`` and ``machine.py`` (and the
trip service's other pure modules) never import asyncio, grpc, asyncpg, nats, redis or the
generated protos, nor the service's own adapters. A ``wire.py`` converts to and from the
generated protos, so it may import those, but nothing else of that list and no adapter.
Reading the source, rather than importing it, catches an import hidden in a function body
too. (Import circles: tests/unit/test_package_graph.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("rider", "driver", "trip", "location", "notification", "edge")
FORBIDDEN = frozenset({"asyncio", "grpc", "asyncpg", "nats", "redis", "protos"})
ADAPTERS = frozenset(
    {
        "server",
        "store",
        "events",
        "commands",
        "feed",
        "app",
        "__main__",
        # the rider service's payment adapters
        "payment_store",
        "payments",
        "provider",
    }
)

PURE_MODULES = sorted(
    {path for service in SERVICES for path in (ROOT / service).glob("domain.py")}
    | {path for service in SERVICES for path in (ROOT / service).glob("machine.py")}
    | {
        ROOT / "trip" / name
        for name in ("errors.py", "pricing.py", "liveness.py", "matcher.py", "explain.py")
    }
    | {ROOT / "rider" / "billing.py"}
)
TRIP_PURE_MODULES = [path for path in PURE_MODULES if path.parent.name == "trip"]
# Proto <-> domain conversion: pure too, but the generated protos are what it converts.
WIRE_MODULES = sorted(
    ROOT / service / "wire.py" for service in ("rider", "driver", "location", "notification")
)


def _imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of everything ``path`` imports, relative imports resolved."""
    package = path.parent.name
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # `from .store import X` / `from . import store` inside the package
                base = package if node.module is None else f"{package}.{node.module}"
                names.update(f"{base}.{alias.name}" for alias in node.names)
                names.add(base)
            elif node.module is not None:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_trip_service_pure_modules_are_all_checked() -> None:
    expected = {
        "domain.py",
        "machine.py",
        "errors.py",
        "pricing.py",
        "liveness.py",
        "matcher.py",
        "explain.py",
    }
    assert {path.name for path in TRIP_PURE_MODULES} == expected
    assert all(path.is_file() for path in PURE_MODULES + WIRE_MODULES)


@pytest.mark.parametrize("path", PURE_MODULES, ids=_rel)
def test_pure_module_imports_no_io_library(path: Path) -> None:
    roots = {name.split(".")[0] for name in _imported_modules(path)}
    assert not roots & FORBIDDEN, f"{_rel(path)} imports {sorted(roots & FORBIDDEN)}"


@pytest.mark.parametrize("path", WIRE_MODULES, ids=_rel)
def test_wire_module_imports_no_io_library(path: Path) -> None:
    roots = {name.split(".")[0] for name in _imported_modules(path)}
    io = FORBIDDEN - {"protos"}
    assert not roots & io, f"{_rel(path)} imports {sorted(roots & io)}"


@pytest.mark.parametrize("path", PURE_MODULES + WIRE_MODULES, ids=_rel)
def test_pure_module_imports_none_of_its_services_adapters(path: Path) -> None:
    package = path.parent.name
    adapters = {
        name
        for name in _imported_modules(path)
        if name.split(".")[0] == package and ADAPTERS & set(name.split(".")[1:])
    }
    assert not adapters, f"{_rel(path)} imports adapters {sorted(adapters)}"


@pytest.mark.parametrize("path", TRIP_PURE_MODULES, ids=_rel)
def test_trip_pure_module_reads_no_clock_and_no_randomness(path: Path) -> None:
    # The clock and new ids are passed in, so every rule is testable on a fixed time.
    roots = {name.split(".")[0] for name in _imported_modules(path)}
    assert not roots & {"time", "random", "uuid", "secrets"}
    calls = {
        node.func.attr
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
    }
    assert not calls & {"now", "utcnow", "today"}
