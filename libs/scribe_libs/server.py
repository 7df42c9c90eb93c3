"""gRPC server bootstrap every service uses: health, reflection, errors, telemetry, drain.

A service's ``create_server(settings, ...)`` calls :func:`start_grpc_server`, which binds the
configured port (0 picks a free one, so tests bind port 0) and returns a :class:`GrpcServer` with
the bound port. Health stays NOT_SERVING until the service calls ``set_serving(True)`` (model
loaded, NATS connected), and goes back to NOT_SERVING while any backend of the instance is
unavailable: the NATS connection (disconnected, reconnecting or closed; scribe_libs.bus marks it)
or the object store (probed every :data:`PROBE_INTERVAL_SECONDS`, and marked on a failed call).
The backends are the instance's :func:`scribe_libs.errors.current_dependencies`. :func:`run` runs
a service's ``main`` on uvloop, and :func:`wait_for_termination` turns SIGTERM/SIGINT into a graceful drain.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import uvloop
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from scribe.v1 import glossary_pb2, ingest_pb2, results_pb2, streaming_pb2
from scribe_libs.auth import AuthInterceptor, KeyRateLimiter, server_keyring
from scribe_libs.config import ServiceSettings
from scribe_libs.errors import Dependencies, ErrorInterceptor, current_dependencies
from scribe_libs.telemetry import server_interceptors

log = logging.getLogger(__name__)

#: Largest single gRPC message accepted, bytes. Audio arrives in chunks well below this.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Seconds between probes of the backends that have one (the object store): how long an outage
#: nobody's call ran into, or a recovery, takes to show in health.
PROBE_INTERVAL_SECONDS = 3.0
#: Seconds a probe may take before its backend counts as unavailable.
PROBE_TIMEOUT_SECONDS = 5.0
#: The services clients reach through the front door (Envoy routes ``/scribe.v1.<Service>/`` to
#: each one's upstream). Every server that implements one of them lists all of them in reflection,
#: so ``grpcurl list`` (and ``describe``) through Envoy shows the whole public API whichever
#: upstream answers reflection; calls still go to the upstream that implements them. Importing the
#: ``scribe.v1`` modules above puts their file descriptors into the default pool reflection reads.
PUBLIC_SERVICES: tuple[str, ...] = (
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name,
    results_pb2.DESCRIPTOR.services_by_name["Results"].full_name,
    glossary_pb2.DESCRIPTOR.services_by_name["Glossaries"].full_name,
    streaming_pb2.DESCRIPTOR.services_by_name["StreamGateway"].full_name,
)


def reflected_services(service_names: Sequence[str], reflect: Sequence[str] | None = None) -> list[str]:
    """Service names a server's reflection lists: its own, then ``reflect``, then health and reflection.

    ``reflect`` None (the default) means :data:`PUBLIC_SERVICES` for a server that implements at
    least one public service, and nothing more for an internal one (postprocess, transcriber),
    which lists only what it serves. Listing a name only describes it: a call to a method the
    server does not implement is UNIMPLEMENTED, as before.
    """
    if reflect is None:
        reflect = PUBLIC_SERVICES if set(service_names) & set(PUBLIC_SERVICES) else ()
    names = [*service_names, *reflect, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME]
    return list(dict.fromkeys(names))  # order kept, duplicates dropped


@dataclass
class GrpcServer:
    """A started gRPC server, its bound port and its health servicer.

    Health is SERVING when the service asked for it (:meth:`set_serving`) and every dependency
    of ``dependencies`` is available; it follows both until :meth:`stop`.
    """

    server: grpc.aio.Server
    port: int
    health: health_async.HealthServicer
    service_names: Sequence[str]
    on_stop: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    dependencies: Dependencies = field(default_factory=Dependencies)
    _wanted: bool = False
    _reported: int | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _prober: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.dependencies.subscribe(self._dependencies_changed)
        self._prober = asyncio.get_running_loop().create_task(self._probe_loop(), name="health-probes")

    async def set_serving(self, serving: bool) -> None:
        """Ask for SERVING (or NOT_SERVING) for the server as a whole and each service.

        SERVING is reported only while every dependency is available as well.
        """
        self._wanted = serving
        await self._publish()

    async def _publish(self) -> None:
        async with self._lock:
            down = self.dependencies.unavailable()
            serving = self._wanted and not down
            status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
            if status == self._reported:
                return
            for name in ["", *self.service_names]:
                await self.health.set(name, status)
            if self._reported is not None and self._wanted:
                # An outage is a warning; the start and the recovery are news, not trouble.
                log.log(
                    logging.INFO if serving else logging.WARNING,
                    "health %s", "SERVING" if serving else "NOT_SERVING",
                    extra={"unavailable": [d.name for d in down]},
                )
            self._reported = status

    def _dependencies_changed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
            for dependency in list(self.dependencies.items):
                if dependency.probe is not None:
                    try:
                        await dependency.check(PROBE_TIMEOUT_SECONDS)
                    except Exception:  # noqa: BLE001 - the next round probes again
                        log.exception("probing %s failed", dependency.name)

    async def stop(self, drain_seconds: float = 0.0, grace_seconds: float = 0.0) -> None:
        """Graceful stop: NOT_SERVING, wait ``drain_seconds`` (load balancers notice), stop with grace.

        Then run the ``on_stop`` callbacks in reverse order (drain NATS, close stores).
        """
        await self.health.enter_graceful_shutdown()  # later set() calls are ignored
        self.dependencies.unsubscribe(self._dependencies_changed)
        if self._prober is not None:
            self._prober.cancel()
        if drain_seconds > 0:
            await asyncio.sleep(drain_seconds)
        await self.server.stop(grace_seconds)
        for callback in reversed(self.on_stop):
            try:
                await callback()
            except Exception:  # noqa: BLE001 - shutdown goes on
                log.exception("shutdown callback failed")


async def start_grpc_server(
    settings: ServiceSettings,
    register: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    reflect: Sequence[str] | None = None,
) -> GrpcServer:
    """Create, bind and start a ``grpc.aio`` server with health, reflection and interceptors.

    Args:
        settings: The service's settings (host, port, ready_file).
        register: Adds the service's servicers to the server.
        service_names: Full names of the registered services, e.g. ``"scribe.v1.Ingest"``; health
            reports each of them.
        reflect: Further services reflection lists (their descriptors must be in the default
            pool); None: every public service when this server implements one
            (:func:`reflected_services`).

    Returns:
        The started server; health is NOT_SERVING until ``set_serving(True)``, and while any of
        the dependencies registered in this context (the bus, the store) is unavailable.

    Raises:
        RuntimeError: the port could not be bound.
    """
    server = grpc.aio.server(
        # Outermost first: tracing, then errors (so auth failures become rich statuses), then auth.
        interceptors=[*server_interceptors(), ErrorInterceptor(), AuthInterceptor(
            server_keyring(settings.auth),
            KeyRateLimiter(settings.auth.requests_per_second_per_key, settings.auth.request_burst_per_key),
        )],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ],
    )
    register(server)
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(reflected_services(service_names, reflect), server)
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    grpc_server = GrpcServer(
        server=server, port=port, health=health, service_names=service_names, dependencies=current_dependencies()
    )
    await grpc_server.set_serving(False)
    if settings.ready_file:
        path = Path(settings.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(path)
    log.info("gRPC server listening", extra={"port": port, "services": list(service_names)})
    return grpc_server


async def wait_for_termination() -> None:
    """Return when the process receives SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("termination signal received, draining")


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a service's ``main()`` on uvloop (Python 3.11: asyncio.Runner with a loop factory)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def serve_main(
    service: str,
    settings_type: Callable[[], ServiceSettings],
    create_server: Callable[[Any], Coroutine[Any, Any, GrpcServer]],
) -> None:
    """Run a service's whole ``main``.

    Settings come from the environment (built once), then JSON logs, telemetry, the server, and a
    graceful drain on SIGTERM (``drain_seconds``, then ``grace_seconds``).
    """
    from scribe_libs import __version__
    from scribe_libs.config import UnknownSetting
    from scribe_libs.logs import configure_logging
    from scribe_libs.telemetry import setup_telemetry, shutdown_telemetry

    try:
        settings = settings_type()
    except UnknownSetting as exc:
        # Before logging is configured: one plain line, and a non-zero exit (CrashLoopBackOff).
        print(f"{service}: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(service, settings.log_level)
    setup_telemetry(service, __version__, settings.metrics_port)

    async def _main() -> None:
        from scribe_libs.errors import new_dependency_scope

        new_dependency_scope()
        server = await create_server(settings)
        await wait_for_termination()
        await server.stop(settings.drain_seconds, settings.grace_seconds)
        shutdown_telemetry()

    run(_main)
    # A clean stop: the server's on_stop callbacks drained NATS and closed the stores and the
    # temporary directory (tempdirs.OwnedTempDir.close; its flock would go with the process
    # anyway), telemetry is flushed, and asyncio.Runner joined the default executor. No service
    # registers an atexit hook, so skip the interpreter's teardown of grpc, protobuf, numpy and
    # the model runtime (0.3-1 s on a busy machine), which `scribe down` would wait for; the
    # front door does the same. An exception out of run() exits the ordinary way (code 1).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
