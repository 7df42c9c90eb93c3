"""Ingest.CreateJob: spool the upload, check it, store it, record the job, queue it on a pool.

Order of writes, so that a failure at any step leaves nothing half-written behind:

1. the upload is spooled to a temporary file while it streams in (size limit enforced per chunk),
   in a per-upload directory under ``<upload_dir>/scribe-ingest`` (:mod:`scribe_libs.tempdirs`:
   removed when the call ends, and whatever a killed instance left there is removed at start);
2. the audio is probed (decodable, duration limit);
3. the original goes to ``scribe-audio/<job_id>/original``;
4. the pool's ledger counts the job in (its queue ticket);
5. the TranscribeTask is published on ``scribe.jobs.<pool>``; JetStream's ack makes it durable;
6. the job record is created in ``scribe_jobs`` as QUEUED, once, complete with the message's
   stream sequence (CancelJob deletes the message by it). A worker that gets the task before the
   record exists waits for it (:meth:`scribe_libs.jobs.JobStore.get_published`); one whose
   record never comes (ingest stopped between 5 and 6) drops the task.

If 4, 5 or 6 fail, what was written is removed before the error is returned (the message, a
record a late failure may have left, the audio; the ledger counts the job out again).

Refusals before anything is stored (all INVALID_ARGUMENT unless noted):

- every string and repeated field of the spec over its limit (:mod:`scribe_libs.limits`):
  ``FIELD_TOO_LONG`` / ``TOO_MANY_VALUES`` naming the field and the limit;
- more than :data:`scribe_libs.limits.MAX_CHANNELS` channels: ``TOO_MANY_CHANNELS``;
- a file whose header states more audio than the bytes hold (a WAV cut short, an upload
  half-closed early): ``TRUNCATED_AUDIO`` with the seconds present and stated. Containers whose
  header cannot be checked against the bytes (FLAC, MP3, ...) are checked by the transcriber once
  decoded, and that job ends FAILED with the same reason;
- a stream that sends nothing for ``upload_idle_timeout_seconds`` (the spec, or the next audio
  chunk, or the half-close): DEADLINE_EXCEEDED ``UPLOAD_IDLE``; the spooled file is removed.
  DEADLINE_EXCEEDED rather than INVALID_ARGUMENT: nothing was wrong with what was sent, the
  server stopped waiting for the rest (a retry with a client that keeps sending succeeds).

A request_id already in use by a CreateJob still running makes the second call wait for that
job and return it (``existing=true``); see :mod:`scribe_libs.jobs` for the claim protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, transcript_pb2
from scribe_ingest.config import Settings
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.audio import header_duration, probe
from scribe_libs.auth import current_principal
from scribe_libs.errors import InvalidArgument, NotFound, ResourceExhausted, ScribeError
from scribe_libs.glossaries import GlossaryStore, apply_glossaries
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, JobStore, RequestClaim, audio_key, new_job_id
from scribe_libs.limits import MAX_CHANNELS, check_job_spec, is_truncated, truncated_message
from scribe_libs.logs import job_context
from scribe_libs.objectstore import ObjectNotFound, ObjectStore, open_store, parse_uri
from scribe_libs.queue import DEFAULT_RTF, PoolLedger, queue_depth
from scribe_libs.recognition import validate_config
from scribe_libs.registry import WorkerRegistry
from scribe_libs.scheduler import route
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_libs.tempdirs import OwnedTempDir

log = logging.getLogger(__name__)

#: Bytes spooled before the container header is probed for the duration (wav, flac, mp3 with a
#: Xing/VBRI header, m4a all state it within the first few KiB).
HEADER_PROBE_BYTES = 256 * 1024
#: Audio seconds assumed per waiting job when estimating a QUEUE_FULL retry delay.
NOMINAL_JOB_SECONDS = 60.0


class UploadIdle(ScribeError):
    """DEADLINE_EXCEEDED: the client stopped sending in the middle of a CreateJob stream."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED

    def __init__(self, seconds: float):
        super().__init__(
            "UPLOAD_IDLE", f"nothing was received for {seconds:g} s; the upload was abandoned",
            {"idle_timeout_seconds": f"{seconds:g}"},
        )


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    """Implements scribe.v1.Ingest."""

    def __init__(
        self,
        settings: Settings,
        bus: busmod.Bus,
        store: ObjectStore,
        temp: OwnedTempDir | None = None,
        registry: WorkerRegistry | None = None,
    ):
        self.settings = settings
        self.registry = registry or WorkerRegistry(bus.workers, bus)
        self.ledger = PoolLedger(bus)
        self.temp = temp or OwnedTempDir(settings.upload_dir, "ingest").open()
        self.bus = bus
        self.jobs = JobStore(bus)
        self.store = store
        self.glossaries = GlossaryStore(bus.glossaries)

    async def CreateJob(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest], context: grpc.aio.ServicerContext
    ) -> ingest_pb2.CreateJobResponse:
        """See protos/scribe/v1/ingest.proto."""
        try:
            response = await self._create_job(request_iterator)
        except ScribeError as exc:
            metrics.jobs_refused.add(1, {"reason": exc.reason})
            raise
        if not response.existing:
            metrics.jobs_created.add(1, {"pool": response.job.pool})
        return response

    async def _create_job(
        self, request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest]
    ) -> ingest_pb2.CreateJobResponse:
        request_iterator = self._idle_bounded(request_iterator)
        first = await anext(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "spec":
            raise InvalidArgument("SPEC_REQUIRED", "the first CreateJob message must carry the JobSpec", field="spec")
        spec = jobs_pb2.JobSpec()
        spec.CopyFrom(first.spec)
        check_job_spec(spec)  # before anything echoes a field back or stores it
        spec.config.CopyFrom(validate_config(spec.config, self.settings.default_model))
        self.settings.check_post_correction(spec.config.post_correction)  # at once, before the upload
        # Glossary terms bias decoding; ids are pinned to id@version for post-processing.
        await apply_glossaries(self.glossaries, spec)
        # Before the upload: refuse a model no pool serves, or a full queue, at once. The job's
        # own length is known once it is probed; _create routes again with it.
        pool = (await route(self.registry, self.ledger, self.settings.pools, spec.config.model)).pool
        await self._check_queue(pool)

        job_id = new_job_id()
        principal = current_principal()
        # Request ids are the caller's own namespace: two callers may use the same id.
        request_key = f"{principal.owner}\x00{spec.request_id}"
        claim: RequestClaim | None = None
        while spec.request_id and claim is None:
            # Waits while a concurrent call with the same request id creates its job.
            claimed = await self.jobs.claim_request(request_key, job_id)
            if isinstance(claimed, RequestClaim):
                claim = claimed
                break
            with contextlib.suppress(NotFound):
                job = await self.jobs.get(claimed)
                log.info("request id seen before; returning the existing job", extra={"job_id": claimed})
                return ingest_pb2.CreateJobResponse(job=job, existing=True)
            # Deleted between the claim's look-up and ours: claim again.
        keep_alive = asyncio.create_task(claim.keep_alive()) if claim is not None else None
        with job_context(job_id):
            try:
                response = await self._create(job_id, spec, pool, request_iterator, principal.owner)
            except BaseException:
                if keep_alive is not None:
                    keep_alive.cancel()
                if claim is not None:
                    await asyncio.shield(claim.release())
                raise
            if keep_alive is not None:
                keep_alive.cancel()
            if claim is not None:
                await claim.confirm()
            return response

    async def _idle_bounded(
        self, request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest]
    ) -> AsyncIterator[ingest_pb2.CreateJobRequest]:
        """``request_iterator``, raising UploadIdle when the next message takes too long."""
        timeout = self.settings.upload_idle_timeout_seconds
        iterator = aiter(request_iterator)
        while True:
            try:
                request = await asyncio.wait_for(anext(iterator), timeout if timeout > 0 else None)
            except StopAsyncIteration:
                return
            except TimeoutError:
                log.info("upload idle; abandoning it", extra={"idle_seconds": timeout})
                raise UploadIdle(timeout) from None
            yield request

    async def _create(
        self,
        job_id: str,
        spec: jobs_pb2.JobSpec,
        pool: str,
        request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest],
        owner: str,
    ) -> ingest_pb2.CreateJobResponse:
        with self.temp.item("upload-") as tmp:
            path = tmp / "audio"
            if spec.source_uri:
                size = await self._fetch_source(spec.source_uri, path, request_iterator)
            else:
                size = await self._spool(request_iterator, path)
            info = await asyncio.to_thread(probe, path)
            self._check_duration(info.duration)
            await self._check_shape(path, info.duration, info.channels)
            _check_channel_roles(spec.config, info.channels)
            decision = await route(self.registry, self.ledger, self.settings.pools, spec.config.model, info.duration)
            if decision.pool != pool:
                await self._check_queue(decision.pool)
                pool = decision.pool
            key = audio_key(job_id)
            await self.store.put_file(AUDIO_BUCKET, key, path)
        job = jobs_pb2.Job(
            job_id=job_id,
            state=jobs_pb2.JOB_STATE_QUEUED,
            spec=spec,
            pool=pool,
            audio_duration=info.duration,
            audio_bytes=size,
            audio_key=key,
            owner=owner,
        )
        ticketed = False
        seq = 0
        try:
            job.queue_ticket.CopyFrom(await self.ledger.enqueue(pool, info.duration))
            ticketed = True
            task = jobs_pb2.TranscribeTask(
                job_id=job_id, audio_key=key, config=spec.config, audio_duration=info.duration,
                queue_ticket=job.queue_ticket,
            )
            # The task first, then the record, written once and complete with the task's stream
            # sequence (scribe_libs.jobs: a worker that gets the task first waits for the record).
            seq = await self.bus.publish(busmod.jobs_subject(pool), task)
            job.stream_seq = seq
            await self.jobs.create(job)
        except BaseException:
            log.warning("job creation failed; removing what was written", exc_info=True)
            if seq:
                # Before the record goes: a worker that has the task finds no record and drops it.
                with contextlib.suppress(Exception):
                    await self.bus.js.delete_msg(busmod.JOBS_STREAM, seq)
                with contextlib.suppress(Exception):  # a write that failed late may have landed
                    await self.jobs.delete(job_id)
            await self.store.delete(AUDIO_BUCKET, key)
            if ticketed:  # the job never reaches a worker: count it out of the pool again
                await self.ledger.done(pool, info.duration)
            raise
        log.info(
            "job queued",
            extra={"pool": pool, "stream_seq": seq, "audio_seconds": round(info.duration, 3), "bytes": size},
        )
        return ingest_pb2.CreateJobResponse(job=job)

    async def _check_shape(self, path: Path, duration: float, channels: int) -> None:
        """Channels within MAX_CHANNELS; the header's duration present in the bytes.

        Raises:
            InvalidArgument: ``TOO_MANY_CHANNELS``, ``TRUNCATED_AUDIO`` (field ``audio``).
        """
        if channels > MAX_CHANNELS:
            raise InvalidArgument(
                "TOO_MANY_CHANNELS", f"the audio has {channels} channels; the limit is {MAX_CHANNELS}",
                field="audio", metadata={"channels": str(channels), "limit": str(MAX_CHANNELS)},
            )
        # FFmpeg measures a WAV by the bytes present; its header states what should be there.
        stated = await asyncio.to_thread(header_duration, path)
        if stated is not None and is_truncated(duration, stated):
            raise InvalidArgument(
                "TRUNCATED_AUDIO", truncated_message(duration, stated), field="audio",
                metadata={"processed_seconds": f"{duration:.3f}", "audio_seconds": f"{stated:.3f}"},
            )

    def _check_duration(self, duration: float | None) -> None:
        if duration is not None and duration > self.settings.max_audio_seconds:
            raise ResourceExhausted(
                "AUDIO_TOO_LONG",
                f"audio is {duration:.0f} s; the limit is {self.settings.max_audio_seconds:.0f} s",
                subject="upload",
            )

    async def _check_queue(self, pool: str) -> None:
        """Refuse before the upload when the pool's queue is full.

        The retry delay is the time the pool needs to work the excess off, taking each waiting
        job as NOMINAL_JOB_SECONDS of audio at the pool's measured RTF (at least 1 s).

        Raises:
            ResourceExhausted: ``QUEUE_FULL`` with RetryInfo.
        """
        depth = await queue_depth(self.bus, pool)
        if depth < self.settings.max_queue_depth:
            return
        totals = self.registry.totals(pool)
        excess = depth - self.settings.max_queue_depth + 1
        retry = max(1.0, excess * NOMINAL_JOB_SECONDS * totals.rtf(DEFAULT_RTF) / max(totals.live, 1))
        raise ResourceExhausted(
            "QUEUE_FULL",
            f"pool {pool} has {depth} jobs waiting (limit {self.settings.max_queue_depth}); retry later",
            subject=f"pool:{pool}",
            retry_after=retry,
            metadata={"pool": pool, "depth": str(depth)},
        )

    async def _spool(self, request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest], path: Path) -> int:
        """Write the audio chunks to ``path``; returns bytes. Enforces max_audio_bytes per chunk."""
        size = 0
        next_probe = HEADER_PROBE_BYTES
        limit = self.settings.max_audio_bytes
        with path.open("wb") as out:
            async for request in request_iterator:
                if request.WhichOneof("payload") != "audio":
                    raise InvalidArgument("SPEC_REPEATED", "only the first message may carry a JobSpec", field="spec")
                size += len(request.audio)
                if size > limit:
                    raise ResourceExhausted(
                        "AUDIO_TOO_LARGE", f"upload exceeds the {limit} byte limit", subject="upload"
                    )
                await asyncio.to_thread(out.write, request.audio)
                if size >= next_probe:
                    # Most containers state their duration up front: refuse an over-long file
                    # while it streams in rather than after gigabytes arrived. Probed again at
                    # each doubling, for containers whose estimate grows with the bytes.
                    next_probe = size * 2
                    out.flush()
                    self._check_duration(await asyncio.to_thread(header_duration, path))
        if size == 0:
            raise InvalidArgument("EMPTY_AUDIO", "no audio was uploaded", field="audio")
        return size

    async def _fetch_source(
        self, uri: str, path: Path, request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest]
    ) -> int:
        """Copy the object named by ``source_uri`` to ``path``; returns bytes."""
        bucket, key = parse_uri(uri)
        if bucket in (AUDIO_BUCKET, RESULTS_BUCKET):
            raise InvalidArgument(
                "INVALID_SOURCE_URI", f"source_uri may not point into scribe's own bucket {bucket}",
                field="spec.source_uri",
            )
        async for request in request_iterator:
            if request.WhichOneof("payload") == "audio" and request.audio:
                raise InvalidArgument(
                    "AUDIO_WITH_SOURCE_URI", "send either source_uri or audio chunks, not both", field="audio"
                )
        # Forbidden and missing get one answer, so another owner's objects cannot be probed.
        not_found = NotFound(
            "SOURCE_NOT_FOUND", f"source_uri {uri} does not exist or this key may not read it", "object", uri
        )
        if not source_allowed(current_principal(), bucket, key, self.settings.source_prefixes):
            log.info("source_uri outside the owner's prefixes", extra={"owner": current_principal().owner})
            raise not_found
        try:
            info = await self.store.stat(bucket, key)
        except ObjectNotFound as exc:
            raise not_found from exc
        if info.size > self.settings.max_audio_bytes:
            raise ResourceExhausted(
                "AUDIO_TOO_LARGE", f"source is {info.size} bytes; the limit is {self.settings.max_audio_bytes}",
                subject="upload",
            )
        if info.size == 0:
            raise InvalidArgument("EMPTY_AUDIO", f"source_uri {uri} is empty", field="spec.source_uri")
        await self.store.get_file(bucket, key, path)
        return info.size


