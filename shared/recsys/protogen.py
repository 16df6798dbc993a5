"""Generate the Python gRPC code from every ``.proto`` under ``protos/``.

``python -m recsys.protogen OUT`` compiles each ``protos/<pkg>/.../<name>.proto`` with
``grpc_tools.protoc`` (``-I protos``) into ``OUT/<pkg>/.../<name>_pb2.py``,
``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py``, and makes sure every folder on the way
is a package (``__init__.py``). With ``OUT=shared``, ``protos/recsys/v1/ranking.proto``
lands in ``shared/recsys/v1/`` and imports as ``recsys.v1.ranking_pb2``; the generated
``_pb2_grpc`` module's absolute import ``from recsys.v1 import ranking_pb2`` then works
as it is, with no path tricks. Generated files without a ``.proto`` any more are removed.

``python -m recsys.protogen --check OUT`` generates into a scratch folder instead and
exits with status 1, listing every file that differs from, is missing in, or is extra in
``OUT`` (the committed code), so CI catches a ``.proto`` edited without regenerating.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

# Suffixes of the files protoc writes for one ``<name>.proto``.
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
INIT_DOCSTRING = '"""Generated gRPC code: see protos/ and recsys.protogen."""\n'


class ProtocError(RuntimeError):
    """protoc rejected the input."""


@dataclass
class Diff:
    """How the committed output differs from freshly generated code (paths relative)."""

    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra)

    def lines(self) -> list[str]:
        return (
            [f"differs: {p}" for p in self.changed]
            + [f"missing: {p}" for p in self.missing]
            + [f"extra:   {p}" for p in self.extra]
        )


def find_protos(proto_root: Path) -> list[Path]:
    """Every ``.proto`` under ``proto_root``, relative to it, in a stable order."""
    return sorted(p.relative_to(proto_root) for p in proto_root.rglob("*.proto"))


def _is_generated(path: Path) -> bool:
    return path.name.endswith(GENERATED_SUFFIXES)


def _package_dirs(protos: Sequence[Path]) -> list[Path]:
    """Relative folders that must be packages: each proto's folder and its parents."""
    dirs: set[Path] = set()
    for proto in protos:
        for parent in proto.parents:
            if parent != Path("."):
                dirs.add(parent)
    return sorted(dirs)


def _top_dirs(protos: Sequence[Path]) -> list[Path]:
    """The top-level folders the generated code lives in (``recsys`` for recsys/v1)."""
    return sorted({Path(proto.parts[0]) for proto in protos if len(proto.parts) > 1})


def generate(proto_root: Path, out: Path) -> list[Path]:
    """Compile every proto under ``proto_root`` into ``out``; the written files, relative."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # heavy: imported lazily

    protos = find_protos(proto_root)
    if not protos:
        raise ProtocError(f"no .proto files under {proto_root}")
    out.mkdir(parents=True, exist_ok=True)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--pyi_out={out}",
        # protoc maps each file to its -I root, so the generated names are relative to it
        *(str(proto_root / p) for p in protos),
    ]
    code = protoc.main(args)
    if code != 0:
        raise ProtocError(f"protoc failed with status {code} (its errors are above)")
    for package in _package_dirs(protos):
        init = out / package / "__init__.py"
        if not init.exists():
            init.write_text(INIT_DOCSTRING)
    written = [
        proto.with_name(proto.stem + suffix) for proto in protos for suffix in GENERATED_SUFFIXES
    ]
    written += [package / "__init__.py" for package in _package_dirs(protos)]
    return sorted(written)


def _existing_generated(out: Path, protos: Sequence[Path]) -> set[Path]:
    """Generated-looking files already in ``out`` under the folders protos map to."""
    found: set[Path] = set()
    for top in _top_dirs(protos):
        base = out / top
        if base.is_dir():
            found.update(p.relative_to(out) for p in base.rglob("*") if _is_generated(p))
    return found


def compare(fresh: Path, committed: Path, expected: Sequence[Path], protos: Sequence[Path]) -> Diff:
    """Compare ``committed`` with the ``expected`` files generated in ``fresh``.

    ``__init__.py`` files only have to exist (their content is the project's own).
    """
    diff = Diff()
    for rel in expected:
        target = committed / rel
        if not target.is_file():
            diff.missing.append(rel.as_posix())
        elif rel.name != "__init__.py" and target.read_bytes() != (fresh / rel).read_bytes():
            diff.changed.append(rel.as_posix())
    extra = _existing_generated(committed, protos) - set(expected)
    diff.extra = sorted(p.as_posix() for p in extra)
    return diff


def sync(proto_root: Path, out: Path) -> Diff:
    """Regenerate ``out``: write changed and missing files, remove stale generated ones."""
    protos = find_protos(proto_root)
    with tempfile.TemporaryDirectory(prefix="protogen-") as scratch:
        fresh = Path(scratch)
        expected = generate(proto_root, fresh)
        diff = compare(fresh, out, expected, protos)
        for rel in diff.changed + diff.missing:
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes((fresh / rel).read_bytes())
        for rel in diff.extra:
            (out / rel).unlink()
    return diff


def check(proto_root: Path, out: Path) -> Diff:
    """How ``out`` differs from what the protos generate; empty when up to date."""
    protos = find_protos(proto_root)
    with tempfile.TemporaryDirectory(prefix="protogen-") as scratch:
        fresh = Path(scratch)
        expected = generate(proto_root, fresh)
        return compare(fresh, out, expected, protos)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.protogen", description=__doc__.splitlines()[0] if __doc__ else ""
    )
    parser.add_argument("out", type=Path, help="output root, e.g. 'shared'")
    parser.add_argument(
        "--protos", type=Path, default=Path("protos"), help="proto root (default: protos)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 if the committed code differs from the protos",
    )
    args = parser.parse_args(argv)
    proto_root: Path = args.protos
    out: Path = args.out
    if not proto_root.is_dir():
        parser.error(f"proto root {proto_root} is not a folder")
    try:
        if args.check:
            diff = check(proto_root, out)
            if diff:
                print(
                    f"generated gRPC code in {out} is out of date with {proto_root}; "
                    "run `make proto`:",
                    file=sys.stderr,
                )
                for line in diff.lines():
                    print(f"  {line}", file=sys.stderr)
                return 1
            print(f"generated gRPC code in {out} is up to date")
            return 0
        diff = sync(proto_root, out)
    except ProtocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for rel in diff.changed:
        print(f"  updated: {rel}")
    for rel in diff.missing:
        print(f"  written: {rel}")
    for rel in diff.extra:
        print(f"  removed: {rel}")
    print(f"generated gRPC code in {out} from {proto_root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
