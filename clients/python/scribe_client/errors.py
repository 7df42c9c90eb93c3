"""Typed errors: a failed RPC becomes a :class:`ScribeError` subclass chosen by its status code.

The server sends a ``google.rpc.Status`` in the ``grpc-status-details-bin`` trailer (scribe's one
error interceptor, scribe_libs.errors): always an ``ErrorInfo(domain="scribe.dev", reason=...,
metadata=...)``, plus ``BadRequest`` (INVALID_ARGUMENT), ``ResourceInfo`` (NOT_FOUND),
``QuotaFailure`` and ``RetryInfo`` (RESOURCE_EXHAUSTED, UNAVAILABLE). Every detail is unpacked
onto the exception; ``details`` keeps the raw packed messages.

A job that ends FAILED or CANCELLED is not an RPC error: :meth:`Client.transcribe` raises
:class:`JobFailedError` / :class:`JobCancelledError`, with the job's ``error_reason`` and
``error_message``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped,unused-ignore]

__all__ = [
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobError",
    "JobFailedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "ScribeError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]

#: The trailer carrying the serialized google.rpc.Status (gRPC's rich error model).
STATUS_DETAILS_KEY = "grpc-status-details-bin"


class ScribeError(Exception):
    """A scribe call failed.

    Attributes:
        code: The gRPC status code (None for :class:`JobError`, which is no RPC failure).
        reason: ``ErrorInfo.reason``, e.g. ``"API_KEY_INVALID"``, ``"JOB_NOT_FOUND"``; ``""`` when
            the server sent none (e.g. a connection failure seen by the client itself).
        message: The status message (human-readable; not for matching, use ``reason``).
        metadata: ``ErrorInfo.metadata``, e.g. ``{"scope": "jobs:write"}`` or ``{"error_id": ...}``.
        retry_after: Seconds after which a retry may succeed (``RetryInfo.retry_delay``); None when
            the server gave none.
        domain: ``ErrorInfo.domain`` (``"scribe.dev"`` for scribe's own errors).
        field_violations: ``(field, description)`` pairs of a ``BadRequest``.
        resource: ``(resource_type, resource_name)`` of a ``ResourceInfo``, or None.
        details: Every packed detail of the status, as sent.
    """

    def __init__(
        self,
        code: grpc.StatusCode | None,
        reason: str,
        message: str,
        metadata: dict[str, str] | None = None,
        retry_after: float | None = None,
        *,
        domain: str = "",
        field_violations: list[tuple[str, str]] | None = None,
        resource: tuple[str, str] | None = None,
        details: list[any_pb2.Any] | None = None,
    ):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.retry_after = retry_after
        self.domain = domain
        self.field_violations = list(field_violations or [])
        self.resource = resource
        self.details = list(details or [])

    @property
    def error_id(self) -> str:
        """The server's error id of an INTERNAL error (also in its log); ``""`` otherwise."""
        return self.metadata.get("error_id", "")

    def __str__(self) -> str:
        code = self.code.name if self.code is not None else "JOB"
        reason = f" {self.reason}" if self.reason else ""
        return f"{code}{reason}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code}, reason={self.reason!r}, message={self.message!r})"


class InvalidArgumentError(ScribeError):
    """INVALID_ARGUMENT: a bad config, undecodable audio, a bad id; ``field_violations`` names the field."""


class NotFoundError(ScribeError):
    """NOT_FOUND: no such job (or another owner's), or a missing ``source_uri`` object."""


class UnauthenticatedError(ScribeError):
    """UNAUTHENTICATED: the API key is missing (``API_KEY_MISSING``) or unknown (``API_KEY_INVALID``)."""


class PermissionDeniedError(ScribeError):
    """PERMISSION_DENIED: the key lacks the method's scope (``SCOPE_MISSING``, metadata ``scope``)."""


class ResourceExhaustedError(ScribeError):
    """RESOURCE_EXHAUSTED: queue full, too many sessions, audio too long or large; see ``retry_after``."""


class FailedPreconditionError(ScribeError):
    """FAILED_PRECONDITION: e.g. no pool serves the model, the job is not COMPLETED or already terminal."""


class UnavailableError(ScribeError):
    """UNAVAILABLE: the service or its broker cannot be reached (already retried where that is safe)."""


class DeadlineExceededError(ScribeError):
    """DEADLINE_EXCEEDED: the call's timeout passed."""


class InternalError(ScribeError):
    """INTERNAL: a server bug; ``error_id`` finds it in the server's log."""


class JobError(ScribeError):
    """A job ended without a transcript (``code`` is None).

    Attributes:
        job: The job's final record (``scribe.v1.Job``).
    """

    def __init__(self, job: Any):
        super().__init__(
            None, job.error_reason, job.error_message or f"job {job.job_id} ended without a transcript"
        )
        self.job = job

    @property
    def job_id(self) -> str:
        """The job's id."""
        return str(self.job.job_id)


class JobFailedError(JobError):
    """The job ended FAILED: ``reason`` / ``message`` are its ``error_reason`` / ``error_message``."""


class JobCancelledError(JobError):
    """The job ended CANCELLED (someone called CancelJob)."""


_BY_CODE: dict[grpc.StatusCode, type[ScribeError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def _status(trailing: Iterable[Any] | None) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except Exception:  # noqa: BLE001 - a garbled trailer is no detail, not a second error
                return None
            return status
    return None


def from_rpc_error(error: grpc.RpcError) -> ScribeError:
    """The typed error of a failed call (synchronous ``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    The class follows the status code (:class:`ScribeError` itself for codes without a class of
    their own, e.g. CANCELLED or UNKNOWN); the fields come from the status details.
    """
    code: grpc.StatusCode | None = error.code() if callable(getattr(error, "code", None)) else None
    message = (error.details() if callable(getattr(error, "details", None)) else None) or str(error)
    trailing = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    status = _status(trailing)
    reason, domain, metadata = "", "", {}
    retry_after: float | None = None
    violations: list[tuple[str, str]] = []
    resource: tuple[str, str] | None = None
    details = list(status.details) if status is not None else []
    for detail in details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.ToNanoseconds() / 1e9
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info_r = error_details_pb2.ResourceInfo()
            detail.Unpack(info_r)
            resource = (info_r.resource_type, info_r.resource_name)
    cls = _BY_CODE.get(code, ScribeError) if code is not None else ScribeError
    return cls(
        code, reason, status.message if status is not None and status.message else message, metadata, retry_after,
        domain=domain, field_violations=violations, resource=resource, details=details,
    )
