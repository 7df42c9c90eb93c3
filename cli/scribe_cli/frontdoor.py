"""The embedded stack's front door: one gRPC address for every public scribe service.

What the chart's Envoy does in Kubernetes (route ``/scribe.v1.<Service>/`` to that service), done
for ``scribe up`` on one fixed port (default 50051): a ``grpc.aio`` server whose generic handler
forwards each call, as raw bytes (no (de)serialization), to the backend of its service:

==========================  ===================
``scribe.v1.Ingest``        ingest
``scribe.v1.Results``       results
``scribe.v1.Glossaries``    results
``scribe.v1.StreamGateway`` stream_gateway
``scribe.v1.Transcriber``   refused: PERMISSION_DENIED, reason ``INTERNAL_SERVICE`` (internal
                            API; the stream gateway calls workers directly with its own key)
anything else               UNIMPLEMENTED
==========================  ===================

Every call is proxied as a bidirectional stream, which is what all four kinds of RPC are on the
wire (a unary request is a stream of one message), so one handler serves them all. Request
metadata (``x-api-key``, ``authorization``, ``traceparent``) is passed on, the deadline is
passed on as the upstream call's timeout, cancelling either side cancels the other, and the
backend's initial metadata, status code, message and trailing metadata (``grpc-status-details-bin``
with the ``google.rpc`` details) come back unchanged. Flow control holds end to end: the proxy
reads the next message from one side only after the previous one was written to the other
(``await context.write`` / the upstream call's writes), so at most one message per direction is
buffered per call.

The front door serves ``grpc.health.v1.Health`` itself (``""`` is SERVING when every backend is;
each public service follows its backend, probed every ``health_interval_seconds``) and server
reflection from the ``scribe.v1`` descriptors of every public service, so
``grpcurl -plaintext 127.0.0.1:50051 list`` lists them all.

Backends come from a JSON file ``{"ingest": "host:port", "results": ..., "stream_gateway": ...}``
that the stack rewrites when it restarts a service on a new port; the front door re-reads it when
it changes (one stat per call). Run as ``python -m scribe_cli.frontdoor`` with ``SCRIBE_FRONTDOOR_*`` settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from grpc_status import rpc_status
from pydantic import Field

from scribe.v1 import glossary_pb2, ingest_pb2, results_pb2, streaming_pb2, transcriber_pb2
from scribe_libs.config import StrictSettings, service_config

log = logging.getLogger(__name__)

PREFIX = "SCRIBE_FRONTDOOR_"
#: Public service full name -> backend (an embedded-stack service name).
ROUTES: dict[str, str] = {
    ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name: "ingest",
    results_pb2.DESCRIPTOR.services_by_name["Results"].full_name: "results",
    glossary_pb2.DESCRIPTOR.services_by_name["Glossaries"].full_name: "results",
    streaming_pb2.DESCRIPTOR.services_by_name["StreamGateway"].full_name: "stream_gateway",
}
#: Services that exist but are not reachable through the front door.
INTERNAL: frozenset[str] = frozenset({transcriber_pb2.DESCRIPTOR.services_by_name["Transcriber"].full_name})
#: Upload methods (client stream, single response: Ingest.CreateJob), as ``/pkg.Service/Method``.
UPLOADS: frozenset[str] = frozenset(
    f"/{service.full_name}/{method.name}"
    for module in (glossary_pb2, ingest_pb2, results_pb2, streaming_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    if method.client_streaming and not method.server_streaming
)
#: Backends the front door needs (every value of :data:`ROUTES`).
BACKENDS: tuple[str, ...] = tuple(dict.fromkeys(ROUTES.values()))
#: Largest message passed through, bytes: the services' own limit (scribe_libs.server).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: Seconds a channel to a backend's old address stays open after the backend moved (restart).
_RETIRED_CHANNEL_SECONDS = 60.0
#: ErrorInfo domain of the front door's own refusals (the services' domain).
DOMAIN = "scribe.dev"

#: Request metadata not passed upstream: HTTP/2 pseudo headers and what gRPC sets itself.
_HOP_BY_HOP = frozenset({"user-agent", "content-type", "te", "host", "content-length", "accept-encoding"})
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Retries would buffer request messages for replay; a proxy passes UNAVAILABLE back instead.
    ("grpc.enable_retries", 0),
]


class FrontDoorSettings(StrictSettings):
    """The front door's settings (environment ``SCRIBE_FRONTDOOR_*``). Durations in seconds.

    Raises:
        UnknownSetting: a ``SCRIBE_FRONTDOOR_*`` variable names no field (a typo).
    """

    model_config = service_config(PREFIX)

    host: str = Field("127.0.0.1", description="Address the front door binds.")
    port: int = Field(50051, description="gRPC port of the front door; 0 picks a free one (see ready_file).")
    backends_file: str = Field(
        "", description='JSON file {"ingest": "host:port", "results": ..., "stream_gateway": ...}; re-read on change.'
    )
    backends: dict[str, str] = Field(
        default_factory=dict, description="Backend addresses when there is no backends_file (tests)."
    )
    ready_file: str = Field("", description="If set, a JSON file {port, pid} written once the port is bound.")
    log_level: str = Field("INFO", description="Python logging level name.")
    grace_seconds: float = Field(1.0, description="Seconds in-flight calls get in server.stop(grace) after SIGTERM.")
    health_interval_seconds: float = Field(
        1.0, description="Seconds between health probes of the backends."
    )


def _refusal(service: str) -> grpc.RpcMethodHandler:
    status = status_pb2.Status(
        code=code_pb2.PERMISSION_DENIED,
        message=f"{service} is internal: it is not served on the front door",
    )
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason="INTERNAL_SERVICE", domain=DOMAIN, metadata={"service": service}))
    status.details.append(detail)
    grpc_status = rpc_status.to_status(status)

    async def refuse(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)

    return grpc.stream_stream_rpc_method_handler(refuse)


def _forwarded(metadata: object) -> list[tuple[str, str | bytes]]:
    """Request metadata to pass upstream: everything but pseudo headers and gRPC's own."""
    return [
        (key, value) for key, value in (metadata or ())
        if not key.startswith((":", "grpc-")) and key not in _HOP_BY_HOP
    ]


