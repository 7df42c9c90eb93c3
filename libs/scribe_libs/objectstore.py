"""Object storage: one small async interface, two implementations (DESIGN.md "Object storage").

``S3Store`` talks to MinIO or any S3-protocol server through the ``minio`` client (what Kubernetes
deployments use); ``LocalStore`` keeps ``<root>/<bucket>/<key>`` on a local disk for the embedded
single-machine mode. Both behave the same to a caller, which one contract test suite checks:

* bucket names follow the S3 rules (3-63 characters of ``a-z 0-9 . -``) in both stores;
* keys are ``/``-separated paths with no empty, ``.`` or ``..`` part and no leading or trailing
  ``/``, at most 1024 bytes of UTF-8 (the S3 limit); anything else is ``InvalidArgument``
  (reason ``INVALID_OBJECT_KEY``), so no key can escape the local root;
* ``get_*``/``stat`` of a missing object (or bucket) raise ``ObjectNotFound``; ``put_*`` into a
  bucket never declared with ``ensure_bucket`` raise ``BucketNotFound``; ``delete``,
  ``delete_prefix``, ``list_keys`` and ``exists`` treat a missing bucket as an empty one;
* a server that cannot be reached (connection refused, 5xx after the client's retries) is
  ``Unavailable`` (reason ``OBJECT_STORE_UNAVAILABLE``, RetryInfo 1 s), so callers may retry.

Health: :func:`open_store` registers the store as a :class:`~scribe_libs.errors.Dependency` of
the service instance being built (``current_dependencies``), with a cheap probe (S3: a HEAD of
a bucket the service ensured, through a client without retries; local: the root is a
directory). A call that finds the server unreachable marks it unavailable at once; the probe
that the gRPC server runs every few seconds marks it available again (scribe_libs.server).

One difference is inherent to a file system: the local store cannot hold both ``a`` and ``a/b``
(a file cannot also be a directory); such a put raises ``InvalidArgument`` (reason
``INVALID_OBJECT_KEY``). The project's key layouts (``audio/<job_id>/original``,
``results/<job_id>/transcript.json``) never do this.

Every method is ``async``; the blocking work (file I/O, the minio client's HTTP calls) runs in a
worker thread through ``asyncio.to_thread`` so the event loop never blocks.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal, Protocol, TypeVar

import pydantic
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error, ServerError
from minio.lifecycleconfig import Expiration, LifecycleConfig, Rule
from pydantic import Field, SecretStr

from scribe_libs.errors import Dependency, InvalidArgument, NotFound, Unavailable, current_dependencies

__all__ = [
    "BucketNotFound",
    "LocalStore",
    "ObjectInfo",
    "ObjectNotFound",
    "ObjectStore",
    "S3Store",
    "StoreSettings",
    "open_store",
    "parse_uri",
]

T = TypeVar("T")

MAX_KEY_BYTES = 1024
"""Longest key in UTF-8 bytes; the S3 limit (AWS "Creating object key names")."""

TEMP_PREFIX = ".scribe-tmp-"
"""Name prefix of the local store's in-flight temporary files; keys may not use it."""

STALE_TEMP_SECONDS = 3600.0
"""Age (seconds) after which ``LocalStore.sweep_expired`` removes a temporary file left by a crash."""

SWEEP_SLICE_ENTRIES = 256
"""Directory entries ``LocalStore.sweep_expired`` handles per slice (about 1 ms of ``stat`` calls)."""

SWEEP_PAUSE_SECONDS = 0.01
"""Pause (seconds) between two slices of ``LocalStore.sweep_expired``."""

EXPIRY_RULE_ID = "scribe-expire-objects"
"""ID of the lifecycle rule ``S3Store.ensure_bucket`` owns; other rules on the bucket are kept."""

_COPY_CHUNK = 1024 * 1024
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")
_LIFECYCLE_DIR = ".lifecycle"  # under the local root; never a valid bucket name (leading ".")
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})
_BUCKET_TAKEN_CODES = frozenset({"BucketAlreadyOwnedByYou", "BucketAlreadyExists"})


