"""Shared fixtures for the libs tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MOTO_START_TIMEOUT = 30.0  # seconds; moto imports its whole service catalogue on start (~2-5 s here)
_RUNNING_RE = re.compile(rb"Running on http://127\.0\.0\.1:(\d+)")


def _moto_server_executable() -> str:
    beside_python = Path(sys.executable).with_name("moto_server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("moto_server")
    if found is None:
        raise RuntimeError("moto_server not found; install moto[server] (a dev dependency)")
    return found


def _wait_for_port(proc: subprocess.Popen[bytes], log_path: Path, deadline: float) -> int:
    """The port moto reports in its start-up line ("Running on http://127.0.0.1:PORT")."""
    while time.monotonic() < deadline:
        match = _RUNNING_RE.search(log_path.read_bytes())
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


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a moto S3 server on loopback, started once per session.

    moto binds port 0 (the OS picks a free port) and prints the port it got; the fixture reads it
    from moto's log, then waits until the port answers HTTP.
    """
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [_moto_server_executable(), "-H", "127.0.0.1", "-p", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + MOTO_START_TIMEOUT
        port = _wait_for_port(proc, log_path, deadline)
        _wait_for_http(f"http://127.0.0.1:{port}/", deadline)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
