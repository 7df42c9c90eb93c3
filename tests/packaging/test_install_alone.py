"""Each service installs alone into a clean virtual environment, as its image does, and imports.

``pip install ./libs ./services/<name>`` (what services/<name>/Dockerfile runs) into a fresh venv,
then every module of the service's package is imported there. A module that imports a package
its distribution does not declare (numpy in the gateway, faster_whisper through scribe_libs) fails
here. Results and postprocess must not carry the speech-recognition stack at all.

Slow (one venv per package, from pip's cache); the packages are installed in parallel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: distribution path -> (import package, packages that must NOT be installed alongside)
PACKAGES = {
    "services/ingest": ("scribe_ingest", ["ctranslate2_never"]),
    "services/results": ("scribe_results", ["numpy", "av", "faster_whisper", "ctranslate2"]),
    "services/postprocess": ("scribe_postprocess", ["numpy", "av", "faster_whisper", "ctranslate2"]),
    "services/stream-gateway": ("scribe_stream_gateway", ["kubernetes"]),
    "services/http-gateway": ("scribe_http_gateway", ["numpy", "av", "faster_whisper", "ctranslate2"]),
    "services/transcriber": ("scribe_transcriber", []),
    "cli": ("scribe_cli", ["scribe_transcriber"]),
}
#: Other local distributions a package depends on (installed beside it, as make install does),
#: with what their build needs: the client library generates its stubs from protos/ at build time.
LOCAL_DEPENDENCIES = {"cli": (["clients/python"], ["protos"])}

IMPORT_ALL = """
import importlib, importlib.util, pkgutil, sys
pkg = importlib.import_module(sys.argv[1])
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
for name in names:
    importlib.import_module(name)
absent = [n for n in sys.argv[2:] if importlib.util.find_spec(n) is not None]
assert not absent, f"installed although not needed: {absent}"
print(len(names) + 1, "modules")
"""


def _install_and_import(tmp: Path, dist: str) -> tuple[str, int, str]:
    package, absent = PACKAGES[dist]
    venv = tmp / dist.replace("/", "-")
    # Copies: setuptools builds in the source tree (build/, *.egg-info), and parallel builds of one
    # tree collide ("File exists: build/bdist.../scribe_libs-0.1.0.dist-info", seen in CI).
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "tests")
    src = venv.with_name(venv.name + "-src")
    shutil.copytree(ROOT / "libs", src / "libs", ignore=ignore)
    shutil.copytree(ROOT / dist, src / dist, ignore=ignore)
    local, build_inputs = LOCAL_DEPENDENCIES.get(dist, ([], []))
    for path in (*local, *build_inputs):
        shutil.copytree(ROOT / path, src / path, ignore=shutil.ignore_patterns(
            "build", "*.egg-info", "__pycache__", "tests", "_proto"))
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         str(src / "libs"), *(str(src / path) for path in local), str(src / dist)],
        [str(venv / "bin" / "python"), "-c", IMPORT_ALL, package, *absent],
    ]
    out = ""
    for cmd in steps:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp)
        out += proc.stdout + proc.stderr
        if proc.returncode != 0:
            return dist, proc.returncode, out
    return dist, 0, out


@pytest.mark.timeout(1800)
def test_each_package_installs_alone_and_imports(tmp_path):
    if not (ROOT / "libs" / "scribe" / "v1").exists():
        pytest.fail("generated stubs missing: run tools/gen_protos.py (make install does)")
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(lambda d: _install_and_import(tmp_path, d), PACKAGES))
    failed = [f"{dist} (exit {rc}):\n{out[-3000:]}" for dist, rc, out in results if rc != 0]
    assert not failed, "\n\n".join(failed)
