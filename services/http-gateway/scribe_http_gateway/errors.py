"""OpenAI-shaped HTTP errors, and the mapping from the platform's gRPC statuses to them.

Body (OpenAI API reference, "Error codes"; the official clients read ``error.message``)::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "model", "code": "model_not_found"}}

HTTP status from the gRPC code and the ``ErrorInfo`` reason (scribe_libs.errors), chosen so that
the official ``openai`` client raises the class a caller of OpenAI would get:

======================================  ======  ==============================  =====================
gRPC code (reason)                      HTTP    openai client exception         ``code``
======================================  ======  ==============================  =====================
INVALID_ARGUMENT (UNKNOWN_MODEL)        404     NotFoundError                   model_not_found
FAILED_PRECONDITION (NO_POOL_FOR_MODEL) 404     NotFoundError                   model_not_found
INVALID_ARGUMENT, other reasons         400     BadRequestError                 reason, lower case
FAILED_PRECONDITION, other reasons      400     BadRequestError                 reason, lower case
OUT_OF_RANGE                            400     BadRequestError                 reason, lower case
RESOURCE_EXHAUSTED (AUDIO_TOO_LARGE)    413     APIStatusError                  audio_too_large
RESOURCE_EXHAUSTED (AUDIO_TOO_LONG)     400     BadRequestError                 audio_too_long
RESOURCE_EXHAUSTED, other reasons       429     RateLimitError (+ Retry-After)  rate_limit_exceeded /
                                                                                reason, lower case
UNAUTHENTICATED                         401     AuthenticationError             invalid_api_key
PERMISSION_DENIED                       403     PermissionDeniedError           reason, lower case
NOT_FOUND                               404     NotFoundError                   reason, lower case
ALREADY_EXISTS / ABORTED                409     ConflictError                   reason, lower case
UNAVAILABLE                             503     InternalServerError (retried)   reason, lower case
DEADLINE_EXCEEDED                       504     InternalServerError (retried)   timeout
CANCELLED                               499     APIStatusError                  cancelled
UNIMPLEMENTED                           501     InternalServerError             unimplemented
anything else (INTERNAL, UNKNOWN, ...)  500     InternalServerError             reason, lower case
======================================  ======  ==============================  =====================

``Retry-After`` (whole seconds, rounded up) comes from the status's ``google.rpc.RetryInfo``,
on 429 and 503 (1 s for a backend the channel cannot reach, whose own message, naming internal
addresses, is replaced). ``param`` names the form field (``model``, ``language``, ``prompt``, ``file``)
the status's ``BadRequest`` field violation points at. The message is the platform's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from starlette.responses import JSONResponse

from scribe_libs.errors import error_info, status_details

#: OpenAI's ``type`` values: client errors, rate limits (OpenAI sends "requests"/"tokens" with
#: code rate_limit_exceeded), server errors.
INVALID_REQUEST = "invalid_request_error"
RATE_LIMIT = "requests"
SERVER_ERROR = "server_error"

#: Platform request fields (``BadRequest.FieldViolation.field``) -> the form field a caller sent.
_PARAMS = {
    "spec.config.model": "model",
    "spec.config.language": "language",
    "spec.config.initial_prompt": "prompt",
    "spec.config.hotwords": "prompt",
    "spec.filename": "file",
    "audio": "file",
}

_MODEL_REASONS = frozenset({"UNKNOWN_MODEL", "NO_POOL_FOR_MODEL"})


@dataclass
class HttpError(Exception):
    """An error answered in OpenAI's shape.

    Args:
        status: HTTP status code.
        message: For the caller (no server paths, no tracebacks).
        type: OpenAI error ``type``.
        code: OpenAI error ``code`` (snake case), or None.
        param: The request field at fault, or None.
        retry_after: Seconds for a ``Retry-After`` header, or None.
    """

    status: int
    message: str
    type: str = INVALID_REQUEST
    code: str | None = None
    param: str | None = None
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def response(self) -> JSONResponse:
        """The JSON response carrying this error."""
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        if self.status == 401:
            headers.setdefault("WWW-Authenticate", 'Bearer realm="scribe"')
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> HttpError:
    """A 400 ``invalid_request_error`` about form field ``param``."""
    return HttpError(400, message, INVALID_REQUEST, code, param)


def _retry_after(details: list) -> float | None:
    for detail in details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _param(details: list) -> str | None:
    for detail in details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            for violation in bad.field_violations:
                if violation.field in _PARAMS:
                    return _PARAMS[violation.field]
    return None


def from_rpc_error(error: grpc.RpcError) -> HttpError:
    """The HTTP error a failed gRPC call becomes (see the module docstring's table)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else "") or str(code.name).lower()
    info = error_info(error)
    reason = info.reason if info is not None else ""
    details = list(status_details(error)) if info is not None else []
    lower = reason.lower() or None
    param = _param(details)
    retry = _retry_after(details)
    C = grpc.StatusCode
    if reason in _MODEL_REASONS:
        return HttpError(404, message, INVALID_REQUEST, "model_not_found", "model")
    if code in (C.INVALID_ARGUMENT, C.FAILED_PRECONDITION, C.OUT_OF_RANGE):
        return HttpError(400, message, INVALID_REQUEST, lower or "invalid_value", param)
    if code == C.RESOURCE_EXHAUSTED:
        if reason == "AUDIO_TOO_LARGE":
            return HttpError(413, message, INVALID_REQUEST, "audio_too_large", "file")
        if reason == "AUDIO_TOO_LONG":
            return HttpError(400, message, INVALID_REQUEST, "audio_too_long", "file")
        code_name = "rate_limit_exceeded" if reason in ("", "KEY_RATE_LIMITED") else lower
        return HttpError(429, message, RATE_LIMIT, code_name, None, retry)
    if code == C.UNAUTHENTICATED:
        return HttpError(401, message, INVALID_REQUEST, "invalid_api_key")
    if code == C.PERMISSION_DENIED:
        return HttpError(403, message, INVALID_REQUEST, lower or "permission_denied")
    if code == C.NOT_FOUND:
        return HttpError(404, message, INVALID_REQUEST, lower or "not_found")
    if code in (C.ALREADY_EXISTS, C.ABORTED):
        return HttpError(409, message, INVALID_REQUEST, lower or "conflict")
    if code == C.UNAVAILABLE:
        if info is None:  # the channel's own error: its text names internal addresses
            message, retry = "the transcription service is unavailable; retry later", 1.0
        return HttpError(503, message, SERVER_ERROR, lower or "unavailable", None, retry)
    if code == C.DEADLINE_EXCEEDED:
        return HttpError(504, message, SERVER_ERROR, "timeout")
    if code == C.CANCELLED:
        return HttpError(499, message, SERVER_ERROR, "cancelled")
    if code == C.UNIMPLEMENTED:
        return HttpError(501, message, SERVER_ERROR, "unimplemented")
    return HttpError(500, message, SERVER_ERROR, lower or "internal_error")


#: Failure reasons of a job (``Job.error_reason``) that are the caller's input, not the platform.
CLIENT_FAILURE_REASONS = frozenset(
    {"UNDECODABLE_AUDIO", "EMPTY_AUDIO", "NO_AUDIO_STREAM", "TRUNCATED_AUDIO", "TOO_MANY_CHANNELS", "AUDIO_TOO_LONG"}
)


def from_failed_job(reason: str, message: str) -> HttpError:
    """The HTTP error for a job that ended FAILED with ``reason`` (400 for bad input, else 500)."""
    if reason in CLIENT_FAILURE_REASONS:
        return HttpError(400, message or reason, INVALID_REQUEST, reason.lower(), "file")
    return HttpError(500, message or "the transcription failed", SERVER_ERROR, (reason or "job_failed").lower())
