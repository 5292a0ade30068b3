"""Regenerate the Python code for every contract under protos/, or check that it is fresh.

    python -m scripts.gen_protos            # regenerate in place
    python -m scripts.gen_protos --check    # exit 1 and list files that are stale or missing

Exit status 2 means protoc itself failed (a syntax error in a .proto, a missing plugin).

For each ``protos/<area>/v1/<name>.proto`` this writes, next to it, ``<name>_pb2.py`` and
``<name>_pb2.pyi`` and, when the file defines a service, ``<name>_pb2_grpc.py`` and
``<name>_pb2_grpc.pyi``. Generated files whose ``.proto`` is gone are deleted (or reported by
``--check``), and every package directory on the way gets an empty ``__init__.py``.

Both modes generate into a temporary directory with one ``protoc`` run over the sorted list of
files from the repository root (``-I .``, so generated imports read
``from protos.trip.v1 import trip_pb2``); writing copies from there. The output depends only on
the ``.proto`` files and the pinned grpcio-tools / mypy-protobuf versions, so CI can compare
bytes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2

__all__ = ["REPO_ROOT", "Problem", "check", "find_protos", "generate", "main", "write"]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_PACKAGE = "protos"
MESSAGE_SUFFIXES = ("_pb2.py", "_pb2.pyi")
SERVICE_SUFFIXES = ("_pb2_grpc.py", "_pb2_grpc.pyi")
GENERATED_SUFFIXES = MESSAGE_SUFFIXES + SERVICE_SUFFIXES
PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")


@dataclass(frozen=True, slots=True)
class Problem:
    """One generated file that differs from what ``protoc`` makes of the ``.proto`` files."""

    kind: str  # "stale", "missing" or "orphan"
    path: str  # relative to the repository root, with forward slashes

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


def find_protos(root: Path = REPO_ROOT) -> list[Path]:
    """Return every ``.proto`` under ``<root>/protos``, relative to root, in a stable order."""
    return sorted(p.relative_to(root) for p in (root / PROTO_PACKAGE).rglob("*.proto"))


def _plugin(name: str) -> str:
    # Prefer the plugin installed next to this interpreter (the project's virtualenv), so the
    # result does not depend on PATH.
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install the dev extras (mypy-protobuf)")
    return found


def _files_with_services(descriptor_set: Path) -> set[str]:
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    return {f.name for f in fds.file if f.service}


def _expected_outputs(proto: Path, *, with_services: bool) -> list[Path]:
    stem = proto.with_suffix("")
    suffixes = GENERATED_SUFFIXES if with_services else MESSAGE_SUFFIXES
    return [stem.parent / (stem.name + suffix) for suffix in suffixes]


def _package_inits(protos: Sequence[Path]) -> list[Path]:
    dirs: set[Path] = set()
    for proto in protos:
        parent = proto.parent
        while parent != Path(PROTO_PACKAGE).parent:
            dirs.add(parent)
            parent = parent.parent
    return sorted(d / "__init__.py" for d in dirs)


def generate(out_dir: Path, *, root: Path = REPO_ROOT) -> list[Path]:
    """Generate the code for every contract under ``root`` into ``out_dir``.

    Returns the generated paths, relative to ``out_dir`` (which mirrors ``root``), sorted.
    Raises ``RuntimeError`` with protoc's message when compilation fails.
    """
    protos = find_protos(root)
    if not protos:
        raise RuntimeError(f"no .proto files under {root / PROTO_PACKAGE}")
    descriptor_set = out_dir / "descriptors.pb"
    out = str(out_dir)
    mypy_plugin, mypy_grpc_plugin = (_plugin(name) for name in PLUGINS)
    # `python -m grpc_tools.protoc` adds the well-known types (google/protobuf/*.proto) to the
    # include path itself.
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I",
        ".",
        f"--plugin=protoc-gen-mypy={mypy_plugin}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc_plugin}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--descriptor_set_out={descriptor_set}",
        *(p.as_posix() for p in protos),
    ]
    result = subprocess.run(command, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stderr.strip()}")
    with_services = _files_with_services(descriptor_set)
    descriptor_set.unlink()

    expected: list[Path] = []
    for proto in protos:
        has_services = proto.as_posix() in with_services
        expected += _expected_outputs(proto, with_services=has_services)
        if not has_services:
            # grpc_tools writes an (empty) _pb2_grpc module for every file; a contract without
            # a service has no use for it.
            for suffix in SERVICE_SUFFIXES:
                (out_dir / proto.parent / (proto.with_suffix("").name + suffix)).unlink(
                    missing_ok=True
                )
    for init in _package_inits(protos):
        (out_dir / init).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / init).touch()
        expected.append(init)
    for path in expected:
        if not (out_dir / path).is_file():
            raise RuntimeError(f"protoc did not produce {path.as_posix()}")
    return sorted(expected)


def _committed_generated(root: Path) -> set[Path]:
    base = root / PROTO_PACKAGE
    return {
        p.relative_to(root)
        for p in base.rglob("*")
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def _compare(fresh_dir: Path, fresh: Sequence[Path], root: Path) -> list[Problem]:
    problems: list[Problem] = []
    for rel in fresh:
        committed = root / rel
        if not committed.is_file():
            problems.append(Problem("missing", rel.as_posix()))
        elif rel.name == "__init__.py":
            continue  # hand-owned once it exists (it may carry a docstring)
        elif committed.read_bytes() != (fresh_dir / rel).read_bytes():
            problems.append(Problem("stale", rel.as_posix()))
    for rel in sorted(_committed_generated(root) - set(fresh)):
        problems.append(Problem("orphan", rel.as_posix()))
    return problems


def check(root: Path = REPO_ROOT) -> list[Problem]:
    """Return the generated files under ``root`` that are stale, missing or orphaned.

    An empty list means the committed code is exactly what the ``.proto`` files generate.
    """
    with tempfile.TemporaryDirectory(prefix="gen_protos-") as tmp:
        fresh_dir = Path(tmp)
        return _compare(fresh_dir, generate(fresh_dir, root=root), root)


def write(root: Path = REPO_ROOT) -> list[Problem]:
    """Regenerate in place; return what was out of date (now fixed)."""
    with tempfile.TemporaryDirectory(prefix="gen_protos-") as tmp:
        fresh_dir = Path(tmp)
        fresh = generate(fresh_dir, root=root)
        problems = _compare(fresh_dir, fresh, root)
        for problem in problems:
            target = root / problem.path
            if problem.kind == "orphan":
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(fresh_dir / problem.path, target)
        return problems


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m scripts.gen_protos",
        description="Regenerate *_pb2.py, *_pb2_grpc.py and .pyi stubs next to each .proto.",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 listing generated files that are stale, missing or orphaned",
    )
    args = parser.parse_args(argv)
    try:
        problems = check() if args.check else write()
    except RuntimeError as exc:
        print(f"gen_protos: {exc}", file=sys.stderr)
        return 2
    if args.check:
        if problems:
            print("generated code is out of date with protos/:", file=sys.stderr)
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
            print("run: python -m scripts.gen_protos", file=sys.stderr)
            return 1
        print(f"generated code is fresh ({len(find_protos())} .proto files)")
        return 0
    for problem in problems:
        verb = "deleted" if problem.kind == "orphan" else "wrote"
        print(f"{verb} {problem.path}")
    print(f"{len(problems)} file(s) changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
