"""Build step of scribe-client: generate the gRPC stubs from the repository's protos.

protos/scribe/v1/*.proto is the one copy of the contract. ``build_py`` runs grpc_tools.protoc
(--python_out --grpc_python_out --pyi_out) over it into ``scribe_client/_proto/scribe/v1/`` of the
build directory (the source tree for an editable install, git-ignored there), and rewrites the
generated ``from scribe.v1 import ...`` lines to ``from scribe_client._proto.scribe.v1 import ...``
so the bundled copy never collides with scribe-libs' ``scribe.v1`` on disk. ``sdist`` puts the
protos into the archive (``protos/``), so a wheel builds from the sdist too.

Where the protos are found, first match wins: ``$SCRIBE_PROTO_ROOT``, ``../../protos`` (the
repository), ``./protos`` (an sdist).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py as _build_py
from setuptools.command.sdist import sdist as _sdist

HERE = Path(__file__).resolve().parent
PACKAGE = "scribe_client"
GENERATED = ("_proto", "scribe", "v1")  # scribe_client/_proto/scribe/v1
_IMPORT = re.compile(r"^(from|import) scribe\.v1\b", re.MULTILINE)


def proto_root() -> Path:
    """The directory holding ``scribe/v1/*.proto``.

    Raises:
        FileNotFoundError: none of the candidate directories holds them.
    """
    candidates = [Path(os.environ["SCRIBE_PROTO_ROOT"])] if os.environ.get("SCRIBE_PROTO_ROOT") else []
    candidates += [HERE.parent.parent / "protos", HERE / "protos"]
    for root in candidates:
        if list((root / "scribe" / "v1").glob("*.proto")):
            return root
    raise FileNotFoundError(f"no scribe/v1/*.proto under any of {[str(c) for c in candidates]}")


def generate(package_dir: Path) -> list[Path]:
    """Generate the stubs under ``package_dir`` (the ``scribe_client`` directory); returns the files.

    Raises:
        RuntimeError: protoc failed.
    """
    import grpc_tools
    from grpc_tools import protoc

    root = proto_root()
    out = package_dir.joinpath(*GENERATED[:1])
    if out.exists():
        shutil.rmtree(out)
    target = package_dir.joinpath(*GENERATED)
    target.mkdir(parents=True)
    protos = sorted(str(p.relative_to(root)) for p in (root / "scribe" / "v1").glob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    code = protoc.main([
        "grpc_tools.protoc", f"-I{root}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}", f"--pyi_out={out}", *protos,
    ])
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code} on {root}")
    prefix = ".".join((PACKAGE, *GENERATED))
    files = []
    for path in sorted(target.iterdir()):
        if path.suffix in (".py", ".pyi"):
            path.write_text(_IMPORT.sub(lambda m: f"{m.group(1)} {prefix}", path.read_text()))
            files.append(path)
    for i in range(1, len(GENERATED) + 1):
        init = package_dir.joinpath(*GENERATED[:i], "__init__.py")
        init.write_text('"""Generated at build time from protos/scribe/v1 (setup.py); do not edit."""\n')
        files.append(init)
    return files


class build_py(_build_py):  # noqa: N801 - setuptools command name
    """build_py that also generates the stubs."""

    def run(self) -> None:
        """Copy the package, then generate the stubs beside it."""
        super().run()
        base = HERE if self.editable_mode else Path(self.build_lib)
        self._generated = generate(base / PACKAGE)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        """The copied files plus the generated ones."""
        return [*super().get_outputs(include_bytecode), *(str(p) for p in getattr(self, "_generated", []))]


class sdist(_sdist):  # noqa: N801 - setuptools command name
    """sdist that carries the protos, so the wheel can be built from it."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        """Add ``protos/scribe/v1/*.proto`` to the release tree."""
        super().make_release_tree(base_dir, files)
        root = proto_root()
        dest = Path(base_dir) / "protos" / "scribe" / "v1"
        dest.mkdir(parents=True, exist_ok=True)
        for proto in (root / "scribe" / "v1").glob("*.proto"):
            shutil.copy2(proto, dest / proto.name)


setup(cmdclass={"build_py": build_py, "sdist": sdist})
