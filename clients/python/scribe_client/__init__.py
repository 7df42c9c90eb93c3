"""scribe-client: transcribe files, follow jobs and stream live audio through scribe's gRPC API.

    from scribe_client import Client
    c = Client(api_key="sk_...")              # 127.0.0.1:50051, the embedded stack's front door
    print(c.transcribe("call.wav", language="ko").text)

:class:`Client` is synchronous, :class:`AsyncClient` the same on asyncio (grpc.aio). Messages
are scribe's ``scribe.v1`` protobuf classes (:mod:`scribe_client.types`); errors are
:class:`ScribeError` subclasses carrying the status code and the server's ``ErrorInfo`` reason.
"""

from __future__ import annotations

__version__ = "0.1.0"

from scribe_client._config import DEFAULT_ADDRESS, Transcript, open_channel, service_config  # noqa: E402
from scribe_client.aio import AsyncClient  # noqa: E402
from scribe_client.client import Client  # noqa: E402
from scribe_client.errors import (  # noqa: E402
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    JobCancelledError,
    JobError,
    JobFailedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    ScribeError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "AsyncClient",
    "Client",
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
    "Transcript",
    "UnauthenticatedError",
    "UnavailableError",
    "__version__",
    "open_channel",
    "service_config",
]