@dataclass
class FrontDoor(grpc.GenericRpcHandler):
    """The routing table and one channel per backend address; a ``GenericRpcHandler``."""

    backends: dict[str, str] = field(default_factory=dict)
    #: JSON file of the backends, checked (one stat) on every call and re-read when it changed.
    backends_file: str = ""
    #: Calls being proxied now.
    active: int = 0
    _channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)
    _retired: list[grpc.aio.Channel] = field(default_factory=list)
    _closing: set[asyncio.Task[None]] = field(default_factory=set)
    _file_version: tuple[int, int] | None = None

    def channel(self, backend: str) -> grpc.aio.Channel | None:
        """The channel to ``backend``'s current address (None when it has no address)."""
        address = self.backends.get(backend)
        if not address:
            return None
        existing = self._channels.get(address)
        if existing is None:
            existing = self._channels[address] = grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS)
        return existing

    def reload(self) -> None:
        """Re-read ``backends_file`` if it changed since the last read (a restarted service moved)."""
        if not self.backends_file:
            return
        try:
            stat = os.stat(self.backends_file)
        except OSError:
            return
        version = (stat.st_mtime_ns, stat.st_ino)  # the stack replaces the file (new inode)
        if version == self._file_version:
            return
        backends = _read_backends(self.backends_file)
        if backends is not None:
            self._file_version = version
            self.set_backends(backends)

    def set_backends(self, backends: Mapping[str, str]) -> None:
        """Route to ``backends`` from now on; channels of addresses no longer used are closed."""
        if dict(backends) == self.backends:
            return
        log.info("backends", extra={"backends": dict(backends)})
        self.backends = dict(backends)
        stale = [a for a in self._channels if a not in self.backends.values()]
        for address in stale:
            # New calls go to the new address; calls still running on the old one get a minute.
            channel = self._channels.pop(address)
            self._retired.append(channel)
            asyncio.get_running_loop().call_later(_RETIRED_CHANNEL_SECONDS, self._close_retired, channel)

    def _close_retired(self, channel: grpc.aio.Channel) -> None:
        if channel in self._retired:
            self._retired.remove(channel)
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every backend channel (calls still running on them end CANCELLED)."""
        for channel in [*self._channels.values(), *self._retired]:
            await channel.close()
        self._channels.clear()
        self._retired.clear()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        """The handler of one call, by its method path ``/package.Service/Method``."""
        method = handler_call_details.method
        service = method.lstrip("/").partition("/")[0]
        self.reload()
        if service in INTERNAL:
            return _refusal(service)
        backend = ROUTES.get(service)
        if backend is None:
            return None  # UNIMPLEMENTED (health and reflection have their own handlers)

        async def forward(request_iterator: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> None:
            self.active += 1
            try:
                await self._forward(backend, method, request_iterator, context)
            finally:
                self.active -= 1

        return grpc.stream_stream_rpc_method_handler(forward)

    async def _forward(
        self, backend: str, method: str, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ) -> None:
        channel = self.channel(backend)
        if channel is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{backend} has no address yet")
        # Serializers None: request and response messages pass as the bytes they are. The
        # requests are pumped by a task of ours (not handed to the call as an iterator), so when
        # the backend ends an upload early (refused at its first message: a bad key, a file too
        # large) the pump drains the caller's stream before the status goes back (_pump).
        call = channel.stream_stream(method)(
            metadata=_forwarded(context.invocation_metadata()), timeout=context.time_remaining()
        )
        pump = asyncio.create_task(_pump(requests, call, drain=method in UPLOADS))
        try:
            initial = await call.initial_metadata()
            if initial:
                await context.send_initial_metadata(tuple(initial))
            async for message in call:
                await context.write(message)
            code, details, trailing = await call.code(), await call.details(), await call.trailing_metadata()
        except grpc.aio.AioRpcError as exc:
            code, details, trailing = exc.code(), exc.details(), exc.trailing_metadata()
        except BaseException:
            call.cancel()  # the caller went away (cancelled, deadline) or the front door stops
            pump.cancel()
            raise
        if code != grpc.StatusCode.OK and method in UPLOADS:
            # Let the pump read (and drop) the rest of the upload, bounded, before answering.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(pump), DRAIN_SECONDS)
        if not pump.done():
            pump.cancel()
        with contextlib.suppress(BaseException):
            await pump
        if code == grpc.StatusCode.OK:
            if trailing:
                context.set_trailing_metadata(tuple(trailing))
            return
        await context.abort(code, details or "", tuple(trailing or ()))


async def _pump(requests: AsyncIterator[bytes], call: grpc.aio.StreamStreamCall, drain: bool = False) -> None:
    """Write the caller's messages to the backend call, then half-close it (flow control: one at a time).

    When the backend call ends first and ``drain``: keep reading the caller's messages (dropped)
    until its stream ends or :data:`DRAIN_BYTES` were read.
    """
    failed, dropped = False, 0
    async for message in requests:
        if failed:
            dropped += len(message)
            if dropped > DRAIN_BYTES:
                return
            continue
        try:
            await call.write(message)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            failed = True  # the backend call ended: its status is what the caller gets
            if not drain:
                return
    if not failed:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await call.done_writing()


#: After a backend refused an upload (:data:`UPLOADS`) the caller is still sending, the front
#: door reads (and drops) at most this much more of it, for at most DRAIN_SECONDS, before
#: answering: returning while the caller's upload was unread made its gRPC library report
#: INTERNAL "Internal error from Core" instead of the backend's status.
DRAIN_BYTES = 64 * 1024 * 1024
DRAIN_SECONDS = 5.0


def _read_backends(path: str) -> dict[str, str] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None  # being replaced, or not written yet: keep the current table
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else None


@dataclass
class FrontDoorServer:
    """A started front door: its server, bound port, health servicer and routing table."""

    server: grpc.aio.Server
    port: int
    health: health_async.HealthServicer
    door: FrontDoor
    settings: FrontDoorSettings
    _monitor: asyncio.Task[None] | None = None

    async def refresh(self) -> bool:
        """Re-read the backends file, probe every backend, publish health; True when all SERVING."""
        self.door.reload()
        serving: dict[str, bool] = {}
        for backend in BACKENDS:
            serving[backend] = await self._probe(backend)
        status = health_pb2.HealthCheckResponse
        for service, backend in ROUTES.items():
            await self.health.set(service, status.SERVING if serving[backend] else status.NOT_SERVING)
        everything = all(serving.values())
        await self.health.set("", status.SERVING if everything else status.NOT_SERVING)
        return everything

    async def _probe(self, backend: str) -> bool:
        channel = self.door.channel(backend)
        if channel is None:
            return False
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=max(self.settings.health_interval_seconds, 1.0)
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def _monitor_loop(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - the next round tries again
                log.exception("health refresh failed")
            await asyncio.sleep(self.settings.health_interval_seconds)

    async def stop(self, grace_seconds: float | None = None) -> None:
        """NOT_SERVING, then stop with grace (calls in flight get ``grace_seconds``), close channels."""
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_seconds if grace_seconds is None else grace_seconds)
        await self.door.close()


async def create_server(settings: FrontDoorSettings) -> FrontDoorServer:
    """Bind and start the front door; health follows the backends from the first probe on.

    Returns:
        The started front door and its bound port (``settings.port``, or a free one for 0).

    Raises:
        RuntimeError: the port could not be bound (e.g. another ``scribe up`` holds it).
    """
    door = FrontDoor(dict(settings.backends), backends_file=settings.backends_file)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second front door on the same port fails instead of sharing it
        ]
    )
    health = health_async.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [*ROUTES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
    )
    server.add_generic_rpc_handlers((door,))
    try:
        port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    except RuntimeError as exc:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}: {exc}") from None
    if port == 0:
        raise RuntimeError(f"could not bind {settings.host}:{settings.port}")
    await server.start()
    front = FrontDoorServer(server=server, port=port, health=health, door=door, settings=settings)
    await health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await front.refresh()
    front._monitor = asyncio.get_running_loop().create_task(front._monitor_loop(), name="frontdoor-health")
    if settings.ready_file:
        path = Path(settings.ready_file)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": port, "pid": os.getpid()}))
        tmp.replace(path)
    log.info("front door listening", extra={"port": port, "routes": ROUTES})
    return front


def main() -> None:
    """``python -m scribe_cli.frontdoor``: serve until SIGTERM/SIGINT, then stop with grace."""
    from scribe_libs.logs import configure_logging
    from scribe_libs.server import run, wait_for_termination

    try:
        settings = FrontDoorSettings()
    except ValueError as exc:
        print(f"frontdoor: refusing to start: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging("scribe-frontdoor", settings.log_level)

    async def _main() -> None:
        try:
            front = await create_server(settings)
        except RuntimeError as exc:
            log.error("%s", exc)
            raise SystemExit(2) from None
        await wait_for_termination()
        await front.stop()
        log.info("front door stopped")

    run(_main)
    # Everything is closed and flushed: skip the interpreter's teardown of grpc and protobuf
    # (0.3-0.5 s on a busy machine), which `scribe down` would wait for.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
