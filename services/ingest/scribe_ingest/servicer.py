"""Ingest.CreateJob: spool the upload, check it, store it, record the job, queue it on a pool.

Order of writes, so that a failure at any step leaves nothing half-written behind:

1. the upload is spooled to a temporary file while it streams in (size limit enforced per chunk);
2. the audio is probed (decodable, duration limit);
3. the original goes to ``scribe-audio/<job_id>/original``;
4. the job record is created in ``scribe_jobs`` as QUEUED;
5. the TranscribeTask is published on ``scribe.jobs.<pool>``; JetStream's ack makes it durable;
6. the record gets the message's stream sequence (for the queue position).

If 4 or 5 fail, what 3 and 4 wrote is removed before the error is returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2
from scribe_ingest.config import Settings
from scribe_ingest.routing import route
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.audio import header_duration, probe
from scribe_libs.auth import current_principal
from scribe_libs.errors import InvalidArgument, NotFound, ResourceExhausted, ScribeError
from scribe_libs.glossaries import GlossaryStore, apply_glossaries
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, JobStore, audio_key, new_job_id
from scribe_libs.logs import job_context
from scribe_libs.objectstore import ObjectNotFound, ObjectStore, open_store, parse_uri
from scribe_libs.queue import live_profiles, pool_rtf, queue_depth
from scribe_libs.recognition import validate_config
from scribe_libs.server import GrpcServer, start_grpc_server

log = logging.getLogger(__name__)

_MAX_LABELS = 64
#: Bytes spooled before the container header is probed for the duration (wav, flac, mp3 with a
#: Xing/VBRI header, m4a all state it within the first few KiB).
HEADER_PROBE_BYTES = 256 * 1024
#: Audio seconds assumed per waiting job when estimating a QUEUE_FULL retry delay.
NOMINAL_JOB_SECONDS = 60.0


class IngestServicer(ingest_pb2_grpc.IngestServicer):
    """Implements scribe.v1.Ingest."""

    def __init__(self, settings: Settings, bus: busmod.Bus, store: ObjectStore):
        self.settings = settings
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
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("payload") != "spec":
            raise InvalidArgument("SPEC_REQUIRED", "the first CreateJob message must carry the JobSpec", field="spec")
        spec = jobs_pb2.JobSpec()
        spec.CopyFrom(first.spec)
        spec.config.CopyFrom(validate_config(spec.config, self.settings.default_model))
        # Glossary terms bias decoding; ids are pinned to id@version for post-processing.
        await apply_glossaries(self.glossaries, spec)
        if len(spec.labels) > _MAX_LABELS:
            raise InvalidArgument("TOO_MANY_LABELS", f"at most {_MAX_LABELS} labels", field="spec.labels")
        pool = await route(self.bus, self.settings, spec.config.model)
        await self._check_queue(pool)

        job_id = new_job_id()
        principal = current_principal()
        # Request ids are the caller's own namespace: two callers may use the same id.
        request_key = f"{principal.owner}\x00{spec.request_id}"
        if spec.request_id:
            existing = await self.jobs.claim_request(request_key, job_id)
            if existing is not None:
                with contextlib.suppress(NotFound):
                    job = await self.jobs.get(existing)
                    log.info("request id seen before; returning the existing job", extra={"job_id": existing})
                    return ingest_pb2.CreateJobResponse(job=job, existing=True)
                # The claimed job never came to exist (its creation failed): take the request id over.
                await self.jobs.release_request(request_key)
                if await self.jobs.claim_request(request_key, job_id) is not None:
                    raise InvalidArgument("REQUEST_IN_FLIGHT", "a job with this request_id is being created")
        with job_context(job_id):
            try:
                return await self._create(job_id, spec, pool, request_iterator, principal.owner)
            except BaseException:
                if spec.request_id:
                    await self.jobs.release_request(request_key)
                raise

    async def _create(
        self,
        job_id: str,
        spec: jobs_pb2.JobSpec,
        pool: str,
        request_iterator: AsyncIterator[ingest_pb2.CreateJobRequest],
        owner: str,
    ) -> ingest_pb2.CreateJobResponse:
        with tempfile.TemporaryDirectory(prefix="scribe-upload-", dir=self.settings.upload_dir) as tmp:
            path = Path(tmp) / "audio"
            if spec.source_uri:
                size = await self._fetch_source(spec.source_uri, path, request_iterator)
            else:
                size = await self._spool(request_iterator, path)
            info = await asyncio.to_thread(probe, path)
            self._check_duration(info.duration)
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
        created = False
        try:
            await self.jobs.create(job)
            created = True
            task = jobs_pb2.TranscribeTask(
                job_id=job_id, audio_key=key, config=spec.config, audio_duration=info.duration
            )
            seq = await self.bus.publish(busmod.jobs_subject(pool), task)
        except BaseException:
            log.warning("job creation failed; removing what was written", exc_info=True)
            await self.store.delete(AUDIO_BUCKET, key)
            if created:
                await self.jobs.delete(job_id)
            raise

        def set_seq(record: jobs_pb2.Job) -> None:
            record.stream_seq = seq

        job = await self.jobs.update(job_id, set_seq)
        log.info(
            "job queued",
            extra={"pool": pool, "stream_seq": seq, "audio_seconds": round(info.duration, 3), "bytes": size},
        )
        return ingest_pb2.CreateJobResponse(job=job)

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
        profiles = await live_profiles(self.bus.workers, pool)
        excess = depth - self.settings.max_queue_depth + 1
        retry = max(1.0, excess * NOMINAL_JOB_SECONDS * pool_rtf(profiles) / max(len(profiles), 1))
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
        try:
            info = await self.store.stat(bucket, key)
        except ObjectNotFound as exc:
            raise NotFound("SOURCE_NOT_FOUND", f"source_uri {uri} does not exist", "object", uri) from exc
        if info.size > self.settings.max_audio_bytes:
            raise ResourceExhausted(
                "AUDIO_TOO_LARGE", f"source is {info.size} bytes; the limit is {self.settings.max_audio_bytes}",
                subject="upload",
            )
        if info.size == 0:
            raise InvalidArgument("EMPTY_AUDIO", f"source_uri {uri} is empty", field="spec.source_uri")
        await self.store.get_file(bucket, key, path)
        return info.size


async def create_server(settings: Settings) -> GrpcServer:
    """Connect NATS and the object store, start the gRPC server, report SERVING.

    Returns:
        The started server (``.port`` is the bound port).
    """
    bus = await busmod.connect(settings.nats, "scribe-ingest", retention_seconds=settings.retention_days * 86400)
    store = open_store(settings.store)
    await store.ensure_bucket(AUDIO_BUCKET)
    servicer = IngestServicer(settings, bus, store)
    server = await start_grpc_server(
        settings,
        lambda s: ingest_pb2_grpc.add_IngestServicer_to_server(servicer, s),
        [ingest_pb2.DESCRIPTOR.services_by_name["Ingest"].full_name],
    )
    server.on_stop.append(bus.close)
    await server.set_serving(True)
    return server
