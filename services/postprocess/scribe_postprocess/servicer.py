"""The post-processing loop: raw transcript in, final outputs out, job COMPLETED.

Consumes ``scribe.postprocess`` (work-queue stream SCRIBE_POSTPROCESS) with the durable
consumer ``postprocess`` (:data:`scribe_libs.bus.POSTPROCESS_CONSUMER`). For each message: read
``<job_id>/raw.json`` from ``scribe-results``, run the text pass
(:mod:`scribe_postprocess.transform`: pinned glossaries, global rules, redaction when
``spec.redact``, confidence flags, hallucination guard, the LLM pass in the job's post-correction
mode), write
``<job_id>/transcript.{json,txt,srt,vtt}`` (post-processed) and ``<job_id>/raw.{txt,srt,vtt}``
(as decoded, beside raw.json; ``GetTranscript(raw=true)`` serves them), each with its content type
from :mod:`scribe_libs.formats`, then mark the job COMPLETED (compare-and-set) and ack. A
redelivery rewrites the same keys. The service exposes gRPC health only.

Redaction: the transcriber redacts before writing raw.json, so clear text never reaches the
object store. Should a raw.json of a redacted job arrive unredacted anyway (a transcriber of an
older version), it is redacted here and overwritten before anything else is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from opentelemetry import trace

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs import bus as busmod
from scribe_libs.formats import FORMAT_NAMES, render, transcript_from_json
from scribe_libs.glossaries import GlossaryStore
from scribe_libs.jobs import RESULTS_BUCKET, JobNotFound, JobStore, is_terminal, raw_transcript_key, transcript_key
from scribe_libs.logs import job_context
from scribe_libs.objectstore import ObjectNotFound, ObjectStore, open_store
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_libs.telemetry import extract_context
from scribe_libs.textproc import Rule, redact_transcript
from scribe_postprocess.config import Settings
from scribe_postprocess.llm import LlmClient, endpoint_allowed
from scribe_postprocess.transform import global_rules, postprocess_transcript

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

S = jobs_pb2.JobState


class Postprocessor:
    """Turns PostprocessTasks into final transcripts."""

    def __init__(
        self, settings: Settings, bus: busmod.Bus, store: ObjectStore, rules: list[Rule], llm: LlmClient | None = None
    ):
        self.settings = settings
        self.bus = bus
        self.store = store
        self.jobs = JobStore(bus)
        self.glossaries = GlossaryStore(bus.glossaries)
        self.rules = rules
        self.llm = llm
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        """Fetch and handle messages until :meth:`stop`."""
        sub = await busmod.pull_subscribe(
            self.bus.js,
            busmod.POSTPROCESS_SUBJECT,
            stream=busmod.POSTPROCESS_STREAM,
            durable=busmod.POSTPROCESS_CONSUMER,
            ack_wait_seconds=self.settings.ack_wait_seconds,
            max_deliver=self.settings.max_deliver,
        )
        await busmod.consume(sub, self.handle, self._stopping, "post-processing")

    def stop(self) -> None:
        """Stop after the message in hand."""
        self._stopping.set()

    async def handle(self, msg: Msg) -> None:
        """Process one message; always ends in ack, nak or term."""
        task = busmod.parse(jobs_pb2.PostprocessTask, msg.data)
        delivered = int(msg.metadata.num_delivered or 1)
        with (
            job_context(task.job_id),
            tracer.start_as_current_span("postprocess", context=extract_context(msg.headers)),
        ):
            try:
                await self._process(task)
                await msg.ack()
            except JobNotFound:
                await msg.term()
            except Exception as exc:  # noqa: BLE001 - retried, then FAILED
                if isinstance(exc, ObjectNotFound) or delivered >= self.settings.max_deliver:
                    log.exception("post-processing failed for good")
                    await self._fail(task.job_id, f"{type(exc).__name__}: {exc}")
                    await msg.term()
                else:
                    log.exception("post-processing failed; will be redelivered")
                    await msg.nak(delay=2.0)

    async def _process(self, task: jobs_pb2.PostprocessTask) -> None:
        job = await self.jobs.get(task.job_id)
        if is_terminal(job):
            return
        raw = transcript_from_json(await self.store.get_bytes(RESULTS_BUCKET, task.raw_key))
        if job.spec.redact and not raw.redacted:
            log.warning("raw transcript of a redacted job was not redacted; redacting it now")
            raw = redact_transcript(raw)
            content, content_type = render(raw, transcript_pb2.TRANSCRIPT_FORMAT_JSON)
            await self.store.put_bytes(RESULTS_BUCKET, task.raw_key, content, content_type)
        transcript = await postprocess_transcript(raw, job, self.glossaries, self.settings, self.rules, self.llm)
        keys = []
        for extension, fmt in FORMAT_NAMES.items():  # every format, json first
            key = transcript_key(task.job_id, extension)
            await self.store.put_bytes(RESULTS_BUCKET, key, *render(transcript, fmt))
            keys.append(key)
            if extension != "json":  # raw.json is the transcriber's
                raw_key = raw_transcript_key(task.job_id, extension)
                await self.store.put_bytes(RESULTS_BUCKET, raw_key, *render(raw, fmt))

        def complete(record: jobs_pb2.Job) -> None:
            del record.result_keys[:]
            record.result_keys.extend(keys)
            record.flag_summary.CopyFrom(transcript.flag_summary)

        await self.jobs.transition(task.job_id, S.JOB_STATE_COMPLETED, complete)
        log.info(
            "job completed",
            extra={
                "segments": len(transcript.segments),
                "corrections": len(transcript.corrections),
                "flagged_segments": transcript.flag_summary.flagged_segments,
                "redacted": transcript.redacted,
            },
        )

    async def _fail(self, job_id: str, message: str) -> None:
        with contextlib.suppress(JobNotFound):
            await self.jobs.fail(job_id, "POSTPROCESSING_FAILED", message)


async def create_server(settings: Settings) -> GrpcServer:
    """Connect, declare buckets, start the health-only gRPC server and the loop; SERVING when consuming.

    Raises:
        InvalidArgument: a configured global rule is invalid (``INVALID_RULE``).
    """
    rules = global_rules(settings)  # before connecting: a bad rule stops the start-up
    bus = await busmod.connect(settings.nats, "scribe-postprocess", retention_seconds=settings.retention_days * 86400)
    store = open_store(settings.store)
    await store.ensure_bucket(RESULTS_BUCKET, expiry_days=settings.retention_days)
    llm = None
    if settings.llm.enabled:
        if not endpoint_allowed(settings.llm):
            log.warning(
                "llm endpoint %s is not on llm.allowed_endpoints: every LLM call will be refused",
                settings.llm.endpoint,
            )
        llm = LlmClient(settings.llm)
    elif set(settings.post_correction_allowed) - {"off"}:
        log.warning(
            "post_correction_allowed lists %s but llm.enabled is false: jobs asking for them complete without the pass",
            sorted(set(settings.post_correction_allowed) - {"off"}),
        )
    server = await start_grpc_server(settings, lambda s: None, [])
    processor = Postprocessor(settings, bus, store, rules, llm)
    loop_task = asyncio.create_task(processor.run())

    async def stop() -> None:
        processor.stop()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(loop_task, timeout=settings.grace_seconds or None)
        if llm is not None:
            await llm.close()
        await bus.close()

    server.on_stop.append(stop)
    await server.set_serving(True)
    return server
