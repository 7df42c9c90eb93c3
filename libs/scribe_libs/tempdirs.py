"""A service's own temporary directory: cleared at start, one sub-directory per job or call.

A process killed with SIGKILL (OOM killer, node loss, ``kubectl delete --force``) runs no
``finally`` block, so ``tempfile`` files it had open stay behind forever (32 MB of spooled audio per
job). Every temporary file of a service therefore lives under one directory it owns::

    <base>/scribe-<service>/            the service's directory (base: the temp_dir setting)
        .lock                           held while the directory is cleared / an instance registers
        <instance>.lock                 flock'ed for the life of one running instance
        <instance>/                     that instance's items
            <prefix><random>/           one job's / call's files, removed when it ends

At start (:meth:`OwnedTempDir.open`) everything in ``<base>/scribe-<service>`` that no live
instance holds is removed: the directories of killed instances, stray files. Several instances
may share the directory (tests run many in one process; pods may share a node's ``/tmp``): an
instance's ``flock`` is released by the kernel when its process dies, however it dies, and the
registration happens under the directory's ``.lock``, so one instance never removes another's
live files.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

_ROOT_LOCK = ".lock"
_LOCK_SUFFIX = ".lock"


def default_base() -> str:
    """The platform's temporary directory (``$TMPDIR`` or ``/tmp``): the default of every temp_dir setting."""
    return tempfile.gettempdir()


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _held(lock: Path) -> bool:
    """True if a live process holds ``lock`` (a non-blocking flock fails)."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


class OwnedTempDir:
    """The temporary directory of one running service instance.

    Args:
        base: Parent directory (the service's ``temp_dir`` setting; ``/tmp`` by default).
        service: Service name; the owned directory is ``<base>/scribe-<service>``.

    :meth:`open` (at start-up) clears what dead instances left and registers this one;
    :meth:`item` gives a fresh sub-directory for one job or call, removed when the block ends;
    :meth:`close` (at shutdown) removes this instance's directory.
    """

    def __init__(self, base: str | os.PathLike[str], service: str):
        self.root = Path(base) / f"scribe-{service}"
        self.path: Path | None = None
        """This instance's directory (None until :meth:`open`)."""
        self._fd: int | None = None

    def open(self) -> OwnedTempDir:
        """Clear the owned directory of everything no live instance holds; register this instance.

        Returns:
            self.

        Raises:
            OSError: the directory cannot be created or locked.
        """
        if self.path is not None:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.root / _ROOT_LOCK):
            removed = self._clear()
            instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            fd = os.open(self.root / f"{instance}{_LOCK_SUFFIX}", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._fd = fd
            self.path = self.root / instance
            self.path.mkdir(mode=0o700)
        if removed:
            log.info("removed temporary files left by a stopped instance",
                     extra={"temp_dir": str(self.root), "entries": removed})
        return self

    def _clear(self) -> int:
        """Remove every entry of the root that no live instance holds; returns how many."""
        live = {
            entry.name.removesuffix(_LOCK_SUFFIX)
            for entry in self.root.iterdir()
            if entry.name != _ROOT_LOCK and entry.name.endswith(_LOCK_SUFFIX) and _held(entry)
        }
        removed = 0
        for entry in self.root.iterdir():
            if entry.name == _ROOT_LOCK or entry.name.removesuffix(_LOCK_SUFFIX) in live:
                continue
            _remove(entry)
            removed += 1
        return removed

    @contextlib.contextmanager
    def item(self, prefix: str) -> Iterator[Path]:
        """A new empty directory ``<instance>/<prefix><random>`` for one job or call; removed on exit.

        Raises:
            RuntimeError: :meth:`open` was not called.
        """
        if self.path is None:
            raise RuntimeError("OwnedTempDir.open() was not called")
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=self.path))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        """Remove this instance's directory and release its lock (idempotent)."""
        if self.path is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        lock = self.root / f"{self.path.name}{_LOCK_SUFFIX}"
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path = None
