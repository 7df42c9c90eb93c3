"""The asyncio client: :class:`AsyncClient` (grpc.aio), the same API as :class:`scribe_client.Client`."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from scribe_client import _config as c
from scribe_client._stubs import (
    ingest_pb2,
    ingest_pb2_grpc,
    results_pb2,
    results_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
)
from scribe_client.client import _raise_unless_completed, backoff, list_request
from scribe_client.errors import UnavailableError, from_rpc_error

T = TypeVar("T")


class AsyncClient:
    """An asyncio client of scribe's gRPC API; arguments, retries and errors as :class:`~scribe_client.Client`.

    Channels open on first use, on the running event loop; use ``async with`` or ``await close()``.
    """

    def __init__(
        self,
        address: str | None = None,
        api_key: str | None = None,
        *,
        tls: bool = False,
        ca_cert: str | os.PathLike[str] | bytes | None = None,
        timeout: float | None = 30.0,
        addresses: Mapping[str, str] | None = None,
        max_attempts: int = 5,
        channel_options: Sequence[tuple[str, Any]] = (),
    ):
        self.addresses = c.resolve_addresses(address, addresses)
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self._metadata = c.api_key_metadata(api_key)
        self._options = c.channel_options(self.max_attempts, channel_options)
        self._credentials = c.credentials(ca_cert) if (tls or ca_cert is not None) else None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, service: str) -> grpc.aio.Channel:
        address = self.addresses[service]
        if address not in self._channels:
            if self._credentials is None:
                self._channels[address] = grpc.aio.insecure_channel(address, options=self._options)
            else:
                self._channels[address] = grpc.aio.secure_channel(address, self._credentials, options=self._options)
        return self._channels[address]

    @property
    def _ingest(self) -> Any:
        return ingest_pb2_grpc.IngestStub(self._channel("Ingest"))

    @property
    def _results(self) -> Any:
        return results_pb2_grpc.ResultsStub(self._channel("Results"))

    @property
    def _gateway(self) -> Any:
        return streaming_pb2_grpc.StreamGatewayStub(self._channel("StreamGateway"))

    async def _unary(self, method: Callable[..., Awaitable[T]], request: Any) -> T:
        try:
            return await method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            await channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- batch ----------------------------------------------------------------------------------

    async def submit(self, source: c.Source, config: Any = None, **fields: Any) -> Any:
        """Upload ``source`` as a batch job; see :meth:`scribe_client.Client.submit` (same retries, errors)."""
        upload = c.upload(source, config, fields)
        attempts = self.max_attempts if upload.spec.request_id else 1
        for attempt in range(1, attempts + 1):
            try:
                reply = await self._ingest.CreateJob(_requests(upload), metadata=self._metadata)
                return reply.job
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                    raise from_rpc_error(exc) from None
            await asyncio.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    async def get(self, job_id: str) -> Any:
        """The job's record now; see :meth:`scribe_client.Client.get`."""
        return (await self._unary(self._results.GetJob, results_pb2.GetJobRequest(job_id=job_id))).job

    async def watch(self, job_id: str, timeout: float | None = None) -> AsyncIterator[Any]:
        """The job's records as it changes, ending after a terminal one; see :meth:`scribe_client.Client.watch`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        failures = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._results.WatchJob(
                results_pb2.WatchJobRequest(job_id=job_id), timeout=remaining, metadata=self._metadata
            )
            try:
                async for update in call:
                    failures = 0
                    if last is not None and update.job == last:
                        continue
                    last = update.job
                    yield update.job
                    if c.is_terminal(update.job):
                        return
            except grpc.RpcError as exc:
                failures += 1
                if exc.code() != grpc.StatusCode.UNAVAILABLE or failures >= self.max_attempts:
                    raise from_rpc_error(exc) from None
                await asyncio.sleep(backoff(failures))
            else:
                failures += 1
                if failures >= self.max_attempts:
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE, "WATCH_ENDED", f"the watch of job {job_id} kept ending early"
                    )
            finally:
                call.cancel()

    async def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait until the job is terminal; returns its final record."""
        last = None
        async for job in self.watch(job_id, timeout=timeout):
            last = job
        return last

    async def transcribe(
        self, source: c.Source, config: Any = None, *, timeout: float | None = None, **fields: Any
    ) -> c.Transcript:
        """Upload, wait, fetch; see :meth:`scribe_client.Client.transcribe` (same errors)."""
        job = await self.submit(source, config, **fields)
        final = await self.wait(job.job_id, timeout=timeout)
        _raise_unless_completed(final)
        return c.Transcript(await self._transcript_message(job.job_id), final)

    async def cancel(self, job_id: str) -> Any:
        """Cancel a QUEUED or RUNNING job; see :meth:`scribe_client.Client.cancel`."""
        return (await self._unary(self._results.CancelJob, results_pb2.CancelJobRequest(job_id=job_id))).job

    async def delete(self, job_id: str) -> None:
        """Delete a terminal job now; see :meth:`scribe_client.Client.delete`."""
        await self._unary(self._results.DeleteJob, results_pb2.DeleteJobRequest(job_id=job_id))

    async def list_jobs(
        self,
        state: int | str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: Any = None,
        created_before: Any = None,
        page_size: int = 100,
    ) -> AsyncIterator[Any]:
        """The caller's jobs, newest first, page after page; see :meth:`scribe_client.Client.list_jobs`."""
        request = list_request(state, labels, created_after, created_before, page_size)
        while True:
            reply = await self._unary(self._results.ListJobs, request)
            for job in reply.jobs:
                yield job
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    async def get_transcript(self, job_id: str, format: str | int = "txt", raw: bool = False) -> str:  # noqa: A002
        """The rendered transcript as text; see :meth:`scribe_client.Client.get_transcript`."""
        request = results_pb2.GetTranscriptRequest(job_id=job_id, format=c.transcript_format(format), raw=raw)
        return (await self._unary(self._results.GetTranscript, request)).content.decode("utf-8")  # type: ignore[no-any-return]

    async def transcript(self, job_id: str, raw: bool = False) -> c.Transcript:
        """The typed transcript of a COMPLETED job."""
        return c.Transcript(await self._transcript_message(job_id, raw))

    async def _transcript_message(self, job_id: str, raw: bool = False) -> Any:
        request = results_pb2.GetTranscriptRequest(job_id=job_id, format=c.transcript_format("json"), raw=raw)
        return c.parse_transcript(await self._unary(self._results.GetTranscript, request))

    async def workers(self, pool: str = "") -> list[Any]:
        """Live worker profiles (``scribe.v1.WorkerProfile``)."""
        reply = await self._unary(self._results.ListWorkers, results_pb2.ListWorkersRequest(pool=pool))
        return list(reply.workers)

    # --- streaming ------------------------------------------------------------------------------

    async def stream(
        self,
        audio: AsyncIterable[bytes | Any] | Iterable[bytes | Any],
        config: Any = None,
        *,
        timeout: float | None = None,
        **fields: Any,
    ) -> AsyncIterator[Any]:
        """Live recognition; see :meth:`scribe_client.Client.stream`. ``audio`` may be async or not."""
        first = streaming_pb2.StreamingRecognizeRequest(config=c.streaming_config(config, fields))

        async def requests() -> AsyncIterator[Any]:
            yield first
            if isinstance(audio, AsyncIterable):
                async for item in audio:
                    yield c.stream_request(item)
            else:
                for item in audio:
                    yield c.stream_request(item)

        call = self._gateway.StreamingRecognize(requests(), timeout=timeout, metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()


async def _requests(upload: c.Upload) -> AsyncIterator[Any]:
    """The upload's requests, reading the file off the event loop."""
    yield ingest_pb2.CreateJobRequest(spec=upload.spec)
    if upload.path is None:
        for request in list(upload.requests())[1:] if upload.data is not None else ():
            yield request
        return
    f = await asyncio.to_thread(upload.path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(f.read, c.CHUNK_BYTES):
            yield ingest_pb2.CreateJobRequest(audio=chunk)
    finally:
        f.close()


__all__ = ["AsyncClient"]
