"""The gateway's gRPC side: Ingest and Results channels, called with the caller's own API key.

Every call carries the HTTP caller's key as ``x-api-key`` metadata (scribe_libs.auth), so the
services apply that key's scopes, owner and per-key quota; the gateway holds no key of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
from scribe_libs.formats import transcript_from_json

log = logging.getLogger(__name__)

#: Largest gRPC message either side accepts (scribe_libs.server.MAX_MESSAGE_BYTES).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # A long WatchJob stays open for minutes: keepalive notices a dead peer.
    ("grpc.keepalive_time_ms", 30_000),
]
S = jobs_pb2.JobState
TERMINAL = frozenset({S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED})


class Deadline:
    """A request's time budget: each call gets what is left of it."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + seconds

    def left(self) -> float:
        """Seconds left, at least a millisecond (gRPC then fails the call with DEADLINE_EXCEEDED)."""
        return max(0.001, self.end - self.clock())


class Backends:
    """Channels to Ingest and Results (``grpc.aio``, made on the serving event loop)."""

    def __init__(self, ingest_address: str, results_address: str):
        # The official OpenTelemetry aio client interceptors: a client span per call, and the
        # HTTP request's trace context carried on to the services (``traceparent`` metadata).
        self.ingest_channel = grpc.aio.insecure_channel(
            ingest_address, options=_CHANNEL_OPTIONS, interceptors=aio_client_interceptors()
        )
        self.results_channel = grpc.aio.insecure_channel(
            results_address, options=_CHANNEL_OPTIONS, interceptors=aio_client_interceptors()
        )
        self.ingest = ingest_pb2_grpc.IngestStub(self.ingest_channel)
        self.results = results_pb2_grpc.ResultsStub(self.results_channel)
        self.addresses = {"ingest": ingest_address, "results": results_address}

    async def close(self) -> None:
        """Close both channels."""
        await self.ingest_channel.close()
        await self.results_channel.close()

    async def health(self, timeout: float) -> dict[str, str]:
        """Each backend's gRPC health (``SERVING``, ``NOT_SERVING``, or the call's error code name).

        Each check names its service (``scribe.v1.Ingest``, ``scribe.v1.Results``: the services
        report health per service name, and so does the embedded front door for its backends) and
        carries ``x-scribe-upstream: ingest|results``, which the chart's Envoy routes health by.
        """

        async def one(channel: grpc.aio.Channel, upstream: str, service: str) -> str:
            try:
                reply = await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=timeout,
                    metadata=[("x-scribe-upstream", upstream)],
                )
            except grpc.RpcError as exc:
                return exc.code().name if hasattr(exc, "code") else "UNKNOWN"
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        ingest, results = await asyncio.gather(
            one(self.ingest_channel, "ingest", "scribe.v1.Ingest"),
            one(self.results_channel, "results", "scribe.v1.Results"),
        )
        return {"ingest": ingest, "results": results}

    async def create_job(
        self,
        spec: jobs_pb2.JobSpec,
        chunks: AsyncIterator[bytes],
        metadata: list[tuple[str, str]],
        deadline: Deadline,
    ) -> jobs_pb2.Job:
        """Ingest.CreateJob: the spec, then the audio as it is read.

        Raises:
            grpc.RpcError: the platform refused the job (mapped by scribe_http_gateway.errors).
        """

        async def requests() -> AsyncIterator[ingest_pb2.CreateJobRequest]:
            yield ingest_pb2.CreateJobRequest(spec=spec)
            async for chunk in chunks:
                yield ingest_pb2.CreateJobRequest(audio=chunk)

        reply = await self.ingest.CreateJob(requests(), metadata=metadata, timeout=deadline.left())
        return reply.job

    async def wait_terminal(self, job_id: str, metadata: list[tuple[str, str]], deadline: Deadline) -> jobs_pb2.Job:
        """Results.WatchJob until the job is COMPLETED, FAILED or CANCELLED; returns that record.

        A stream that ends early (a Results instance stopping) is opened again while time is left.
        """
        while True:
            last: jobs_pb2.Job | None = None
            call = self.results.WatchJob(
                results_pb2.WatchJobRequest(job_id=job_id), metadata=metadata, timeout=deadline.left()
            )
            try:
                async for update in call:
                    last = update.job
                    if last.state in TERMINAL:
                        return last
            except grpc.RpcError as exc:
                if not (hasattr(exc, "code") and exc.code() == grpc.StatusCode.UNAVAILABLE):
                    raise
                log.info("watch interrupted; watching again", extra={"job_id": job_id})
            finally:
                call.cancel()
            if last is not None and last.state in TERMINAL:
                return last
            await asyncio.sleep(min(0.5, deadline.left()))

    async def transcript(
        self, job_id: str, metadata: list[tuple[str, str]], deadline: Deadline
    ) -> transcript_pb2.Transcript:
        """The job's final transcript (Results.GetTranscript, JSON format)."""
        reply = await self.results.GetTranscript(
            results_pb2.GetTranscriptRequest(job_id=job_id, format=transcript_pb2.TRANSCRIPT_FORMAT_JSON),
            metadata=metadata,
            timeout=deadline.left(),
        )
        return transcript_from_json(reply.content)

    async def rendered(
        self, job_id: str, fmt: transcript_pb2.TranscriptFormat.ValueType, metadata: list[tuple[str, str]],
        deadline: Deadline,
    ) -> str:
        """The platform's own rendering of the transcript (SRT, VTT, ...), as text."""
        reply = await self.results.GetTranscript(
            results_pb2.GetTranscriptRequest(job_id=job_id, format=fmt), metadata=metadata, timeout=deadline.left()
        )
        return bytes(reply.content).decode("utf-8")

    async def cancel_quietly(self, job_id: str, metadata: list[tuple[str, str]]) -> None:
        """Best-effort Results.CancelJob (the caller went away or ran out of time); never raises."""
        with contextlib.suppress(grpc.RpcError, asyncio.CancelledError):
            await self.results.CancelJob(results_pb2.CancelJobRequest(job_id=job_id), metadata=metadata, timeout=5)
            log.info("job cancelled: the HTTP request ended first", extra={"job_id": job_id})

    async def workers(self, metadata: list[tuple[str, str]], timeout: float) -> list[Any]:
        """Live worker profiles (Results.ListWorkers)."""
        reply = await self.results.ListWorkers(results_pb2.ListWorkersRequest(), metadata=metadata, timeout=timeout)
        return list(reply.workers)
