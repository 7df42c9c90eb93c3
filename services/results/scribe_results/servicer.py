"""scribe.v1.Results: job state, progress, queue position and ETA, transcripts, cancel, delete.

Queue position and ETA are computed at read time from the pool's counters and the job's ticket
(scribe_libs.queue: a few reads, whatever the queue's length) and the pool's measured real-time
factor (the live worker registry, scribe_libs.registry), not stored values.

ListJobs pages are bounded in count (``page_size``, at most 1000) and in bytes (``MAX_PAGE_BYTES``):
a page stops before the job that would take it past the byte bound (a page always holds at least
one job), and ``next_page_token`` continues from there. gRPC's default 4 MiB message limit is
never reached, whatever the filenames, labels or number of owners.

WatchJob re-checks the caller's API key on every poll (the key file is re-read at most once a
second); a key removed from the file ends the stream with UNAUTHENTICATED ``KEY_REVOKED``.
"""

from __future__ import annotations

import logging
import re
import time

import grpc
import nats.errors

from scribe.v1 import jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
from scribe_libs import bus as busmod
from scribe_libs import jobindex
from scribe_libs.auth import KeyRing, can_see, check_not_revoked, current_principal
from scribe_libs.errors import FailedPrecondition, InvalidArgument
from scribe_libs.formats import content_type, format_name, transcript_from_json
from scribe_libs.jobs import (
    AUDIO_BUCKET,
    RESULTS_BUCKET,
    JobNotFound,
    JobStore,
    audio_key,
    is_terminal,
    raw_transcript_key,
    state_name,
    transcript_key,
)
from scribe_libs.objectstore import ObjectNotFound, ObjectStore, open_store
from scribe_libs.queue import DEFAULT_RTF, PoolLedger, eta_queued, eta_running, queue_view
from scribe_libs.registry import WorkerRegistry
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_results import glossaries
from scribe_results.config import Settings
from scribe_results.janitor import Janitor
from scribe_results.sampler import QueueSampler

log = logging.getLogger(__name__)

S = jobs_pb2.JobState
_MAX_PAGE = 1000
#: A ListJobs call reads at most this many index entries per job of page_size, plus _SCAN_EXTRA.
_SCAN_PER_JOB = 10
_SCAN_EXTRA = 100
#: Bytes of jobs one ListJobs page carries at most (a quarter of gRPC's 4 MiB default message limit).
MAX_PAGE_BYTES = 1024 * 1024
#: What a job id may be: a NATS KV key (nats-py's ``^[-/_=\.a-zA-Z0-9]+$``, no leading or trailing
#: dot), at most 256 bytes (ids are ``new_job_id()``'s ~30 characters).
_JOB_ID = re.compile(r"(?!\.)[-/_=.a-zA-Z0-9]{1,256}(?<!\.)")


