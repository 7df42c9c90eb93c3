"""Domain errors and the one interceptor that turns them into rich gRPC statuses.

Every error carries ``google.rpc.ErrorInfo(domain="scribe.dev", reason=...)`` plus the detail the
code calls for (DESIGN.md, "Errors"): ``BadRequest`` for INVALID_ARGUMENT, ``QuotaFailure`` and
``RetryInfo`` for RESOURCE_EXHAUSTED, ``ResourceInfo`` for NOT_FOUND. Unknown exceptions become
INTERNAL with an error id that is also logged; no traceback reaches the caller.

A backend outage is not a bug: the exceptions nats-py raises while the broker cannot be reached
(connection closed, reconnecting, request timeouts, JetStream "no responders"/503) leave as
UNAVAILABLE, reason ``BROKER_UNAVAILABLE``, with ``RetryInfo`` (clients retry UNAVAILABLE); the
object store raises :class:`Unavailable` (``OBJECT_STORE_UNAVAILABLE``) itself.

:class:`Dependency` is the other half: each backend a service instance uses (its NATS connection,
its object store) registers one in :func:`current_dependencies`, the instance's set, and keeps it
up to date; the gRPC server (scribe_libs.server) reports NOT_SERVING while any is unavailable. The
set is per asyncio context: the bus, the store and the server a service's ``create_server`` makes
(in one task) share it, with no service code involved.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

log = logging.getLogger(__name__)

DOMAIN = "scribe.dev"


class ScribeError(Exception):
    """Base of every error a caller may see.

    Args:
        reason: UPPER_SNAKE_CASE machine-readable reason, e.g. ``"UNDECODABLE_AUDIO"``.
        message: Human-readable explanation for the caller.
        metadata: Extra ``ErrorInfo.metadata`` key/values.
    """

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})

    def details(self) -> list[Any]:
        """Protobuf detail messages besides ErrorInfo (override per subclass)."""
        return []

    def to_status(self) -> status_pb2.Status:
        """The ``google.rpc.Status`` this error is sent as."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)
        packed = []
        for detail in [info, *self.details()]:
            any_msg = any_pb2.Any()
            any_msg.Pack(detail)
            packed.append(any_msg)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(ScribeError):
    """INVALID_ARGUMENT with a ``BadRequest`` naming the offending field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, reason: str, message: str, field: str = "", metadata: dict[str, str] | None = None):
        super().__init__(reason, message, metadata)
        self.field = field

    def details(self) -> list[Any]:
        """A BadRequest field violation when a field is named."""
        if not self.field:
            return []
        violation = error_details_pb2.BadRequest.FieldViolation(field=self.field, description=self.message)
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(ScribeError):
    """NOT_FOUND with a ``ResourceInfo`` (resource type and name)."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, reason: str, message: str, resource_type: str, resource_name: str):
        super().__init__(reason, message)
        self.resource_type = resource_type
        self.resource_name = resource_name

    def details(self) -> list[Any]:
        """ResourceInfo naming what was not found."""
        return [error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.resource_name)]


class ResourceExhausted(ScribeError):
    """RESOURCE_EXHAUSTED with ``QuotaFailure`` and, when retrying can help, ``RetryInfo``.

    Args:
        retry_after: Seconds after which a retry may succeed; ``None`` when it never will (e.g.
            the audio is over a size limit).
        subject: What the quota applies to, e.g. ``"pool:cpu"`` or ``"upload"``.
    """

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(
        self,
        reason: str,
        message: str,
        subject: str = "",
        retry_after: float | None = None,
        metadata: dict[str, str] | None = None,
    ):
        super().__init__(reason, message, metadata)
        self.subject = subject
        self.retry_after = retry_after

    def details(self) -> list[Any]:
        """QuotaFailure, plus RetryInfo when retry_after is set."""
        out: list[Any] = [
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=self.subject, description=self.message)]
            )
        ]
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            out.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return out


