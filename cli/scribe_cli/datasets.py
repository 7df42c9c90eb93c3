"""Benchmark datasets for ``scribe bench``: audio with the transcript each file should give.

:func:`load` takes one argument and recognises four kinds:

- a folder: every audio file below it (``.wav .flac .mp3 .m4a .ogg .opus .webm .mp4 .aac``) with
  a transcript beside it of the same stem (``x.wav`` + ``x.txt``, UTF-8); audio without one is
  skipped and named in :attr:`Dataset.skipped`;
- a JSONL manifest, NeMo style: one ``{"audio_filepath": ..., "text": ...}`` object a line,
  relative paths relative to the manifest's folder;
- a Lhotse manifest pair: ``*recordings*.jsonl[.gz]`` and ``*supervisions*.jsonl[.gz]`` (give
  either file, or a folder holding one of each). Read as JSON lines, so the ``lhotse`` package is
  not needed. Each recording (``sources`` of type ``file``) is transcribed whole; its reference is
  its supervisions' texts in start order. Cut manifests are not read (``lhotse`` can write the
  recordings and supervisions of a CutSet: ``cuts.decompose()``);
- ``s3://bucket/prefix``: audio objects under the prefix with a ``.txt`` object of the same stem,
  listed through scribe_libs.objectstore with the store settings of ``SCRIBE_STORE__*`` (kind,
  endpoint, access_key, secret_key, secure, root), else those of the running embedded stack. The
  jobs name the object (``source_uri``): ingest reads it from the same store, nothing is
  downloaded here.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".webm", ".mp4", ".aac"})


@dataclass(frozen=True)
class Utterance:
    """One file to transcribe and its reference text.

    Attributes:
        name: how reports name it (a path relative to the dataset, or the object key).
        reference: the expected transcript.
        path: the local audio file, or None for an object-store item.
        source_uri: ``s3://bucket/key`` of the audio, or "" for a local file.
    """

    name: str
    reference: str
    path: Path | None = None
    source_uri: str = ""


@dataclass
class Dataset:
    """The utterances of a dataset, in a stable order, and the audio that had no transcript."""

    kind: str
    utterances: list[Utterance]
    skipped: list[str] = field(default_factory=list)


class DatasetError(ValueError):
    """The argument is not a dataset this module reads; the message says what was expected."""


def _json_lines(path: Path) -> list[dict]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = []
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        return rows


def _is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz", ".json"))


def load_folder(folder: Path) -> Dataset:
    """Audio files below ``folder`` with a ``.txt`` transcript beside each."""
    utterances, skipped = [], []
    for audio in sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()):
        text_file = audio.with_suffix(".txt")
        name = str(audio.relative_to(folder))
        if text_file.is_file():
            utterances.append(Utterance(name, text_file.read_text(encoding="utf-8").strip(), path=audio))
        else:
            skipped.append(name)
    return Dataset("folder", utterances, skipped)


def load_nemo(manifest: Path, rows: list[dict] | None = None) -> Dataset:
    """A NeMo-style manifest: ``audio_filepath`` (relative to the manifest) and ``text`` per line."""
    utterances = []
    for number, row in enumerate(rows if rows is not None else _json_lines(manifest), 1):
        if "audio_filepath" not in row or "text" not in row:
            raise DatasetError(f"{manifest}:{number}: needs audio_filepath and text")
        path = Path(row["audio_filepath"]).expanduser()
        path = path if path.is_absolute() else manifest.parent / path
        utterances.append(Utterance(row["audio_filepath"], str(row["text"]).strip(), path=path))
    return Dataset("jsonl", utterances)


def _lhotse_pair(path: Path) -> tuple[Path, Path]:
    """(recordings, supervisions) manifests from one of them or from the folder holding both."""
    if path.is_dir():
        found = {kind: sorted(p for p in path.iterdir() if kind in p.name and _is_jsonl(p))
                 for kind in ("recordings", "supervisions")}
        if all(len(v) == 1 for v in found.values()):
            return found["recordings"][0], found["supervisions"][0]
        raise DatasetError(f"{path}: expected one *recordings*.jsonl[.gz] and one *supervisions*.jsonl[.gz]")
    if "recordings" not in path.name and "supervisions" not in path.name:
        raise DatasetError(f"{path}: a Lhotse manifest is read as a pair named *recordings*.jsonl[.gz] and "
                           "*supervisions*.jsonl[.gz]; rename it so that its partner can be found")
    a, b = ("recordings", "supervisions") if "recordings" in path.name else ("supervisions", "recordings")
    other = path.with_name(path.name.replace(a, b))
    if not other.is_file():
        raise DatasetError(f"{path}: the Lhotse manifest pair needs {other.name} beside it")
    return (path, other) if a == "recordings" else (other, path)


def load_lhotse(path: Path) -> Dataset:
    """A Lhotse recordings + supervisions pair (JSON lines, optionally gzipped)."""
    recordings_file, supervisions_file = _lhotse_pair(path)
    texts: dict[str, list[tuple[float, str]]] = {}
    for sup in _json_lines(supervisions_file):
        if sup.get("text"):
            texts.setdefault(sup["recording_id"], []).append((float(sup.get("start", 0.0)), sup["text"]))
    utterances = []
    for rec in _json_lines(recordings_file):
        sources = rec.get("sources") or []
        if len(sources) != 1 or sources[0].get("type") != "file":
            raise DatasetError(f"{recordings_file}: recording {rec.get('id')!r}: only one source of type 'file' "
                               "is read (use lhotse to write the audio to files first)")
        source = Path(sources[0]["source"]).expanduser()
        if not source.is_absolute() and not source.exists():
            source = recordings_file.parent / source
        segments = sorted(texts.get(rec["id"], []))
        if segments:
            utterances.append(Utterance(rec["id"], " ".join(t.strip() for _, t in segments), path=source))
    return Dataset("lhotse", utterances)


def _store_settings():  # noqa: ANN202 - a StoreSettings
    """``SCRIBE_STORE__*`` when set, else the object store of the running embedded stack."""
    import os

    from scribe_cli import stack
    from scribe_libs.objectstore import StoreSettings

    prefix = "SCRIBE_STORE__"
    values = {k[len(prefix):].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    if not values:
        state = stack.load_state() or {}
        env = (state.get("services", {}).get("ingest") or {}).get("env", {})
        values = {k.split("_STORE__", 1)[1].lower(): v for k, v in env.items() if "_STORE__" in k}
    if not values:
        raise DatasetError("s3:// datasets need the platform's object store: set SCRIBE_STORE__KIND, "
                           "SCRIBE_STORE__ENDPOINT, SCRIBE_STORE__ACCESS_KEY, SCRIBE_STORE__SECRET_KEY "
                           "(or run `scribe up`, whose local store is used)")
    return StoreSettings(**values)


def load_s3(uri: str) -> Dataset:
    """Audio objects under ``s3://bucket/prefix`` with a ``.txt`` object of the same stem."""
    import asyncio

    from scribe_libs.objectstore import open_store

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    store = open_store(_store_settings())

    async def read() -> Dataset:
        keys = await store.list_keys(bucket, prefix)
        available = set(keys)
        utterances, skipped = [], []
        for key in sorted(keys):
            pure = PurePosixPath(key)
            if pure.suffix.lower() not in AUDIO_SUFFIXES:
                continue
            text_key = str(pure.with_suffix(".txt"))
            if text_key in available:
                text = (await store.get_bytes(bucket, text_key)).decode("utf-8").strip()
                utterances.append(Utterance(key, text, source_uri=f"s3://{bucket}/{key}"))
            else:
                skipped.append(key)
        return Dataset("s3", utterances, skipped)

    return asyncio.run(read())


def load(spec: str) -> Dataset:
    """The dataset ``spec`` names (a folder, a NeMo or Lhotse manifest, or ``s3://bucket/prefix``).

    Raises:
        DatasetError: nothing there, an unknown kind of file, or a malformed manifest.
    """
    if spec.startswith("s3://"):
        return load_s3(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any("recordings" in n and _is_jsonl(Path(n)) for n in names) and any(
                "supervisions" in n and _is_jsonl(Path(n)) for n in names):
            return load_lhotse(path)
        return load_folder(path)
    if not path.is_file():
        raise DatasetError(f"{spec}: no such folder, manifest or s3:// prefix")
    if not _is_jsonl(path):
        raise DatasetError(f"{spec}: expected a folder, a .jsonl manifest (NeMo or Lhotse) or s3://bucket/prefix")
    if "recordings" in path.name or "supervisions" in path.name:
        return load_lhotse(path)
    rows = _json_lines(path)
    if rows and ("recording_id" in rows[0] or "sources" in rows[0]):
        return load_lhotse(path)
    return load_nemo(path, rows)
