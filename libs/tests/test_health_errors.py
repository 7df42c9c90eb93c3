"""A backend outage reaches callers as UNAVAILABLE with a reason, never as INTERNAL.

Pure: the statuses the error interceptor sends for the exceptions nats-py raises while the broker
is down (scribe_libs.errors).
"""

from __future__ import annotations

import grpc
import nats.errors
import nats.js.errors
import pytest
from google.rpc import error_details_pb2

from scribe_libs import errors


def _reason(status) -> str:  # noqa: ANN001 - a google.rpc.Status
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def _retry_seconds(status) -> float | None:  # noqa: ANN001
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


@pytest.mark.parametrize(
    "exc",
    [
        nats.errors.ConnectionClosedError(),
        nats.errors.NoServersError(),
        nats.errors.TimeoutError(),
        nats.errors.OutboundBufferLimitError(),
        nats.errors.StaleConnectionError(),
        nats.errors.UnexpectedEOF(),
        nats.errors.ConnectionReconnectingError(),
        nats.errors.ConnectionDrainingError(),
        nats.errors.NoRespondersError(),
        nats.errors.FlushTimeoutError(),
        nats.js.errors.ServiceUnavailableError(),
        nats.js.errors.NoStreamResponseError(),
        nats.js.errors.FetchTimeoutError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_broker_outage_errors_are_unavailable_with_a_reason(exc):
    status = errors._status_for(exc)  # noqa: SLF001 - what ErrorInterceptor sends
    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert _reason(status) == "BROKER_UNAVAILABLE"
    assert _retry_seconds(status) == pytest.approx(1.0)
    assert "error id" not in status.message


def test_logic_errors_from_nats_stay_internal():
    for exc in (nats.js.errors.BadRequestError(), nats.errors.BadSubjectError(), ValueError("bug")):
        status = errors._status_for(exc)  # noqa: SLF001
        assert status.code == grpc.StatusCode.INTERNAL.value[0], exc
        assert _reason(status) == "INTERNAL"