class FailedPrecondition(ScribeError):
    """FAILED_PRECONDITION: the system is not in a state to do this (e.g. no pool serves the model)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ScribeError):
    """UNAUTHENTICATED: API key missing or unknown."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ScribeError):
    """PERMISSION_DENIED: the API key lacks the scope."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ScribeError):
    """UNAVAILABLE: a dependency (NATS, object store) cannot be reached; retrying may help.

    Args:
        retry_after: Seconds after which a retry may succeed, sent as ``RetryInfo``; None: none sent.
    """

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(
        self, reason: str, message: str, metadata: dict[str, str] | None = None, retry_after: float | None = None
    ):
        super().__init__(reason, message, metadata)
        self.retry_after = retry_after

    def details(self) -> list[Any]:
        """RetryInfo when retry_after is set."""
        if self.retry_after is None:
            return []
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(self.retry_after * 1e9))
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


#: Reason of a call that failed because NATS could not be reached.
BROKER_UNAVAILABLE = "BROKER_UNAVAILABLE"
#: Seconds a caller is told to wait before retrying after a broker error (nats-py reconnects
#: every 2 s by default, ``reconnect_time_wait``).
BROKER_RETRY_SECONDS = 1.0

@functools.cache
def broker_outage_errors() -> tuple[type[BaseException], ...]:
    """What nats-py raises when the broker cannot be reached, as opposed to a logic error.

    A bad subject or a missing key is a logic error; an outage is: the connection closed,
    draining or reconnecting, the outbound buffer full during a reconnect, a request unanswered
    (TimeoutError, and its FlushTimeout and FetchTimeout), no server left, no JetStream
    responder, JetStream 503 / no stream response.

    nats-py is imported on the first call, not with this module: it costs about 0.7 s of import
    (aiohttp), which clients of :mod:`scribe_libs.errors` such as ``scribe down`` do not need.
    """
    from nats import errors as nats_errors
    from nats.js import errors as js_errors

    return (
        nats_errors.ConnectionClosedError,
        nats_errors.ConnectionDrainingError,
        nats_errors.ConnectionReconnectingError,
        nats_errors.NoServersError,
        nats_errors.NoRespondersError,
        nats_errors.OutboundBufferLimitError,
        nats_errors.StaleConnectionError,
        nats_errors.TimeoutError,
        js_errors.ServiceUnavailableError,
        js_errors.NoStreamResponseError,
    )


def is_broker_outage(exc: BaseException) -> bool:
    """True if ``exc`` is one of :func:`broker_outage_errors`.

    While nats-py was never imported nothing can have raised one, so the answer is False without
    importing it.
    """
    return "nats" in sys.modules and isinstance(exc, broker_outage_errors())


def broker_unavailable(exc: BaseException) -> Unavailable:
    """The :class:`Unavailable` (``BROKER_UNAVAILABLE``, 1 s RetryInfo) a broker outage error becomes."""
    return Unavailable(
        BROKER_UNAVAILABLE,
        f"the message broker (NATS) is unavailable ({type(exc).__name__}); retry later",
        retry_after=BROKER_RETRY_SECONDS,
    )


# --- dependencies: what health follows -----------------------------------------------------------


class Dependency:
    """One backend a service instance needs (its NATS connection, its object store).

    The owner keeps it current: :meth:`mark` from connection callbacks or failed calls, and/or a
    ``probe`` that the gRPC server runs every few seconds (scribe_libs.server). While any
    dependency of an instance is unavailable, the instance's health is NOT_SERVING.

    Args:
        name: What it is, for logs, e.g. ``"nats"`` or ``"object store"``.
        probe: Optional cheap call that raises when the backend cannot be reached (e.g. a bucket
            HEAD); the server bounds it with a timeout.
    """

    def __init__(self, name: str, probe: Callable[[], Awaitable[object]] | None = None):
        self.name = name
        self.probe = probe
        self.available = True
        self.detail = ""
        self.since = time.monotonic()
        self.scope: Dependencies | None = None
        self._probing: asyncio.Task[object] | None = None

    def mark(self, available: bool, detail: str = "") -> None:
        """Record whether the backend is reachable now; logs and notifies the health on a change."""
        if available == self.available:
            return
        self.available, self.detail, self.since = available, detail, time.monotonic()
        if available:
            log.info("%s is reachable again", self.name, extra={"dependency": self.name})
        else:
            log.warning("%s is unavailable: %s", self.name, detail, extra={"dependency": self.name})
        if self.scope is not None:
            self.scope.changed()

    async def check(self, timeout: float) -> bool:
        """Run the probe (at most one at a time; unavailable if it raises or takes over ``timeout`` s).

        A probe that overran keeps running (a blocking call in a thread cannot be cancelled); the
        next check waits for it instead of starting another. Without a probe, the current state.
        """
        if self.probe is None:
            return self.available
        if self._probing is None or self._probing.done():
            self._probing = asyncio.ensure_future(self.probe())
        done, _ = await asyncio.wait({self._probing}, timeout=timeout)
        if not done:
            self.mark(False, f"no answer within {timeout:.0f} s")
            return False
        exc = self._probing.exception()
        self.mark(exc is None, "" if exc is None else f"{type(exc).__name__}: {exc}")
        return exc is None


class Dependencies:
    """The dependencies of one service instance, and who to tell when one changes (its health)."""

    def __init__(self) -> None:
        self.items: list[Dependency] = []
        self._listeners: list[Callable[[], None]] = []

    def add(self, dependency: Dependency) -> Dependency:
        """Register ``dependency`` (its health now counts); returns it."""
        dependency.scope = self
        self.items.append(dependency)
        self.changed()
        return dependency

    def remove(self, dependency: Dependency) -> None:
        """Unregister (a deliberately closed connection is no outage)."""
        if dependency in self.items:
            self.items.remove(dependency)
            dependency.scope = None
            self.changed()

    def unavailable(self) -> list[Dependency]:
        """The dependencies that are unavailable now."""
        return [d for d in self.items if not d.available]

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (synchronously, on the event loop) whenever the set or a state changes."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def changed(self) -> None:
        """Tell the listeners."""
        for listener in list(self._listeners):
            listener()


_dependencies: contextvars.ContextVar[Dependencies | None] = contextvars.ContextVar(
    "scribe_dependencies", default=None
)


def current_dependencies() -> Dependencies:
    """The dependency set of the service instance being built in this context (made on first use).

    A service's ``create_server`` connects the bus, opens the store and starts the gRPC server
    in one task, so all three find the same set; tasks it creates inherit it.
    """
    scope = _dependencies.get()
    if scope is None:
        scope = Dependencies()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            # Outside an event loop (a script or a synchronous test opening a store): a set of its
            # own, not kept in this context, so it cannot leak into services started later from
            # here (their tasks copy this context; seen: a dead store of a unit test kept every
            # later test stack NOT_SERVING).
            return scope
        _dependencies.set(scope)
    return scope


def new_dependency_scope() -> Dependencies:
    """Start a fresh dependency set for the service instance built next in this context.

    ``serve_main`` and the test harness call it first, so an instance never inherits another's
    backends from the context it was started from.
    """
    scope = Dependencies()
    _dependencies.set(scope)
    return scope


def _internal(exc: BaseException) -> status_pb2.Status:
    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s: %r", error_id, exc, exc_info=exc, extra={"error_id": error_id})
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN, metadata={"error_id": error_id})
    any_msg = any_pb2.Any()
    any_msg.Pack(info)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (error id {error_id})", details=[any_msg]
    )


async def _abort(context: grpc.aio.ServicerContext, status: status_pb2.Status) -> None:
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)


def _status_for(exc: BaseException) -> status_pb2.Status:
    if isinstance(exc, ScribeError):
        return exc.to_status()
    if is_broker_outage(exc):
        log.warning("call failed, broker unavailable: %r", exc)
        return broker_unavailable(exc).to_status()
    return _internal(exc)


def _wrap_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await behavior(request_or_iterator, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves as a status
            await _abort(context, _status_for(exc))

    return wrapper


def _wrap_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def wrapper(request_or_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            result = behavior(request_or_iterator, context)
            if inspect.isawaitable(result):
                result = await result
            async for item in result:
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every error leaves as a status
            await _abort(context, _status_for(exc))

    return wrapper


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns ScribeError into its rich status, a broker outage into UNAVAILABLE, the rest into INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Wrap the handler's behaviour of whichever cardinality it has."""
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        for behaviour, make, wrap in (
            (handler.unary_unary, grpc.unary_unary_rpc_method_handler, _wrap_unary),
            (handler.stream_unary, grpc.stream_unary_rpc_method_handler, _wrap_unary),
            (handler.unary_stream, grpc.unary_stream_rpc_method_handler, _wrap_stream),
            (handler.stream_stream, grpc.stream_stream_rpc_method_handler, _wrap_stream),
        ):
            if behaviour:
                return make(wrap(behaviour), handler.request_deserializer, handler.response_serializer)
        return handler


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo detail of a failed call, or None. For clients and tests."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def status_details(error: grpc.RpcError) -> Sequence[any_pb2.Any]:
    """All packed details of a failed call (empty when it carried none)."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    return list(status.details) if status is not None else []
