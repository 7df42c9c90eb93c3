"""The synchronous client: :class:`Client`."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast

import grpc

from scribe_client import _config as c
from scribe_client._stubs import (
    ingest_pb2_grpc,
    jobs_pb2,
    results_pb2,
    results_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
)
from scribe_client.errors import JobCancelledError, JobFailedError, ScribeError, UnavailableError, from_rpc_error

T = TypeVar("T")


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt`` (1-based): 0.2 s doubling to 5 s, jittered to 50-100 %."""
    return float(min(0.2 * 2 ** (attempt - 1), 5.0) * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not crypto


class Client:
    """A synchronous client of scribe's gRPC API (Ingest, Results, StreamGateway).

    Args:
        address: ``host:port`` of the front door (the embedded stack's 127.0.0.1:50051, or the
            chart's Envoy); None: ``$SCRIBE_ADDRESS``, else ``127.0.0.1:50051``.
        api_key: Sent as ``x-api-key`` metadata on every call; None: ``$SCRIBE_API_KEY``; ``""``: none.
        tls: Use TLS (system roots unless ``ca_cert``).
        ca_cert: PEM root certificate(s), bytes or a file path; implies ``tls``.
        timeout: Deadline of each unary call, seconds (None: none). Uploads, watches and streams
            have no deadline of their own; :meth:`transcribe` takes one for the whole job.
        addresses: Per-service addresses overriding ``address``, keyed ``"Ingest"``,
            ``"Results"``, ``"StreamGateway"`` (tests, or a deployment without a front door).
        max_attempts: Attempts of a call that fails UNAVAILABLE where retrying is safe (at most 5
            for the calls gRPC retries itself).
        channel_options: Extra gRPC channel arguments, overriding the client's (see
            :func:`scribe_client._config.channel_options`).

    Use as a context manager, or call :meth:`close`.
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
        self._channels: dict[str, grpc.Channel] = {}

    # --- plumbing -------------------------------------------------------------------------------

    def _channel(self, service: str) -> grpc.Channel:
        address = self.addresses[service]
        if address not in self._channels:
            if self._credentials is None:
                self._channels[address] = grpc.insecure_channel(address, options=self._options)
            else:
                self._channels[address] = grpc.secure_channel(address, self._credentials, options=self._options)
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

    def _unary(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- batch ----------------------------------------------------------------------------------

    def submit(self, source: c.Source, config: Any = None, **fields: Any) -> Any:
        """Upload ``source`` as a batch job (Ingest.CreateJob); returns the ``scribe.v1.Job`` as created.

        Args:
            source: A file path, the audio bytes (any container the server decodes: wav, flac,
                mp3, ogg, m4a, ...), or ``s3://bucket/key`` of audio already in object storage.
            config: A ``scribe.v1.RecognitionConfig`` or a dict of its fields.
            **fields: RecognitionConfig fields (``language="ko"``, ``model="base"``,
                ``word_timestamps=True``, ...) or JobSpec fields (``labels``, ``request_id``,
                ``retain_audio``, ``glossary_ids``, ``redact``, ``filename``).

        Retries: the spec always carries a ``request_id`` (a random one unless given; ``""``
        sends none), which makes CreateJob idempotent on the server; an UNAVAILABLE failure is
        retried up to ``max_attempts`` times by resending the whole upload with the same id, so a
        job is never created twice. With ``request_id=""`` nothing is retried.

        Raises:
            FileNotFoundError: ``source`` is a path that is not a file.
            TypeError: an unknown field.
            InvalidArgumentError: bad config, empty or undecodable audio.
            ResourceExhaustedError: audio too large or long, queue full (``retry_after``).
            FailedPreconditionError: no pool can serve the model.
            NotFoundError: the ``source_uri`` object does not exist.
            UnauthenticatedError, PermissionDeniedError: the API key.
            UnavailableError: still unavailable after the retries.
        """
        job = self._create(c.upload(source, config, fields))
        return job

    def _create(self, upload: c.Upload) -> Any:
        attempts = self.max_attempts if upload.spec.request_id else 1
        for attempt in range(1, attempts + 1):
            try:
                reply = self._ingest.CreateJob(upload.requests(), metadata=self._metadata)
                return reply.job
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == attempts:
                    raise from_rpc_error(exc) from None
            time.sleep(backoff(attempt))
        raise AssertionError("unreachable")

    def get(self, job_id: str) -> Any:
        """The job's record now (``scribe.v1.Job``, with queue position and ETA in seconds).

        Raises:
            NotFoundError: no such job (or another owner's).
            InvalidArgumentError: an empty or malformed id.
        """
        return self._unary(self._results.GetJob, results_pb2.GetJobRequest(job_id=job_id)).job

    def watch(self, job_id: str, timeout: float | None = None) -> Iterator[Any]:
        """The job's records as it changes (Results.WatchJob): the current one first, ending after a terminal one.

        A watch broken by UNAVAILABLE (a restarted Results instance, a dropped connection) is
        resumed, up to ``max_attempts`` times in a row; a record equal to the last one yielded is
        not yielded again.

        Args:
            job_id: The job.
            timeout: Seconds for the whole watch (None: no limit).

        Raises:
            NotFoundError: no such job.
            DeadlineExceededError: ``timeout`` passed first.
            UnavailableError: the watch could not be resumed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: Any = None
        failures = 0
        while True:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            call = self._results.WatchJob(
                results_pb2.WatchJobRequest(job_id=job_id), timeout=remaining, metadata=self._metadata
            )
            try:
                for update in call:
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
                time.sleep(backoff(failures))
            else:
                # The stream ended without a terminal record (the server went away cleanly): resume.
                failures += 1
                if failures >= self.max_attempts:
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE, "WATCH_ENDED", f"the watch of job {job_id} kept ending early"
                    )
            finally:
                call.cancel()

    def wait(self, job_id: str, timeout: float | None = None) -> Any:
        """Block until the job is terminal; returns its final ``scribe.v1.Job`` (any terminal state).

        Raises:
            As :meth:`watch`.
        """
        last = None
        for job in self.watch(job_id, timeout=timeout):
            last = job
        return last

    def transcribe(
        self, source: c.Source, config: Any = None, *, timeout: float | None = None, **fields: Any
    ) -> c.Transcript:
        """Upload, wait, fetch: the finished :class:`~scribe_client.Transcript` of ``source``.

        Args:
            source: A file path, the audio bytes or an ``s3://bucket/key`` URI (see :meth:`submit`).
            config: A ``scribe.v1.RecognitionConfig`` or a dict of its fields.
            timeout: Seconds to wait for the job after the upload (None: no limit).
            **fields: RecognitionConfig or JobSpec fields, as :meth:`submit`.

        Raises:
            JobFailedError: the job ended FAILED (``reason``/``message`` are its error_reason and
                error_message, ``job`` its record).
            JobCancelledError: the job was cancelled.
            ScribeError: any error of :meth:`submit`, :meth:`watch` or GetTranscript.
        """
        job = self.submit(source, config, **fields)
        final = self.wait(job.job_id, timeout=timeout)
        _raise_unless_completed(final)
        return c.Transcript(self._transcript_message(job.job_id), final)

    def cancel(self, job_id: str) -> Any:
        """Cancel a QUEUED or RUNNING job; returns its record (CANCELLED, or cancel_requested while running).

        Raises:
            NotFoundError: no such job.
            FailedPreconditionError: ``JOB_TERMINAL``, the job already ended.
        """
        return self._unary(self._results.CancelJob, results_pb2.CancelJobRequest(job_id=job_id)).job

    def delete(self, job_id: str) -> None:
        """Delete a terminal job's record and every object now.

        Raises:
            NotFoundError: no such job.
            FailedPreconditionError: the job is not terminal.
        """
        self._unary(self._results.DeleteJob, results_pb2.DeleteJobRequest(job_id=job_id))

    def list_jobs(
        self,
        state: int | str | None = None,
        labels: Mapping[str, str] | None = None,
        created_after: Any = None,
        created_before: Any = None,
        page_size: int = 100,
    ) -> Iterator[Any]:
        """The caller's jobs (every owner's for an admin key), newest first, fetching page after page.

        Args:
            state: Only this ``JobState`` (value or name, e.g. ``"COMPLETED"``).
            labels: Only jobs whose labels hold every pair.
            created_after: Only jobs created at or after this ``datetime`` (or Timestamp).
            created_before: Only jobs created before it.
            page_size: Jobs per call (the server caps it at 1000; a page may hold fewer).

        Raises:
            InvalidArgumentError: e.g. ``INVALID_TIMESTAMP``.
        """
        request = list_request(state, labels, created_after, created_before, page_size)
        while True:
            reply = self._unary(self._results.ListJobs, request)
            yield from reply.jobs
            if not reply.next_page_token:
                return
            request.page_token = reply.next_page_token

    def get_transcript(self, job_id: str, format: str | int = "txt", raw: bool = False) -> str:  # noqa: A002
        """The rendered transcript: ``format`` ``"txt"``, ``"srt"``, ``"vtt"`` or ``"json"`` (UTF-8 text).

        Args:
            job_id: A COMPLETED job.
            format: Format name or ``TranscriptFormat`` value.
            raw: The transcript as decoded, before glossaries, rules and redaction.

        Raises:
            NotFoundError: no such job, or its transcript expired.
            FailedPreconditionError: ``JOB_NOT_COMPLETED``.
            ValueError: an unknown format name.
        """
        request = results_pb2.GetTranscriptRequest(job_id=job_id, format=c.transcript_format(format), raw=raw)
        return self._unary(self._results.GetTranscript, request).content.decode("utf-8")  # type: ignore[no-any-return]

    def transcript(self, job_id: str, raw: bool = False) -> c.Transcript:
        """The typed :class:`~scribe_client.Transcript` of a COMPLETED job.

        Raises:
            As :meth:`get_transcript`.
        """
        return c.Transcript(self._transcript_message(job_id, raw))

    def _transcript_message(self, job_id: str, raw: bool = False) -> Any:
        request = results_pb2.GetTranscriptRequest(job_id=job_id, format=c.transcript_format("json"), raw=raw)
        return c.parse_transcript(self._unary(self._results.GetTranscript, request))

    def workers(self, pool: str = "") -> list[Any]:
        """Live worker profiles (``scribe.v1.WorkerProfile``), of one pool or all."""
        reply = self._unary(self._results.ListWorkers, results_pb2.ListWorkersRequest(pool=pool))
        return list(reply.workers)

    # --- streaming ------------------------------------------------------------------------------

    def stream(
        self, audio: Iterable[bytes | Any], config: Any = None, *, timeout: float | None = None, **fields: Any
    ) -> Iterator[Any]:
        """Live recognition (StreamGateway.StreamingRecognize): results as the audio arrives.

        Sends the ``StreamingConfig`` first, then each item of ``audio``: raw samples in the
        configured encoding (bytes, any length), or a ``StreamingRecognizeRequest`` (e.g. a
        control message). The request side is half-closed when ``audio`` ends; the responses
        end with one ``StreamSummary``.

        Args:
            audio: Chunks of raw samples (e.g. 100 ms each) as they are captured.
            config: A ``scribe.v1.StreamingConfig`` or dict; unset encoding/rate mean LINEAR16 16 kHz.
            timeout: Seconds for the whole session (None: the gateway's limit).
            **fields: StreamingConfig fields, e.g. ``model="tiny.en"``, ``interim_results=True``,
                ``audio_channel_count=2``, ``channel_roles=["agent", "customer"]``.

        Yields:
            ``scribe.v1.StreamingRecognizeResponse``: a ``result`` (interim or final), a
            ``speech_event``, or the last, ``summary``.

        Raises:
            InvalidArgumentError: a bad config (``field_violations`` names the field).
            ResourceExhaustedError: too many sessions (``retry_after``), or ``SESSION_TOO_LONG``.
            FailedPreconditionError: no worker can decode the model.
        """
        first = streaming_pb2.StreamingRecognizeRequest(config=c.streaming_config(config, fields))

        def requests() -> Iterator[Any]:
            yield first
            for item in audio:
                yield c.stream_request(item)

        call = self._gateway.StreamingRecognize(requests(), timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            call.cancel()


def _raise_unless_completed(job: Any) -> None:
    if job is None:
        raise ScribeError(None, "NO_UPDATES", "the watch ended without any record of the job")
    if job.state == jobs_pb2.JOB_STATE_FAILED:
        raise JobFailedError(job)
    if job.state == jobs_pb2.JOB_STATE_CANCELLED:
        raise JobCancelledError(job)


def list_request(
    state: int | str | None, labels: Mapping[str, str] | None, after: Any, before: Any, page_size: int
) -> Any:
    """The first ``ListJobsRequest`` of :meth:`Client.list_jobs`.

    Raises:
        ValueError: an unknown state name or value.
    """
    request = results_pb2.ListJobsRequest(page_size=page_size)
    if isinstance(state, str):
        name = state.upper()
        full = name if name.startswith("JOB_STATE_") else f"JOB_STATE_{name}"
        request.state = cast("jobs_pb2.JobState", jobs_pb2.JobState.Value(full))
    elif state:
        jobs_pb2.JobState.Name(state)  # ValueError for a value the contract does not have
        request.state = cast("jobs_pb2.JobState", state)
    if labels:
        request.labels.update(labels)
    for field, value in (("create_time_after", after), ("create_time_before", before)):
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            getattr(request, field).FromDatetime(value)
        else:
            getattr(request, field).CopyFrom(value)
    return request


__all__ = ["Client", "backoff", "list_request"]
