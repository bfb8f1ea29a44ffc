#!/usr/bin/env python3
"""Regenerate the Python stubs (messages, gRPC stubs and their type stubs) from protos/.

The proto files live under protos/paysaga/..., so the generated modules land in the paysaga
package at the same path and their imports (``from paysaga.common.v1 import money_pb2``) work
inside our package layout.

    python3 scripts/dev.py stubs                        # the usual way
    .venv/bin/python scripts/generate_stubs.py --out DIR  # into another tree, e.g. to compare
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "protos"
SERVICE_DECLARATION = re.compile(r"^service\s", re.MULTILINE)
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted(PROTO_ROOT.rglob("*.proto"))


def generated_files(tree: Path) -> dict[str, bytes]:
    """The generated modules and their package markers under tree/paysaga, by relative path.

    Generated directories hold nothing else, so a package marker counts as generated when its
    directory holds a generated module (paysaga/__init__.py itself is ours, not protoc's).
    """
    modules = [path for path in (tree / "paysaga").rglob("*") if path.name.endswith(GENERATED_SUFFIXES)]
    markers = {
        directory / "__init__.py"
        for module in modules
        for directory in module.relative_to(tree).parents
        if len(directory.parts) > 1
    }
    files = [*modules, *(tree / marker for marker in markers)]
    return {str(path.relative_to(tree)): path.read_bytes() for path in sorted(files) if path.is_file()}


def _plugin(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extra (python3 scripts/dev.py setup)")
    return found


def generate_into(out: Path) -> None:
    """Run protoc for every proto file, writing modules and package markers under out."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = proto_files()
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out=quiet:{out}",
        f"--mypy_grpc_out=quiet:{out}",
        *(str(path.relative_to(PROTO_ROOT)) for path in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for proto in protos:
        module = out / proto.relative_to(PROTO_ROOT).with_suffix("")
        if not SERVICE_DECLARATION.search(proto.read_text()):
            # grpc_python_out writes an empty module for a proto without services: leave it out.
            for suffix in ("_pb2_grpc.py", "_pb2_grpc.pyi"):
                module.with_name(module.name + suffix).unlink(missing_ok=True)
        for directory in module.relative_to(out).parents:
            if len(directory.parts) > 1:
                (out / directory / "__init__.py").touch()


def write_stubs(repo: Path = REPO) -> list[str]:
    """Regenerate the committed stubs in place; returns the paths that changed."""
    with tempfile.TemporaryDirectory() as scratch:
        generate_into(Path(scratch))
        fresh = generated_files(Path(scratch))
    current = generated_files(repo)
    for stale in current.keys() - fresh.keys():
        (repo / stale).unlink()
    changed = sorted(current.keys() - fresh.keys())
    for path, content in fresh.items():
        if current.get(path) != content:
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_bytes(content)
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="write a fresh tree here instead of updating the repository")
    args = parser.parse_args(argv)
    if args.out is not None:
        generate_into(args.out)
        return 0
    changed = write_stubs()
    print("stubs are up to date" if not changed else "regenerated: " + ", ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