class StoreSettings(pydantic.BaseModel):
    """Where objects live; nested in each service's settings (``..._STORE__KIND=s3`` etc.)."""

    kind: Literal["local", "s3"] = Field(
        default="local",
        description='"local": a directory on this machine (embedded mode); "s3": MinIO or any S3-protocol server.',
    )
    root: Path = Field(
        default=Path(".scribe/objects"),
        description="Local store only: directory that holds <root>/<bucket>/<key>; created when missing.",
    )
    endpoint: str = Field(
        default="localhost:9000",
        description='S3 only: "host:port" of the server, without a scheme (use `secure` for HTTPS).',
    )
    access_key: SecretStr = Field(default=SecretStr(""), description="S3 only: access key id.")
    secret_key: SecretStr = Field(default=SecretStr(""), description="S3 only: secret access key.")
    secure: bool = Field(default=False, description="S3 only: use HTTPS instead of plain HTTP.")
    region: str | None = Field(
        default=None,
        description="S3 only: region name; None asks the server per bucket (one extra request each).",
    )

    @pydantic.field_validator("endpoint")
    @classmethod
    def _endpoint_is_host_port(cls, value: str) -> str:
        if "://" in value or "/" in value or not value:
            raise ValueError(f'endpoint must be "host:port" without scheme or path, got {value!r}')
        return value


@dataclass(frozen=True)
class ObjectInfo:
    """What ``stat`` reports about one object.

    Attributes:
        bucket: Bucket name.
        key: Object key.
        size: Size in bytes.
        last_modified: Time of the last write, timezone-aware UTC (S3 servers report whole
            seconds; the local store reports the file's mtime).
    """

    bucket: str
    key: str
    size: int
    last_modified: datetime


class ObjectNotFound(NotFound):
    """The object (or its bucket) does not exist: NOT_FOUND, reason ``OBJECT_NOT_FOUND``."""

    def __init__(self, bucket: str, key: str):
        super().__init__(
            "OBJECT_NOT_FOUND", f"object {bucket}/{key} does not exist", resource_type="object",
            resource_name=f"{bucket}/{key}",
        )
        self.bucket = bucket
        self.key = key


class BucketNotFound(NotFound):
    """A write went to a bucket never created with ``ensure_bucket``: reason ``BUCKET_NOT_FOUND``."""

    def __init__(self, bucket: str):
        super().__init__(
            "BUCKET_NOT_FOUND", f"bucket {bucket} does not exist", resource_type="bucket", resource_name=bucket
        )
        self.bucket = bucket