def _check_channel_roles(config: transcript_pb2.RecognitionConfig, channels: int) -> None:
    """With per-channel recognition, one role per channel of the audio (or none: "ch0", "ch1", ...).

    Raises:
        InvalidArgument: ``CHANNEL_ROLES_MISMATCH`` (field ``spec.config.channel_roles``), as the
            stream gateway refuses a session whose roles do not match its channels.
    """
    roles = len(config.channel_roles)
    if roles and roles != channels:
        raise InvalidArgument(
            "CHANNEL_ROLES_MISMATCH", f"{roles} channel_roles for audio with {channels} channel(s)",
            field="spec.config.channel_roles", metadata={"channels": str(channels), "roles": str(roles)},
        )


def source_allowed(principal, bucket: str, key: str, prefixes: dict[str, list[str]]) -> bool:  # noqa: ANN001
    """Whether ``principal`` may read ``bucket/key`` as a job's source_uri.

    Admin keys may read any bucket (scribe's own buckets are refused before this); any other key
    only below one of its owner's ``prefixes`` entries (``"bucket/"`` or ``"bucket/key-prefix"``;
    S3 keys are literal strings, so a prefix match is exact).
    """
    if principal.admin:
        return True
    target = f"{bucket}/{key}"
    return any(entry and target.startswith(entry if "/" in entry else entry + "/")
               for entry in prefixes.get(principal.owner, []))


async def create_server(settings: Settings) -> GrpcServer:
    """Connect NATS and the object store, start the gRPC server, report SERVING.

    Returns:
        The started server (``.port`` is the bound port).
    """
    bus = await busmod.connect(settings.nats, "scribe-ingest", retention_seconds=settings.retention_days * 86400)
    store = open_store(settings.store)
    await store.ensure_bucket(AUDIO_BUCKET)
    temp = OwnedTempDir(settings.upload_dir, "ingest").open()  # clears what a killed instance left
    registry = await WorkerRegistry(bus.workers, bus).start()
    servicer = IngestServicer(settings, bus, store, temp, registry)
    server = await start_grpc_server(
        settings,
        lambda s: ingest_pb2_grpc.add_IngestServicer_to_server(servicer, s),
        [ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name],
    )
    server.on_stop.append(registry.stop)
    server.on_stop.append(bus.close)

    async def close_temp() -> None:
        temp.close()

    server.on_stop.append(close_temp)
    await server.set_serving(True)
    return server
