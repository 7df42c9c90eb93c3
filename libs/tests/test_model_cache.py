"""The model cache where a container puts it: HOME=/nonexistent, read-only root filesystem.

Before: ``cache_dir`` resolved to /nonexistent/.cache/scribe/models, so joining ``base`` from its
package-index parts, bucket copies and hub downloads all failed in the chart's pods.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import asyncio, json, sys
from scribe_libs.models import ModelRegistry, ModelSettings
settings = ModelSettings(allow_download=False)
path = asyncio.run(ModelRegistry(settings).resolve("base"))
print(json.dumps({"cache_dir": str(settings.cache_dir), "path": str(path)}))
"""


def test_unwritable_home_falls_back_to_the_temp_directory(tmp_path):
    # HOME below a regular file cannot be created even by root (CI runs as root; a pod runs as
    # uid 10001 with HOME=/nonexistent on a read-only root filesystem).
    (tmp_path / "file").write_text("")
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME", "HOME")}
    env.update(HOME=str(tmp_path / "file" / "nonexistent"), TMPDIR=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cache_dir"] == str(tmp_path / "scribe-models")
    assert out["path"].startswith(str(tmp_path)), out  # base was joined into the writable cache
    assert (tmp_path / "scribe-models" / "base" / "model.bin").stat().st_size > 100_000_000


def test_explicit_cache_dir_and_source_bucket_are_settings(tmp_path, monkeypatch):
    from scribe_libs.models import MODELS_BUCKET, ModelSettings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert ModelSettings().cache_dir == tmp_path / "scribe" / "models"
    assert ModelSettings().source_bucket == MODELS_BUCKET
    assert ModelSettings(cache_dir=tmp_path / "c", source_bucket="models-eu").source_bucket == "models-eu"