class ObjectStore(Protocol):
    """The object storage every service uses; see the module docstring for the shared contract."""

    async def ensure_bucket(self, bucket: str, expiry_days: float | None = None) -> None:
        """Create ``bucket`` if missing (idempotent); with ``expiry_days``, expire objects that old.

        ``expiry_days=None`` leaves any expiry set earlier as it is.
        """
        ...

    async def put_file(
        self, bucket: str, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> int:
        """Upload the file at ``path``; returns the bytes written. ``OSError`` if it can't be read."""
        ...

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store ``data`` as the object (replacing any previous one)."""
        ...

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content. Raises ``ObjectNotFound``."""
        ...

    async def get_file(self, bucket: str, key: str, path: Path) -> None:
        """Download to ``path`` (parents created; replaced atomically). Raises ``ObjectNotFound``."""
        ...

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and modification time. Raises ``ObjectNotFound``."""
        ...

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists."""
        ...

    async def delete(self, bucket: str, key: str) -> None:
        """Remove the object; a missing object is not an error."""
        ...

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Remove every object whose key starts with ``prefix``; returns how many were removed."""
        ...

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in S3), sorted."""
        ...


# --- names ------------------------------------------------------------------------------------


def check_bucket(bucket: str) -> None:
    """Raise ``InvalidArgument`` (reason ``INVALID_BUCKET_NAME``) unless ``bucket`` follows the S3 rules.

    Rules (AWS "Bucket naming rules"): 3-63 characters of lowercase letters, digits, ``.`` and
    ``-``; starts and ends with a letter or digit; no ``..``; not an IPv4 address.
    """
    if not _BUCKET_RE.match(bucket) or ".." in bucket or _IPV4_RE.match(bucket):
        raise InvalidArgument("INVALID_BUCKET_NAME", f"invalid bucket name {bucket!r}", field="bucket")


def check_key(key: str) -> None:
    """Raise ``InvalidArgument`` (reason ``INVALID_OBJECT_KEY``) unless ``key`` is a safe relative path.

    A key is 1..1024 UTF-8 bytes, ``/``-separated, with no empty, ``.`` or ``..`` part, no NUL and
    no part starting with the local store's temporary-file prefix.
    """
    problem = None
    if not key:
        problem = "is empty"
    elif len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        problem = f"is longer than {MAX_KEY_BYTES} bytes"
    elif "\x00" in key:
        problem = "contains NUL"
    elif key.startswith("/") or key.endswith("/"):
        problem = "starts or ends with '/'"
    else:
        for part in key.split("/"):
            if part in ("", ".", ".."):
                problem = "has an empty, '.' or '..' path part"
                break
            if part.startswith(TEMP_PREFIX):
                problem = f"has a part starting with the reserved {TEMP_PREFIX!r}"
                break
    if problem:
        raise InvalidArgument("INVALID_OBJECT_KEY", f"object key {key!r} {problem}", field="key")


def _check_prefix(prefix: str) -> None:
    """A listing prefix: like a key, but may be empty and may end in ``/`` or a partial part."""
    if not prefix:
        return
    if prefix.startswith("/") or "\x00" in prefix or any(p in (".", "..") for p in prefix.split("/")[:-1]):
        raise InvalidArgument("INVALID_OBJECT_KEY", f"invalid key prefix {prefix!r}", field="prefix")


def parse_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key/with/slashes`` into ``("bucket", "key/with/slashes")``.

    The key is taken literally (no percent-decoding). Raises ``InvalidArgument`` (reason
    ``INVALID_SOURCE_URI``, field ``spec.source_uri``) for another scheme, a bad bucket name or
    an invalid or missing key.
    """
    scheme, sep, rest = uri.partition("://")
    bucket, slash, key = rest.partition("/")
    try:
        if scheme != "s3" or not sep or not slash:
            raise ValueError
        check_bucket(bucket)
        check_key(key)
    except (ValueError, InvalidArgument) as exc:
        raise InvalidArgument(
            "INVALID_SOURCE_URI",
            f"source URI must look like s3://<bucket>/<key>, got {uri!r}",
            field="spec.source_uri",
        ) from exc
    return bucket, key


def open_store(settings: StoreSettings) -> ObjectStore:
    """The store ``settings.kind`` names. Builds a client only; no I/O until the first call.

    The store becomes a dependency of the service instance being built in this context, so its
    health follows the store (see the module docstring).
    """
    store: S3Store | LocalStore = S3Store(settings) if settings.kind == "s3" else LocalStore(settings.root)
    store.dependency = current_dependencies().add(Dependency("object store", probe=store.probe))
    return store


# --- local directory --------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(target: Path, write: Callable[[IO[bytes]], int]) -> int:
    """Write through ``write(file)`` into a temp file beside ``target``, fsync, then ``os.replace``.

    A crash at any point leaves either the old object or the new one, never half of one (the
    temp file left behind is skipped by listings and removed by ``LocalStore.sweep_expired``).
    Returns what ``write`` returned.
    """
    for attempt in range(3):
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
            break
        except FileNotFoundError:  # a concurrent delete pruned the empty parent; make it again
            if attempt == 2:
                raise
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            written = write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)
    return written


class _ExistsFromStat:
    """``exists`` for a store that has ``stat``: an object exists when ``stat`` finds it."""

    async def stat(self, bucket: str, key: str) -> ObjectInfo:  # pragma: no cover - the store's own
        raise NotImplementedError

    async def exists(self, bucket: str, key: str) -> bool:
        """Whether the object exists (``stat`` did not raise ``ObjectNotFound``)."""
        try:
            await self.stat(bucket, key)
        except ObjectNotFound:
            return False
        return True


class LocalStore(_ExistsFromStat):
    """Objects as files under ``<root>/<bucket>/<key>`` (embedded single-machine mode).

    Writes are atomic (temp file in the same directory, fsync, ``os.replace``). A bucket's expiry
    is kept in ``<root>/.lifecycle/<bucket>.json`` so that any process sharing the root (e.g. the
    one that runs ``sweep_expired``) sees it. Content types are not stored.

    Args:
        root: Directory holding the buckets; created on first use.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dependency: Dependency | None = None

    async def probe(self) -> None:
        """Raise ``OSError`` unless the root is a directory (e.g. its volume went away)."""
        if not await asyncio.to_thread(self.root.is_dir):
            raise FileNotFoundError(f"object store root {self.root} is not a directory")

    # paths
    def _bucket_dir(self, bucket: str) -> Path:
        check_bucket(bucket)
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        check_key(key)
        return self._bucket_dir(bucket) / key

    def _expiry_path(self, bucket: str) -> Path:
        return self.root / _LIFECYCLE_DIR / f"{bucket}.json"

    def _writable_path(self, bucket: str, key: str) -> Path:
        path = self._path(bucket, key)
        if not (self.root / bucket).is_dir():
            raise BucketNotFound(bucket)
        return path

    @staticmethod
    def _key_conflict(bucket: str, key: str, exc: OSError) -> InvalidArgument:
        return InvalidArgument(
            "INVALID_OBJECT_KEY",
            f"object key {key!r} in bucket {bucket} clashes with an existing key that is a prefix of it "
            f"or has it as a prefix; the local store cannot hold both ({exc.strerror})",
            field="key",
        )

    # blocking bodies
    def _ensure_bucket(self, bucket: str, expiry_days: float | None) -> None:
        bucket_dir = self._bucket_dir(bucket)
        if expiry_days is not None:
            _check_expiry(expiry_days)
        bucket_dir.mkdir(parents=True, exist_ok=True)
        if expiry_days is not None:
            data = json.dumps({"expiry_days": expiry_days}).encode()
            _atomic_write(self._expiry_path(bucket), lambda fh: fh.write(data))

    def _put(self, bucket: str, key: str, write: Callable[[IO[bytes]], int]) -> int:
        target = self._writable_path(bucket, key)
        try:
            return _atomic_write(target, write)
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise self._key_conflict(bucket, key, exc) from exc

    def _put_file(self, bucket: str, key: str, path: Path) -> int:
        with open(path, "rb") as src:  # open first: a missing source leaves no trace
            return self._put(bucket, key, lambda fh: _copy(src, fh))

    def _open_object(self, bucket: str, key: str) -> IO[bytes]:
        path = self._path(bucket, key)
        try:
            return open(path, "rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ObjectNotFound(bucket, key) from exc

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        with self._open_object(bucket, key) as fh:
            return fh.read()

    def _get_file(self, bucket: str, key: str, path: Path) -> None:
        with self._open_object(bucket, key) as src:
            _atomic_write(Path(path), lambda fh: _copy(src, fh))

    def _stat(self, bucket: str, key: str) -> ObjectInfo:
        path = self._path(bucket, key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(bucket, key) from exc
        if not path.is_file():
            raise ObjectNotFound(bucket, key)
        return ObjectInfo(bucket, key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def _prune_empty_dirs(self, bucket_dir: Path, start: Path) -> None:
        """Remove empty directories from ``start`` up to (not including) the bucket directory."""
        current = start
        while current != bucket_dir and bucket_dir in current.parents:
            try:
                current.rmdir()
            except OSError:  # not empty, or already gone
                return
            current = current.parent

    def _delete(self, bucket: str, key: str) -> None:
        path = self._path(bucket, key)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return
        self._prune_empty_dirs(self.root / bucket, path.parent)

    def _walk(self, bucket: str, prefix: str) -> Iterator[tuple[str, Path]]:
        """``(key, path)`` of every file whose key starts with ``prefix``."""
        _check_prefix(prefix)
        bucket_dir = self._bucket_dir(bucket)
        base = bucket_dir / prefix.rpartition("/")[0] if "/" in prefix else bucket_dir
        if not base.is_dir():
            return
        for dirpath, _dirnames, filenames in os.walk(base):
            for name in filenames:
                if name.startswith(TEMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(bucket_dir).as_posix()
                if key.startswith(prefix):
                    yield key, path

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        return sorted(key for key, _ in self._walk(bucket, prefix))

    def _delete_prefix(self, bucket: str, prefix: str) -> int:
        count = 0
        for key in self._list_keys(bucket, prefix):
            path = self.root / bucket / key
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            count += 1
            self._prune_empty_dirs(self.root / bucket, path.parent)
        return count

    def expiry_days(self, bucket: str) -> float | None:
        """The expiry set by ``ensure_bucket`` for ``bucket``, in days, or None."""
        try:
            return float(json.loads(self._expiry_path(bucket).read_bytes())["expiry_days"])
        except FileNotFoundError:
            return None

    def _sweep_plan(self, now: datetime) -> Iterator[int]:
        """Generator behind ``sweep_expired``: walks every bucket, yields after each directory entry.

        Each ``next()`` handles one entry (a file or a directory) and yields the number of objects
        deleted by it (0 or 1), so the caller decides how much to do per slice.
        """
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC))")
        if not self.root.is_dir():
            return
        now_ts = now.timestamp()
        stale_temp = now_ts - STALE_TEMP_SECONDS
        for bucket in sorted(os.listdir(self.root)):
            bucket_dir = os.path.join(self.root, bucket)
            if not _BUCKET_RE.match(bucket) or not os.path.isdir(bucket_dir):  # skips .lifecycle
                continue
            days = self.expiry_days(bucket)
            cutoff = now_ts - days * 86400 if days is not None else None
            pending = [bucket_dir]
            while pending:
                directory = pending.pop()
                try:
                    with os.scandir(directory) as entries:
                        listed = list(entries)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in listed:
                    removed = 0
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                        else:
                            mtime = entry.stat(follow_symlinks=False).st_mtime
                            is_temp = entry.name.startswith(TEMP_PREFIX)
                            if (is_temp and mtime < stale_temp) or (
                                not is_temp and cutoff is not None and mtime < cutoff
                            ):
                                os.unlink(entry.path)
                                removed = 0 if is_temp else 1
                                self._prune_empty_dirs(Path(bucket_dir), Path(directory))
                    except FileNotFoundError:  # deleted meanwhile
                        pass
                    yield removed

    def _sweep_slice(self, plan: Iterator[int], entries: int) -> tuple[int, bool]:
        """Advance ``plan`` by up to ``entries`` entries; returns (objects deleted, walk finished)."""
        removed = 0
        for _ in range(entries):
            try:
                removed += next(plan)
            except StopIteration:
                return removed, True
        return removed, False

    # async API
    async def ensure_bucket(self, bucket: str, expiry_days: float | None = None) -> None:
        """Create ``<root>/<bucket>`` (idempotent) and record ``expiry_days`` when given.

        Raises:
            InvalidArgument: bad bucket name, or ``expiry_days`` < 1.
        """
        await asyncio.to_thread(self._ensure_bucket, bucket, expiry_days)

    async def put_file(
        self, bucket: str, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> int:
        """Copy the file at ``path`` in atomically; returns its size in bytes (content type not stored)."""
        return await asyncio.to_thread(self._put_file, bucket, key, Path(path))

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Write ``data`` atomically (content type not stored)."""
        await asyncio.to_thread(self._put, bucket, key, lambda fh: fh.write(data))

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content. Raises ``ObjectNotFound``."""
        return await asyncio.to_thread(self._get_bytes, bucket, key)

    async def get_file(self, bucket: str, key: str, path: Path) -> None:
        """Copy the object to ``path`` atomically. Raises ``ObjectNotFound``."""
        await asyncio.to_thread(self._get_file, bucket, key, Path(path))

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and mtime (UTC). Raises ``ObjectNotFound``."""
        return await asyncio.to_thread(self._stat, bucket, key)

    async def delete(self, bucket: str, key: str) -> None:
        """Remove the object and any directories it leaves empty; missing is fine."""
        await asyncio.to_thread(self._delete, bucket, key)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Remove every object under ``prefix``; returns how many."""
        return await asyncio.to_thread(self._delete_prefix, bucket, prefix)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted (temp files of in-flight writes are not keys)."""
        return await asyncio.to_thread(self._list_keys, bucket, prefix)

    async def sweep_expired(
        self, now: datetime, *, slice_entries: int = SWEEP_SLICE_ENTRIES, pause_seconds: float = SWEEP_PAUSE_SECONDS
    ) -> int:
        """Delete objects older than their bucket's expiry; returns how many were deleted.

        The local stand-in for an S3 lifecycle rule: an object expires when its mtime is more than
        ``expiry_days * 86400`` seconds before ``now`` (timezone-aware). Buckets without an expiry
        are left alone, except that temporary files older than ``STALE_TEMP_SECONDS`` (left by a
        crashed write) are removed everywhere; those are not counted.

        The walk costs one ``stat`` per file, so it runs in slices of ``slice_entries`` directory
        entries in a worker thread with ``pause_seconds`` between them: a sweep of 100,000 objects
        never holds the interpreter for long at a stretch, so RPCs served by the same process
        (the results service runs the sweeper) keep their latency. Unsliced, a sweep of the
        audio of 26,000 queued jobs took 1.8 s at a stretch in a worker thread, and 100,000 about 7 s
        of every minute (issue 11's bench_scale setting, 2 cores).

        Raises:
            ValueError: ``now`` is naive; ``slice_entries`` < 1 or ``pause_seconds`` < 0.
        """
        if slice_entries < 1 or pause_seconds < 0:
            raise ValueError(f"slice_entries must be >= 1 and pause_seconds >= 0, got {slice_entries}, {pause_seconds}")
        plan = self._sweep_plan(now)
        count = 0
        while True:
            removed, finished = await asyncio.to_thread(self._sweep_slice, plan, slice_entries)
            count += removed
            if finished:
                return count
            await asyncio.sleep(pause_seconds)

def _copy(src: IO[bytes], dst: IO[bytes]) -> int:
    total = 0
    while chunk := src.read(_COPY_CHUNK):
        dst.write(chunk)
        total += len(chunk)
    return total


def _check_expiry(expiry_days: float) -> None:
    if not expiry_days > 0:
        raise InvalidArgument(
            "INVALID_EXPIRY", f"expiry_days must be positive, got {expiry_days}", field="expiry_days"
        )


# --- S3 / MinIO -------------------------------------------------------------------------------


def _minio(settings: StoreSettings, http_client: urllib3.PoolManager | None) -> Minio:
    return Minio(
        settings.endpoint,
        access_key=settings.access_key.get_secret_value(),
        secret_key=settings.secret_key.get_secret_value(),
        secure=settings.secure,
        region=settings.region,
        http_client=http_client,
    )


class S3Store(_ExistsFromStat):
    """Objects in MinIO or any S3-protocol server, through the ``minio`` client (thread-safe).

    Args:
        settings: Endpoint, credentials, TLS and region.
        http_client: urllib3 pool to use instead of minio's default (which retries failed
            connections 5 times with backoff); tests pass one without retries.
    """

    def __init__(self, settings: StoreSettings, http_client: urllib3.PoolManager | None = None):
        self.endpoint = settings.endpoint
        self.client = _minio(settings, http_client)
        # Probes go through their own client: no retries and short timeouts, so a probe answers
        # within seconds either way (the main client retries a refused connection with backoff).
        self._probe_client = _minio(
            settings, urllib3.PoolManager(timeout=urllib3.Timeout(connect=2.0, read=3.0), retries=False)
        )
        self._probe_bucket: str | None = None
        self.dependency: Dependency | None = None

    async def probe(self) -> None:
        """One cheap request (HEAD of the first bucket ``ensure_bucket`` saw, else list buckets).

        Any answer, even "no such bucket", means the server is reachable. Raises ``Unavailable``
        when it is not.
        """
        def head() -> object:
            if self._probe_bucket is not None:
                return self._probe_client.bucket_exists(self._probe_bucket)
            return self._probe_client.list_buckets()

        try:
            await asyncio.to_thread(head)
        except S3Error:
            return  # an S3 error response (denied, missing): the server answered
        except (ServerError, urllib3.exceptions.HTTPError) as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> Unavailable:
        return Unavailable(
            "OBJECT_STORE_UNAVAILABLE",
            f"object store at {self.endpoint} is unavailable: {exc}",
            metadata={"endpoint": self.endpoint},
            retry_after=1.0,
        )

    async def _run(self, func: Callable[..., T], *args: object, bucket: str, key: str | None = None) -> T:
        """Run a blocking client call in a thread and translate its errors into domain errors."""
        try:
            return await asyncio.to_thread(func, *args)
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                raise (ObjectNotFound(bucket, key) if key is not None else BucketNotFound(bucket)) from exc
            raise
        except (ServerError, urllib3.exceptions.HTTPError) as exc:
            error = self._unavailable(exc)
            if self.dependency is not None:
                self.dependency.mark(False, error.message)  # the probe marks it available again
            raise error from exc

    def _ensure_bucket(self, bucket: str, expiry_days: float | None) -> None:
        if self._probe_bucket is None:
            self._probe_bucket = bucket
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:
                if exc.code not in _BUCKET_TAKEN_CODES:  # another replica made it first
                    raise
        if expiry_days is None:
            return
        current = self.client.get_bucket_lifecycle(bucket)
        rules = [r for r in (current.rules if current else []) if r.rule_id != EXPIRY_RULE_ID]
        # S3 lifecycle rules count whole days: a fractional retention rounds up, never down.
        expire = Expiration(days=max(1, math.ceil(expiry_days)))
        rules.append(Rule(ENABLED, rule_filter=Filter(prefix=""), rule_id=EXPIRY_RULE_ID, expiration=expire))
        self.client.set_bucket_lifecycle(bucket, LifecycleConfig(rules))

    def _get_bytes(self, bucket: str, key: str) -> bytes:
        response = self.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def _get_file(self, bucket: str, key: str, path: Path) -> None:
        response = self.client.get_object(bucket, key)
        try:
            def copy(fh: IO[bytes]) -> int:
                total = 0
                for chunk in response.stream(_COPY_CHUNK):
                    fh.write(chunk)
                    total += len(chunk)
                return total

            _atomic_write(path, copy)
        finally:
            response.close()
            response.release_conn()

    def _put_file(self, bucket: str, key: str, path: Path, content_type: str) -> int:
        size = os.stat(path).st_size  # OSError for a missing source, before any request
        self.client.fput_object(bucket, key, str(path), content_type=content_type)
        return size

    def _put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)

    def _stat(self, bucket: str, key: str) -> ObjectInfo:
        st = self.client.stat_object(bucket, key)
        modified = st.last_modified or datetime.now(UTC)
        return ObjectInfo(bucket, key, int(st.size or 0), modified.astimezone(UTC))

    def _list_keys(self, bucket: str, prefix: str) -> list[str]:
        try:
            return sorted(
                o.object_name for o in self.client.list_objects(bucket, prefix=prefix, recursive=True)
                if o.object_name is not None
            )
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise

    def _delete(self, bucket: str, key: str) -> None:
        try:
            self.client.remove_object(bucket, key)
        except S3Error as exc:
            if exc.code not in _NOT_FOUND_CODES:
                raise

    def _delete_prefix(self, bucket: str, prefix: str) -> int:
        keys = self._list_keys(bucket, prefix)
        if not keys:
            return 0
        errors = list(self.client.remove_objects(bucket, (DeleteObject(k) for k in keys)))
        failed = [e for e in errors if e.code not in _NOT_FOUND_CODES]
        if failed:
            first = failed[0]
            raise MinioException(f"could not delete {len(failed)} objects under {bucket}/{prefix}: "
                                 f"{first.name}: {first.code} {first.message}")
        return len(keys) - len(errors)

    async def ensure_bucket(self, bucket: str, expiry_days: float | None = None) -> None:
        """Create the bucket if missing; with ``expiry_days``, set an expiration lifecycle rule.

        The rule (ID ``EXPIRY_RULE_ID``, whole bucket) replaces an earlier rule of that ID; other
        rules are kept. ``expiry_days=None`` leaves the lifecycle configuration untouched.

        Raises:
            InvalidArgument: bad bucket name, or ``expiry_days`` < 1.
            Unavailable: the server cannot be reached.
        """
        check_bucket(bucket)
        if expiry_days is not None:
            _check_expiry(expiry_days)
        await self._run(self._ensure_bucket, bucket, expiry_days, bucket=bucket)

    async def put_file(
        self, bucket: str, key: str, path: Path, content_type: str = "application/octet-stream"
    ) -> int:
        """Upload the file at ``path`` (multipart when large); returns its size in bytes."""
        check_bucket(bucket)
        check_key(key)
        return await self._run(self._put_file, bucket, key, Path(path), content_type, bucket=bucket)

    async def put_bytes(
        self, bucket: str, key: str, data: bytes, content_type: str = "application/octet-stream"
    ) -> None:
        """Store ``data`` as the object."""
        check_bucket(bucket)
        check_key(key)
        await self._run(self._put_bytes, bucket, key, data, content_type, bucket=bucket)

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        """The object's content. Raises ``ObjectNotFound``."""
        check_bucket(bucket)
        check_key(key)
        return await self._run(self._get_bytes, bucket, key, bucket=bucket, key=key)

    async def get_file(self, bucket: str, key: str, path: Path) -> None:
        """Stream the object to ``path`` (temp file + ``os.replace``). Raises ``ObjectNotFound``."""
        check_bucket(bucket)
        check_key(key)
        await self._run(self._get_file, bucket, key, Path(path), bucket=bucket, key=key)

    async def stat(self, bucket: str, key: str) -> ObjectInfo:
        """Size and last-modified time (UTC, whole seconds). Raises ``ObjectNotFound``."""
        check_bucket(bucket)
        check_key(key)
        return await self._run(self._stat, bucket, key, bucket=bucket, key=key)

    async def delete(self, bucket: str, key: str) -> None:
        """Remove the object; missing object or bucket is fine."""
        check_bucket(bucket)
        check_key(key)
        await self._run(self._delete, bucket, key, bucket=bucket)

    async def delete_prefix(self, bucket: str, prefix: str) -> int:
        """Remove every object under ``prefix`` (one multi-object delete per 1000 keys); returns how many."""
        check_bucket(bucket)
        _check_prefix(prefix)
        return await self._run(self._delete_prefix, bucket, prefix, bucket=bucket)

    async def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix``, sorted; a missing bucket lists as empty."""
        check_bucket(bucket)
        _check_prefix(prefix)
        return await self._run(self._list_keys, bucket, prefix, bucket=bucket)