class ResultsServicer(results_pb2_grpc.ResultsServicer):
    """Implements scribe.v1.Results."""

    def __init__(
        self, settings: Settings, bus: busmod.Bus, store: ObjectStore, registry: WorkerRegistry | None = None
    ):
        self.settings = settings
        self.bus = bus
        self.registry = registry or WorkerRegistry(bus.workers, bus)
        self.ledger = PoolLedger(bus)
        self.store = store
        self.jobs = JobStore(bus)
        self.keyring = KeyRing(settings.auth) if settings.auth.enabled else None

    def _check_key(self) -> None:
        """Raise UNAUTHENTICATED ``KEY_REVOKED`` when the caller's key left the key file since the call began."""
        check_not_revoked(self.keyring, "watch")

    async def _visible(self, job_id: str) -> jobs_pb2.Job:
        """The job if the caller may see it; another caller's job is NOT_FOUND, as if absent.

        An id that cannot be a key of the jobs bucket (``*``, ``>``, spaces, over 256 bytes:
        nats-py raises InvalidKeyError, which was an INTERNAL) is NOT_FOUND as well: no job has it.

        Raises:
            InvalidArgument: ``JOB_ID_REQUIRED`` for an empty id (field ``job_id``): a request that
                names no job is malformed, not a search that found nothing (AIP-193).
            JobNotFound: no such job visible to the caller.
        """
        if not job_id:
            raise InvalidArgument("JOB_ID_REQUIRED", "job_id is required", field="job_id")
        if not _JOB_ID.fullmatch(job_id):
            raise JobNotFound(job_id[:256])
        job = await self.jobs.get(job_id)
        if not can_see(current_principal(), job.owner):
            raise JobNotFound(job_id)
        return job

    async def decorate(self, job: jobs_pb2.Job) -> jobs_pb2.Job:
        """Fill the read-time fields: queue_position and eta_seconds."""
        totals = self.registry.totals(job.pool)
        if job.state == S.JOB_STATE_QUEUED:
            ticket = job.queue_ticket if job.HasField("queue_ticket") else None
            view = await queue_view(self.bus, self.ledger, job.pool, ticket)
            job.queue_position = view.position
            job.eta_seconds = eta_queued(view, job.audio_duration, totals.rtf(DEFAULT_RTF), totals.live)
        elif job.state == S.JOB_STATE_RUNNING:
            job.eta_seconds = eta_running(job, time.time(), totals.rtf(DEFAULT_RTF))
        return job

    async def GetJob(  # noqa: N802 - gRPC method name
        self, request: results_pb2.GetJobRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.GetJobResponse:
        """The job with its queue position and ETA."""
        job = await self._visible(request.job_id)
        return results_pb2.GetJobResponse(job=await self.decorate(job))

    async def ListJobs(  # noqa: N802 - gRPC method name
        self, request: results_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.ListJobsResponse:
        """Jobs newest first from the job index (scribe_libs.jobindex), filtered, in pages.

        Cost: a page reads at most ``10 * page_size + 100`` index entries plus one record (KV
        get) per entry that passes the create-time bounds, whatever the number of jobs. When that
        budget runs out first, the page holds fewer than ``page_size`` jobs (even none) and
        ``next_page_token`` is set (Google AIP-158): callers page until the token is empty. A page
        also stops before the job that would take it past MAX_PAGE_BYTES.

        A caller sees its owner's jobs (its index subject); an admin sees every owner's (the
        stream walked backwards). Filters: ``state``, ``labels`` (every pair must be in the job's
        ``spec.labels``), and create time in ``[create_time_after, create_time_before)``. Jobs
        created before the index existed are not listed (no backfill; they expire with the
        retention period). Entries whose record is gone (deleted, expired) are skipped.

        Raises:
            InvalidArgument: ``INVALID_PAGE_TOKEN`` for a token that is not one this method returned
                for this caller (owner) and these filters; ``INVALID_TIMESTAMP`` for a bound
                outside the Timestamp range (years 1..9999).
        """
        size = min(request.page_size or 100, _MAX_PAGE)
        principal = current_principal()
        labels = dict(request.labels)
        bounds: dict[str, int | None] = {}
        for name in ("create_time_after", "create_time_before"):
            try:
                bounds[name] = getattr(request, name).ToNanoseconds() if request.HasField(name) else None
            except ValueError as exc:  # outside 0001-01-01 .. 9999-12-31 or bad nanos
                raise InvalidArgument("INVALID_TIMESTAMP", f"{name} is not a valid timestamp", field=name) from exc
        after_ns, before_ns = bounds["create_time_after"], bounds["create_time_before"]
        digest = jobindex.filter_digest(
            "list-jobs/1", principal.owner, principal.admin, int(request.state), sorted(labels.items()),
            after_ns, before_ns,
        )
        start = 0
        if request.page_token:
            try:
                start = jobindex.decode_page_token(request.page_token, digest)
            except ValueError as exc:
                raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token") from exc
        if before_ns is not None and (before_ns <= 0 or (after_ns is not None and after_ns >= before_ns)):
            return results_pb2.ListJobsResponse()  # an empty range
        # A bound in the future needs no seek (and a far one would not fit an RFC 3339 time).
        seek_before = before_ns if before_ns is not None and before_ns < time.time_ns() else 0
        page: list[jobs_pb2.Job] = []
        page_bytes = 0
        next_seq = 0
        scan = self.jobs.index.scan(
            None if principal.admin else principal.owner, start, seek_before, max(after_ns or 0, 0),
            budget=_SCAN_PER_JOB * size + _SCAN_EXTRA,
        )
        try:
            async for item in scan:
                if isinstance(item, jobindex.Resume):
                    next_seq = item.seq
                    break
                created = item.create_ns
                if (before_ns is not None and created >= before_ns) or (after_ns is not None and created < after_ns):
                    continue
                try:
                    job = await self.jobs.get(item.entry.job_id)
                except JobNotFound:
                    continue  # deleted or expired
                if job.create_time.ToNanoseconds() != created or not can_see(principal, job.owner):
                    continue  # an entry of a creation that failed (the id's record is another's)
                if request.state and job.state != request.state:
                    continue
                if any(job.spec.labels.get(key) != value for key, value in labels.items()):
                    continue
                job_bytes = job.ByteSize() + 8  # field tag and length prefix
                if page and page_bytes + job_bytes > MAX_PAGE_BYTES:
                    next_seq = item.seq
                    break
                page.append(job)
                page_bytes += job_bytes
                if len(page) >= size:
                    next_seq = item.next_seq
                    break
        except jobindex.ForeignStart as exc:
            raise InvalidArgument("INVALID_PAGE_TOKEN", "page_token is not valid", field="page_token") from exc
        finally:
            await scan.aclose()
        token = jobindex.encode_page_token(next_seq, digest) if next_seq else ""
        return results_pb2.ListJobsResponse(jobs=page, next_page_token=token)

    async def WatchJob(  # noqa: N802 - gRPC method name
        self, request: results_pb2.WatchJobRequest, context: grpc.aio.ServicerContext
    ):  # noqa: ANN201 - async generator of WatchJobResponse
        """Stream the job now, then on every change of state/progress/position; end after a terminal state."""
        job = await self.decorate(await self._visible(request.job_id))
        yield results_pb2.WatchJobResponse(job=job)
        if is_terminal(job):
            return
        last = _fingerprint(job)
        watcher = await self.bus.jobs.watch(request.job_id)
        try:
            while True:
                try:
                    entry = await watcher.updates(timeout=self.settings.watch_poll_seconds)
                except nats.errors.TimeoutError:
                    entry = None
                if entry is not None and entry.operation in ("DEL", "PURGE"):
                    raise JobNotFound(request.job_id)
                self._check_key()
                job = await self.decorate(await self._visible(request.job_id))
                current = _fingerprint(job)
                if current != last:
                    last = current
                    yield results_pb2.WatchJobResponse(job=job)
                if is_terminal(job):
                    return
        finally:
            await watcher.stop()

    async def GetTranscript(  # noqa: N802 - gRPC method name
        self, request: results_pb2.GetTranscriptRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.GetTranscriptResponse:
        """The final (or, with ``raw``, the as-decoded) transcript in the asked format, JSON by default.

        For JSON (and an unspecified format) the response also carries the typed ``Transcript``
        message, so grpcurl and generated clients read segments without parsing bytes.

        ``content_type`` is the format's from :data:`scribe_libs.formats.CONTENT_TYPES`
        (``; charset=utf-8`` on every one).

        Raises:
            JobNotFound: no such job (or another owner's, or its transcript expired).
            InvalidArgument: ``UNKNOWN_FORMAT``.
            FailedPrecondition: ``JOB_NOT_COMPLETED``.
        """
        job = await self._visible(request.job_id)
        fmt = request.format or transcript_pb2.TRANSCRIPT_FORMAT_JSON
        extension = format_name(fmt)  # UNKNOWN_FORMAT is checked before the job's state
        if job.state != S.JOB_STATE_COMPLETED:
            raise FailedPrecondition(
                "JOB_NOT_COMPLETED",
                f"job {job.job_id} is {state_name(job.state)}"
                + (f" ({job.error_reason}: {job.error_message})" if job.error_reason else ""),
                {"state": state_name(job.state)},
            )
        # raw: the as-decoded text (redacted for a redacted job), written by postprocess as
        # <job_id>/raw.<ext> beside the transcriber's raw.json.
        key = raw_transcript_key(job.job_id, extension) if request.raw else transcript_key(job.job_id, extension)
        try:
            content = await self.store.get_bytes(RESULTS_BUCKET, key)
        except ObjectNotFound as exc:
            raise JobNotFound(job.job_id) from exc  # expired by the bucket's lifecycle
        response = results_pb2.GetTranscriptResponse(format=fmt, content_type=content_type(fmt), content=content)
        if fmt == transcript_pb2.TRANSCRIPT_FORMAT_JSON:
            response.transcript.CopyFrom(transcript_from_json(content))
        return response

    async def CancelJob(  # noqa: N802 - gRPC method name
        self, request: results_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.CancelJobResponse:
        """QUEUED: cancelled now, its message removed from the queue. RUNNING: the worker stops at the next chunk."""
        job = await self._visible(request.job_id)
        if is_terminal(job):
            raise FailedPrecondition(
                "JOB_TERMINAL", f"job {job.job_id} is already {state_name(job.state)}", {"state": state_name(job.state)}
            )

        def request_cancel(record: jobs_pb2.Job) -> bool:
            if is_terminal(record):
                return False
            record.cancel_requested = True
            return True

        job = await self.jobs.update(request.job_id, request_cancel, event="cancel_requested")
        if job.state == S.JOB_STATE_QUEUED:
            job = await self._cancel_queued(job)
        return results_pb2.CancelJobResponse(job=await self.decorate(job))

    async def _cancel_queued(self, job: jobs_pb2.Job) -> jobs_pb2.Job:
        """Remove the queued message and the audio, mark CANCELLED (unless a worker took it meanwhile)."""

        def cancel(record: jobs_pb2.Job) -> None:
            record.audio_key = ""

        try:
            job = await self.jobs.transition(job.job_id, S.JOB_STATE_CANCELLED, cancel)
        except FailedPrecondition:
            return await self.jobs.get(job.job_id)  # it started running: the worker stops it
        if job.stream_seq:
            try:
                await self.bus.js.delete_msg(busmod.JOBS_STREAM, job.stream_seq)
            except Exception:  # noqa: BLE001 - already delivered; the worker acks it on sight
                log.info("queued message already gone", extra={"job_id": job.job_id})
        await self.store.delete(AUDIO_BUCKET, audio_key(job.job_id))
        return job

    async def DeleteJob(  # noqa: N802 - gRPC method name
        self, request: results_pb2.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.DeleteJobResponse:
        """Remove a terminal job's record and every object it has, now."""
        job = await self._visible(request.job_id)
        if not is_terminal(job):
            raise FailedPrecondition(
                "JOB_NOT_TERMINAL", f"job {job.job_id} is {state_name(job.state)}; cancel it first",
                {"state": state_name(job.state)},
            )
        await self.store.delete_prefix(RESULTS_BUCKET, f"{job.job_id}/")
        await self.store.delete_prefix(AUDIO_BUCKET, f"{job.job_id}/")
        await self.jobs.delete(job.job_id)
        return results_pb2.DeleteJobResponse()

    async def ListWorkers(  # noqa: N802 - gRPC method name
        self, request: results_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> results_pb2.ListWorkersResponse:
        """Live worker profiles, by pool then worker id."""
        await self.registry.sync()
        profiles = self.registry.profiles(request.pool or None)
        profiles.sort(key=lambda p: (p.pool, p.worker_id))
        return results_pb2.ListWorkersResponse(workers=profiles)


def _fingerprint(job: jobs_pb2.Job) -> tuple:
    return (job.state, round(job.progress, 3), job.queue_position, job.cancel_requested)


async def create_server(settings: Settings) -> GrpcServer:
    """Connect, start the gRPC server, report SERVING."""
    bus = await busmod.connect(settings.nats, "scribe-results", retention_seconds=settings.retention_days * 86400)
    store = open_store(settings.store)
    await store.ensure_bucket(RESULTS_BUCKET, expiry_days=settings.retention_days)
    await store.ensure_bucket(AUDIO_BUCKET)
    registry = await WorkerRegistry(bus.workers, bus).start()
    servicer = ResultsServicer(settings, bus, store, registry)
    server = await start_grpc_server(
        settings,
        lambda s: (
            results_pb2_grpc.add_ResultsServicer_to_server(servicer, s),
            glossaries.add_to_server(glossaries.GlossaryStore(bus.glossaries), s),
        ),
        [results_pb2.DESCRIPTOR.services_by_name["Results"].full_name, glossaries.SERVICE_NAME],
    )
    janitor = Janitor(bus, store, settings.sweep_interval_seconds)
    await janitor.start()
    sampler = QueueSampler(bus, settings.metrics_sample_seconds, servicer.ledger)
    sampler.start()

    async def stop() -> None:
        await sampler.stop()
        await registry.stop()
        await janitor.stop()
        await bus.close()

    server.on_stop.append(stop)
    await server.set_serving(True)
    return server

