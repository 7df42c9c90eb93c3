"""The batch worker loop: fetch a job message of the pool, decode it, hand it to postprocess.

Delivery guarantees (DESIGN.md, "Data flow (batch)"):

- the message is acked only after the raw transcript is in the object store, the job record says
  POSTPROCESSING and the PostprocessTask is in JetStream;
- while a job runs, ``in_progress()`` is sent every third of the ack wait, so a live worker keeps
  its message and a dead one loses it to redelivery;
- a redelivered job (its worker died) is decoded again; outputs are keyed by job id, so the
  second run overwrites rather than duplicates; a job already POSTPROCESSING only has its
  PostprocessTask re-sent;
- undecodable audio is FAILED at once (``term()``); any other error is retried (``nak``) until
  ``max_deliver``, then FAILED with the reason;
- audio that decodes clearly shorter than ingest measured from its header (a truncated FLAC, an
  upload cut short; tolerance :func:`scribe_libs.limits.truncation_tolerance`) is FAILED with
  ``TRUNCATED_AUDIO`` and the decoded and stated seconds, not COMPLETED with a partial transcript.
  Containers whose duration FFmpeg only estimates from the bitrate (MP3 without a Xing header,
  raw AAC) are exempt: their estimate may differ from the decoded length either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from pathlib import Path

from nats.aio.msg import Msg
from opentelemetry import trace

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.audio import probe
from scribe_libs.errors import FailedPrecondition, InvalidArgument
from scribe_libs.formats import render
from scribe_libs.jobs import (
    AUDIO_BUCKET,
    RESULTS_BUCKET,
    JobNotFound,
    JobStore,
    ProgressThrottle,
    is_terminal,
    raw_transcript_key,
)
from scribe_libs.limits import is_truncated, truncated_message
from scribe_libs.logs import job_context
from scribe_libs.objectstore import ObjectNotFound, ObjectStore
from scribe_libs.telemetry import extract_context
from scribe_libs.tempdirs import OwnedTempDir
from scribe_libs.textproc import redact_transcript
from scribe_transcriber.config import Settings
from scribe_transcriber.engine import Engine

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

S = jobs_pb2.JobState
#: Containers whose duration FFmpeg estimates from the bitrate when no header states it.
_ESTIMATED_DURATION_CONTAINERS = frozenset({"mp3", "aac", "adts"})


class Worker:
    """Consumes ``scribe.jobs.<pool>`` with the pool's durable pull consumer, one job at a time."""

    def __init__(self, settings: Settings, bus: busmod.Bus, store: ObjectStore, engine: Engine):
        self.settings = settings
        self.bus = bus
        self.store = store
        self.engine = engine
        self.jobs = JobStore(bus)
        # Each job's audio lives under <temp_dir>/scribe-transcriber; a killed worker's are removed here.
        self.temp = OwnedTempDir(settings.temp_dir, "transcriber").open()
        self.current_load = 0
        self.real_time_factor = 0.0
        self._stopping = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    async def run(self) -> None:
        """Fetch and handle jobs until :meth:`stop`."""
        pool = self.settings.pool
        sub = await busmod.pull_subscribe(
            self.bus.js,
            busmod.jobs_subject(pool),
            stream=busmod.JOBS_STREAM,
            durable=busmod.pool_consumer(pool),
            ack_wait_seconds=self.settings.ack_wait_seconds,
            max_deliver=self.settings.max_deliver,
            # No limit here: each worker holds one message at a time, so the pool's worker count
            # bounds its in-flight jobs (the server's default 1000 would cap a large pool).
            max_ack_pending=-1,
        )
        log.info("consuming jobs", extra={"pool": pool, "consumer": busmod.pool_consumer(pool)})
        await busmod.consume(sub, self._handle_tracked, self._stopping, "job")

    async def _handle_tracked(self, msg: Msg) -> None:
        self._idle.clear()
        try:
            await self.handle(msg)
        finally:
            self._idle.set()

    async def stop(self) -> None:
        """Stop fetching; wait for the job in hand to finish (SIGTERM drain)."""
        self._stopping.set()
        await self._idle.wait()
        self.temp.close()

    async def handle(self, msg: Msg) -> None:
        """Process one job message; always ends in ack, nak or term."""
        task = busmod.parse(jobs_pb2.TranscribeTask, msg.data)
        delivered = int(msg.metadata.num_delivered or 1)
        with (
            job_context(task.job_id),
            tracer.start_as_current_span("transcribe", context=extract_context(msg.headers)) as span,
        ):
            span.set_attribute("scribe.job_id", task.job_id)
            try:
                await self._handle(msg, task, delivered)
            except (InvalidArgument, FailedPrecondition) as exc:
                # Bad audio, or a job this worker can never run (e.g. out of memory after the
                # allowed downgrades): retrying cannot help.
                log.warning("job failed: %s", exc.message)
                await self._fail(task.job_id, exc.reason, exc.message)
                await msg.term()
            except JobNotFound:
                log.info("job record gone (deleted); dropping its message")
                await msg.term()
            except Exception as exc:  # noqa: BLE001 - retried, then FAILED with the reason
                if delivered >= self.settings.max_deliver:
                    log.exception("job failed on its last delivery")
                    await self._fail(
                        task.job_id,
                        "TRANSCRIPTION_FAILED",
                        f"failed after {delivered} deliveries: {type(exc).__name__}: {exc}",
                    )
                    await msg.term()
                else:
                    log.exception("job attempt failed; will be redelivered", extra={"delivery": delivered})
                    await msg.nak(delay=2.0)

    async def _handle(self, msg: Msg, task: jobs_pb2.TranscribeTask, delivered: int) -> None:
        job = await self.jobs.get(task.job_id)
        if is_terminal(job):
            await msg.ack()
            return
        if job.state == S.JOB_STATE_POSTPROCESSING:
            # A redelivery after the raw transcript was stored: only the hand-off (and maybe the
            # audio deletion) is missing. Both are safe to repeat.
            await self._handoff(task.job_id)
            if not job.spec.retain_audio:
                await self.store.delete(AUDIO_BUCKET, task.audio_key)
            await msg.ack()
            return
        if job.cancel_requested:
            await self._finish_cancel(task.job_id)
            await msg.ack()
            return

        def start(record: jobs_pb2.Job) -> None:
            record.worker_id = self.settings.worker_id
            record.delivery_count = delivered
            record.processed_seconds = 0.0
            record.progress = 0.0

        await self.jobs.transition(task.job_id, S.JOB_STATE_RUNNING, start)
        log.info("job running", extra={"delivery": delivered, "model": task.config.model})
        self.current_load += 1
        try:
            transcript, cancelled = await self._decode(msg, task)
        finally:
            self.current_load -= 1
        if cancelled:
            await self._finish_cancel(task.job_id)
            await msg.ack()
            return
        transcript.job_id = task.job_id
        transcript.worker_id = self.settings.worker_id
        if job.spec.redact:  # before the put: clear text never reaches the object store
            transcript = redact_transcript(transcript)
        await self.store.put_bytes(
            RESULTS_BUCKET, raw_transcript_key(task.job_id), *render(transcript, transcript_pb2.TRANSCRIPT_FORMAT_JSON)
        )
        labels = {"pool": self.settings.pool, "model": task.config.model}
        metrics.audio_processed.add(transcript.duration, labels)
        metrics.job_duration.record(transcript.processing_seconds, labels)
        if transcript.duration > 0:
            rtf = transcript.processing_seconds / transcript.duration
            metrics.real_time_factor.record(rtf, labels)
            self.real_time_factor = rtf if self.real_time_factor == 0 else 0.7 * self.real_time_factor + 0.3 * rtf
        retain = job.spec.retain_audio

        def decoded(record: jobs_pb2.Job) -> None:
            record.processed_seconds = transcript.duration
            record.progress = 1.0
            record.language = transcript.language
            if not retain:
                record.audio_key = ""

        await self.jobs.transition(task.job_id, S.JOB_STATE_POSTPROCESSING, decoded)
        await self._handoff(task.job_id)
        # Only now: a worker killed before this point leaves the audio for the redelivery.
        if not retain:
            await self.store.delete(AUDIO_BUCKET, task.audio_key)
        await msg.ack()
        log.info(
            "job decoded",
            extra={
                "audio_seconds": round(transcript.duration, 3),
                "processing_seconds": round(transcript.processing_seconds, 3),
                "segments": len(transcript.segments),
            },
        )

    async def _decode(self, msg: Msg, task: jobs_pb2.TranscribeTask):  # noqa: ANN202
        cancelled = threading.Event()
        loop = asyncio.get_running_loop()
        progress: asyncio.Queue[tuple[float, float] | None] = asyncio.Queue()

        def on_progress(processed: float, total: float) -> None:
            loop.call_soon_threadsafe(progress.put_nowait, (processed, total))

        with self.temp.item("job-") as tmp:
            path = tmp / "audio"
            try:
                await self.store.get_file(AUDIO_BUCKET, task.audio_key, path)
            except ObjectNotFound as exc:
                raise InvalidArgument("AUDIO_MISSING", f"the job's audio {task.audio_key} is gone") from exc
            decode = asyncio.ensure_future(
                asyncio.to_thread(
                    self.engine.transcribe,
                    path,
                    task.config,
                    batch_size=self.settings.batch_size,
                    on_progress=on_progress,
                    cancelled=cancelled,
                )
            )
            # The helpers stop on `done` (and the progress queue's None), not only on cancel:
            # Python 3.11's asyncio.wait_for can swallow a cancellation that races with a reply
            # (fixed in 3.12), which would leave a helper running and this job never finishing.
            done = asyncio.Event()
            helpers = [
                asyncio.create_task(self._heartbeat(msg, done)),
                asyncio.create_task(self._watch_cancel(task.job_id, cancelled, done)),
                asyncio.create_task(self._report_progress(task.job_id, progress)),
            ]
            try:
                transcript, stopped = await decode
                if not stopped:
                    await self._check_complete(path, transcript.duration, task.audio_duration)
                return transcript, stopped
            finally:
                cancelled.set()  # stops the thread if we are unwinding on an error
                done.set()
                progress.put_nowait(None)
                _, pending = await asyncio.wait(helpers, timeout=10.0)
                for helper in pending:
                    helper.cancel()
                    log.warning("job helper %s did not stop; cancelled", helper.get_coro())

    async def _check_complete(self, path: Path, decoded: float, stated: float) -> None:
        """Raise ``TRUNCATED_AUDIO`` when ``decoded`` seconds fall clearly short of ``stated``."""
        if not is_truncated(decoded, stated):
            return
        info = await asyncio.to_thread(probe, path)
        if info.container in _ESTIMATED_DURATION_CONTAINERS:
            return
        raise InvalidArgument("TRUNCATED_AUDIO", truncated_message(decoded, stated), field="audio")

    async def _heartbeat(self, msg: Msg, done: asyncio.Event) -> None:
        interval = max(self.settings.ack_wait_seconds / 3, 0.5)
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=interval)
                return
            await msg.in_progress()

    async def _watch_cancel(self, job_id: str, cancelled: threading.Event, done: asyncio.Event) -> None:
        while not cancelled.is_set() and not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=self.settings.cancel_poll_seconds)
                return
            try:
                job = await self.jobs.get(job_id)
            except JobNotFound:
                job = None  # deleted while running: stop as for a cancel
            if job is None or job.cancel_requested or is_terminal(job):
                log.info("cancel requested; stopping at the next chunk boundary")
                cancelled.set()
                return

    async def _report_progress(self, job_id: str, progress: asyncio.Queue[tuple[float, float] | None]) -> None:
        throttle = ProgressThrottle(self.settings.progress_interval_seconds)
        while True:
            item = await progress.get()
            while item is not None and not progress.empty():
                item = progress.get_nowait()
            if item is None:
                return
            processed, total = item
            if not throttle.ready():
                continue

            def update(record: jobs_pb2.Job, processed: float = processed, total: float = total) -> bool:
                if record.state != S.JOB_STATE_RUNNING:
                    return False
                record.processed_seconds = processed
                record.progress = min(processed / total, 1.0) if total > 0 else 0.0
                return True

            await self.jobs.update(job_id, update, event="progress")

    async def _handoff(self, job_id: str) -> None:
        await self.bus.publish(
            busmod.POSTPROCESS_SUBJECT, jobs_pb2.PostprocessTask(job_id=job_id, raw_key=raw_transcript_key(job_id))
        )

    async def _finish_cancel(self, job_id: str) -> None:
        """Remove the job's audio and partial outputs, then mark it CANCELLED."""
        job = await self.jobs.get(job_id)
        if job.audio_key:
            await self.store.delete(AUDIO_BUCKET, job.audio_key)
        await self.store.delete_prefix(RESULTS_BUCKET, f"{job_id}/")

        def clear(record: jobs_pb2.Job) -> None:
            record.audio_key = ""
            del record.result_keys[:]

        if not is_terminal(job):
            await self.jobs.transition(job_id, S.JOB_STATE_CANCELLED, clear)
        log.info("job cancelled")

    async def _fail(self, job_id: str, reason: str, message: str) -> None:
        with contextlib.suppress(JobNotFound):
            job, _ = await self.jobs.fail(job_id, reason, message)
            if job.audio_key and not job.spec.retain_audio:
                await self.store.delete(AUDIO_BUCKET, job.audio_key)
