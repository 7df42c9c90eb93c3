"""Domain errors and the one interceptor that turns them into rich gRPC statuses.

Every error carries ``google.rpc.ErrorInfo(domain="scribe.dev", reason=...)`` plus the detail the
code calls for (DESIGN.md, "Errors"): ``BadRequest`` for INVALID_ARGUMENT, ``QuotaFailure`` and
``RetryInfo`` for RESOURCE_EXHAUSTED, ``ResourceInfo`` for NOT_FOUND. Unknown exceptions become
INTERNAL with an error id that is also logged; no traceback reaches the caller.
"""

from __future__ import annotations

import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
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
    """UNAVAILABLE: a dependency (NATS, object store) cannot be reached; retrying may help."""

    code = grpc.StatusCode.UNAVAILABLE


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
    """Turns ScribeError into its rich status and anything else into INTERNAL with an error id."""

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
