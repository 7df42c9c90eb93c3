"""The batch worker loop: fetch a job message of the pool, decode it, hand it to postprocess.

Delivery guarantees (DESIGN.md, "Data flow (batch)"):

- the message is acked only after the raw transcript is in the object store, the job record says
  POSTPROCESSING and the PostprocessTask is in JetStream;
- while a job runs, ``in_progress()`` is sent every third of the ack wait, so a live worker keeps
  its message and a dead one loses it to redelivery;
- a redelivered job (its worker died) is decoded again; outputs are keyed by job id, so the
  second run overwrites rather than duplicates; a job already POSTPROCESSING only has its
  PostprocessTask re-sent;
- a task whose job record is not there yet waits for it while the task is young (ingest writes
  the record right after the task: :meth:`scribe_libs.jobs.JobStore.get_published`); a task
  without a record after that (its job deleted, or ingest stopped between the two writes) is
  dropped (``term()``);
- undecodable audio is FAILED at once (``term()``); any other error is retried (``nak``) until
  ``max_deliver``, then FAILED with the reason;
- audio that decodes clearly shorter than ingest measured from its header (a truncated FLAC, an
  upload cut short; tolerance :func:`scribe_libs.limits.truncation_tolerance`) is FAILED with
  ``TRUNCATED_AUDIO`` and the decoded and stated seconds, not COMPLETED with a partial transcript.
  Containers whose duration FFmpeg only estimates from the bitrate (MP3 without a Xing header,
  raw AAC) are exempt: their estimate may differ from the decoded length either way.

Concurrency: a worker runs up to ``slots`` jobs at once (``slots()`` is
:meth:`scribe_transcriber.device.WorkerDevice.job_slots`: what the device's memory allows). Each
job is its own task with its own heartbeat, cancel watch and progress, and ends in its own ack,
nak or term; every rule above holds per job. A message is fetched only while a slot is free (the
fetch loop, :func:`scribe_libs.bus.consume`, calls the next fetch only after :meth:`_dispatch`
returns, and that waits for a free slot), so a worker never holds a message it cannot start; a
job message in JetStream stays available to other workers of the pool meanwhile. Decoding runs
in threads (``asyncio.to_thread``); SIGTERM (:meth:`Worker.stop`) stops fetching and waits for
every job in hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
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
from scribe_libs.queue import PoolLedger
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
    """Consumes ``scribe.jobs.<pool>`` with the pool's durable pull consumer, ``slots`` jobs at a time.

    Args:
        settings: Transcriber settings.
        bus: NATS connection.
        store: Object store (audio in, raw transcripts out).
        engine: Anything with :meth:`scribe_transcriber.engine.Engine.transcribe`'s signature,
            safe to call from several threads at once.
        slots: Concurrent jobs: an int, or a callable read before each fetch (so a smaller
            figure after an out-of-memory downgrade takes effect at the next fetch). 1 when
            omitted (one job at a time).
    """

    def __init__(
        self,
        settings: Settings,
        bus: busmod.Bus,
        store: ObjectStore,
        engine: Engine,
        slots: int | Callable[[], int] = 1,
    ):
        self.settings = settings
        self.bus = bus
        self.store = store
        self.engine = engine
        self.jobs = JobStore(bus)
        self.ledger = PoolLedger(bus)
        # Each job's audio lives under <temp_dir>/scribe-transcriber; a killed worker's are removed here.
        self.temp = OwnedTempDir(settings.temp_dir, "transcriber").open()
        self.real_time_factor = 0.0
        self._slots = slots
        self._in_hand: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()  # set when a job ends or stop() is called
        self._stopping = asyncio.Event()
        self._fetching = asyncio.Event()  # clear while run()'s fetch loop is running
        self._fetching.set()
        # Jobs in hand integrated over time (job-seconds), for the worker's effective RTF.
        self._load_integral = 0.0
        self._load_mark = time.monotonic()

    @property
    def slots(self) -> int:
        """Concurrent jobs allowed now (at least 1)."""
        value = self._slots() if callable(self._slots) else self._slots
        return max(1, int(value))

    @property
    def current_load(self) -> int:
        """Jobs in hand (fetched and not yet acked, nakked or termed)."""
        return len(self._in_hand)

    async def run(self) -> None:
        """Fetch and handle jobs until :meth:`stop`."""
        pool = self.settings.pool
        self._fetching.clear()
        try:
            sub = await busmod.pull_subscribe(
                self.bus.js,
                busmod.jobs_subject(pool),
                stream=busmod.JOBS_STREAM,
                durable=busmod.pool_consumer(pool),
                ack_wait_seconds=self.settings.ack_wait_seconds,
                max_deliver=self.settings.max_deliver,
                # No limit here: each worker holds at most its slots' messages, so the pool's
                # workers bound its in-flight jobs (the server's default 1000 would cap a large pool).
                max_ack_pending=-1,
            )
            log.info(
                "consuming jobs",
                extra={"pool": pool, "consumer": busmod.pool_consumer(pool), "slots": self.slots},
            )
            await busmod.consume(sub, self._dispatch, self._stopping, "job")
        finally:
            self._fetching.set()

    async def _dispatch(self, msg: Msg) -> None:
        """Start ``msg``'s job in its own task; return once a slot is free for the next fetch."""
        task = asyncio.create_task(self.handle(msg), name=f"job-{msg.metadata.sequence.stream}")
        self._account_load()
        self._in_hand.add(task)
        task.add_done_callback(self._job_done)
        while len(self._in_hand) >= self.slots and not self._stopping.is_set():
            self._changed.clear()
            await self._changed.wait()

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._account_load()
        self._in_hand.discard(task)
        self._changed.set()
        if not task.cancelled() and task.exception() is not None:
            # handle() ends every message itself; this is a bug, and the message is redelivered.
            log.error("job task failed", exc_info=task.exception())

    def _account_load(self) -> tuple[float, float]:
        """Bring the load integral up to now; returns (now, job-seconds so far)."""
        now = time.monotonic()
        self._load_integral += len(self._in_hand) * (now - self._load_mark)
        self._load_mark = now
        return now, self._load_integral

    def _mean_load_since(self, mark: tuple[float, float]) -> float:
        """Mean jobs in hand since ``mark`` (from :meth:`_account_load`); at least 1."""
        now, integral = self._account_load()
        elapsed = now - mark[0]
        return max(1.0, (integral - mark[1]) / elapsed) if elapsed > 0 else max(1.0, float(self.current_load))

    async def stop(self) -> None:
        """Stop fetching; wait for every job in hand to finish (SIGTERM drain)."""
        self._stopping.set()
        self._changed.set()
        # A fetch under way when stop() came may still return a message: its job starts and is
        # waited for too (consume()'s fetches last at most 1 s).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._fetching.wait(), timeout=5.0)
        while self._in_hand:
            await asyncio.wait(list(self._in_hand))
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
        # Ingest publishes the task, then writes the record: a young task may precede it.
        job = await self.jobs.get_published(task.job_id, msg.metadata.timestamp.timestamp())
        # Whatever happens next, this message has left the pool's waiting line.
        await self.ledger.started(self.settings.pool, task.queue_ticket, task.audio_duration)
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
        load_mark = self._account_load()
        transcript, cancelled = await self._decode(msg, task)
        sharing = self._mean_load_since(load_mark)  # jobs that shared the device meanwhile
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
            # The profile's RTF is the worker's: device seconds per audio second with its jobs
            # sharing the device (routing divides backlog x RTF by workers, not by slots).
            worker_rtf = rtf / sharing
            self.real_time_factor = (
                worker_rtf if self.real_time_factor == 0 else 0.7 * self.real_time_factor + 0.3 * worker_rtf
            )
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
