"""``StreamGateway.StreamingRecognize``: the session loop, flow control, limits, and start-up.

The loop of one call (requests are handled strictly in order):

1. the gateway's session cap is checked before anything is read (RESOURCE_EXHAUSTED
   ``TOO_MANY_SESSIONS`` with RetryInfo);
2. the first request must carry a valid ``StreamingConfig`` (INVALID_ARGUMENT otherwise, unknown
   glossary ids included), a live worker must be able to decode its model, and one must have
   free measured capacity for its channels (RESOURCE_EXHAUSTED ``REALTIME_CAPACITY_FULL`` with
   RetryInfo: a call that cannot be served well is refused up front);
3. audio is decoded, VAD'd and recognised (:class:`~scribe_stream_gateway.call.CallSession`) in a
   processing task; its results are sent as soon as their decode returns, independently of the
   requests still arriving; ``force_finalize`` closes the utterance now; ``keepalive`` only
   resets the idle timer (not the audio-gap limit, see below). Everything runs inside the
   session's span, so the Decode calls are its children;
4. on the caller's half-close: the last finals, the call stored as a job, then the summary.

Flow control (never dropping audio): a reader task moves requests from the gRPC stream into a
one-slot queue; the loop takes the next request only after the previous one was fully processed
(its windows decoded), and, with pacing on, only while the audio received is at most
``max_lead_seconds`` ahead of the wall clock since the first audio. While the loop does not take
requests the reader blocks, gRPC stops reading from the transport and HTTP/2 flow control stops the
sender once its window is full (the transport may hold up to one window, 64 KiB by default, i.e.
4 s of 8 kHz G.711, beyond the bound).

Cancellation by the caller (or a deadline): gRPC cancels the handler; the ``finally`` block stops
the reader, releases the recording and the session slot. Nothing is stored for a cancelled call.
Idle: no request for ``idle_timeout_seconds``, or no audio for ``max_audio_gap_seconds`` (keepalives
and controls do not count: a session holds realtime capacity), ends the session like a half-close,
then fails it with FAILED_PRECONDITION ``SESSION_IDLE`` (the finals and the stored job are kept).

Admission refuses a language the worker's realtime model cannot transcribe: a session naming no
model is placed on a worker, and when every model that worker has loaded is English-only
(``*.en``) a language other than English is INVALID_ARGUMENT ``MODEL_LANGUAGE_MISMATCH``, as for
a batch job (:func:`scribe_libs.recognition.validate_config`).

Revoked keys: every ``key_check_seconds`` (and before each response) the caller's key is looked
up again in the key file; a key no longer there ends the session with UNAUTHENTICATED
``KEY_REVOKED`` (nothing is stored for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from opentelemetry import trace

from scribe.v1 import streaming_pb2, streaming_pb2_grpc
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.auth import KeyRing, check_not_revoked, current_principal
from scribe_libs.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from scribe_libs.glossaries import GlossaryStore
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, new_job_id
from scribe_libs.logs import job_context
from scribe_libs.objectstore import ObjectStore, open_store
from scribe_libs.registry import WorkerRegistry
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_libs.tempdirs import OwnedTempDir
from scribe_stream_gateway.call import CallSession
from scribe_stream_gateway.config import Settings
from scribe_stream_gateway.livetext import load_live_text
from scribe_stream_gateway.options import validate_streaming_config
from scribe_stream_gateway.workers import WorkerPool

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

Req = streaming_pb2.StreamingRecognizeRequest
Resp = streaming_pb2.StreamingRecognizeResponse
_END = object()


class StreamGatewayServicer(streaming_pb2_grpc.StreamGatewayServicer):
    """Implements scribe.v1.StreamGateway."""

    def __init__(  # noqa: PLR0913
        self, settings: Settings, bus: busmod.Bus, store: ObjectStore, workers: WorkerPool, vad_session,  # noqa: ANN001
        glossaries: GlossaryStore | None = None, temp: OwnedTempDir | None = None,
    ):
        self.settings = settings
        self.bus = bus
        self.store = store
        self.workers = workers
        self.vad_session = vad_session
        self.glossaries = glossaries or GlossaryStore(bus.glossaries)
        self.active = 0
        self.temp = temp
        self.keyring = KeyRing(settings.auth) if settings.auth.enabled else None

    def _check_key(self) -> None:
        """Raise UNAUTHENTICATED ``KEY_REVOKED`` when the caller's key left the key file since the call began."""
        check_not_revoked(self.keyring, "session")

    async def StreamingRecognize(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[Req], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        """See protos/scribe/v1/streaming.proto."""
        if self.active >= self.settings.max_sessions:
            metrics.stream_sessions_refused.add(1, {"reason": "TOO_MANY_SESSIONS"})
            raise ResourceExhausted(
                "TOO_MANY_SESSIONS", f"the gateway runs its maximum of {self.settings.max_sessions} sessions",
                subject="stream-gateway:sessions", retry_after=self.settings.retry_after_seconds,
            )
        self.active += 1
        metrics.stream_sessions.add(1)
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        reader = asyncio.create_task(self._read(request_iterator, queue))
        session: CallSession | None = None
        processing: asyncio.Task | None = None
        getter: asyncio.Future | None = None
        try:
            with _tracer.start_as_current_span("scribe.stream.session") as span:
                first = await self._next(queue)
                if first is _END or first.WhichOneof("request") != "config":
                    raise InvalidArgument(
                        "CONFIG_REQUIRED", "the first StreamingRecognize message must carry the StreamingConfig",
                        field="config",
                    )
                options = validate_streaming_config(first.config, self.settings)
                live_text = await load_live_text(first.config, options.hotwords, self.glossaries)
                try:
                    placement = await self.workers.admit(options.model, options.channels)
                except ResourceExhausted as exc:
                    metrics.stream_sessions_refused.add(1, {"reason": exc.reason})
                    raise
                try:
                    await self._check_language(options.model, options.language, placement.endpoint)
                except InvalidArgument:
                    self.workers.release(placement)
                    raise
                job_id = new_job_id()
                span.set_attribute("scribe.job_id", job_id)
                span.set_attribute("scribe.worker_id", placement.worker_id)
                session = CallSession(
                    job_id, options, self.workers, self.vad_session, self.settings.max_utterance_seconds,
                    live_text=live_text, placement=placement,
                    min_decode_interval_seconds=self.settings.min_decode_interval_seconds, temp=self.temp,
                )
                session.owner = current_principal().owner  # the stored call belongs to the caller's key
                with job_context(job_id):
                    log.info("session started", extra={"encoding": options.encoding, "channels": options.channels,
                                                       "sample_rate": options.sample_rate,
                                                       "worker_id": placement.worker_id})
                    # Requests are processed in one task (its decodes inherit this span's context);
                    # responses are sent as soon as any decode produces them.
                    processing = asyncio.create_task(self._run(session, queue))
                    while True:
                        # One pending get across the key checks (a cancelled get could lose a response).
                        if getter is None:
                            getter = asyncio.ensure_future(session.out.get())
                        done, _ = await asyncio.wait({getter}, timeout=self.settings.key_check_seconds)
                        self._check_key()
                        if not done:
                            continue
                        response, getter = getter.result(), None
                        if response is _END:
                            break
                        if isinstance(response, BaseException):
                            raise response
                        yield response
        finally:
            if getter is not None:
                getter.cancel()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(reader, timeout=2.0)
            if processing is not None and not processing.done():
                processing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await processing
            if session is not None:
                await session.cancel()
                session.close()
            self.active -= 1
            metrics.stream_sessions.add(-1)

    async def _check_language(self, model: str, language: str, endpoint: str) -> None:
        """Refuse a non-English language on a worker whose every loaded model is English-only.

        A session that names its model was checked by ``validate_streaming_config``; one that names
        none gets the worker's realtime model, one of its ``models_loaded`` (the profile does not say
        which, so a worker with a multilingual model loaded is given the benefit of the doubt).

        Raises:
            InvalidArgument: ``MODEL_LANGUAGE_MISMATCH`` (field ``config.language``).
        """
        if model or language in ("", "en"):
            return
        profile = next((p for p in await self.workers.profiles() if p.endpoint == endpoint), None)
        loaded = list(profile.models_loaded) if profile is not None else []
        if loaded and all(m.endswith(".en") for m in loaded):
            metrics.stream_sessions_refused.add(1, {"reason": "MODEL_LANGUAGE_MISMATCH"})
            raise InvalidArgument(
                "MODEL_LANGUAGE_MISMATCH",
                f"the streaming worker's realtime model ({', '.join(loaded)}) is English-only; language "
                f"{language!r} needs a multilingual model",
                field="config.language",
            )

    async def _run(self, session: CallSession, queue: asyncio.Queue) -> None:
        """Process the requests in order; puts the summary, then _END (or the error) on ``session.out``."""
        try:
            await self._process(session, queue)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised by the handler, after what came before it
            session.out.put_nowait(exc)
        session.out.put_nowait(_END)

    async def _finish(self, session: CallSession) -> None:
        await session.finish()
        job_id = await self._store(session)
        session.out.put_nowait(session.summary(job_id))

    async def _process(self, session: CallSession, queue: asyncio.Queue) -> None:
        settings = self.settings
        first_audio: float | None = None
        last_audio = time.monotonic()  # the audio-gap limit counts from the start, then from each chunk
        limit = session.options.max_session_seconds
        while True:
            if first_audio is not None and settings.max_lead_seconds >= 0:
                lead = session.audio_seconds - (time.monotonic() - first_audio)
                if lead > settings.max_lead_seconds:
                    # Ahead of real time: hold the stream (the reader blocks; gRPC pushes back).
                    await asyncio.sleep(lead - settings.max_lead_seconds)
            gap_left = settings.max_audio_gap_seconds - (time.monotonic() - last_audio)
            timeout = min(settings.idle_timeout_seconds, max(gap_left, 0.0))
            try:
                request = await asyncio.wait_for(queue.get(), timeout=timeout)
            except TimeoutError:
                await self._finish(session)
                if timeout < settings.idle_timeout_seconds:
                    raise FailedPrecondition(
                        "SESSION_IDLE", f"no audio for {settings.max_audio_gap_seconds:g} s (keepalives and controls "
                        "do not count); the session was closed",
                        {"max_audio_gap_seconds": f"{settings.max_audio_gap_seconds:g}"},
                    ) from None
                raise FailedPrecondition(
                    "SESSION_IDLE", f"no audio, control or end of stream for {settings.idle_timeout_seconds:.0f} s"
                ) from None
            if isinstance(request, BaseException):
                raise request
            if request is _END:
                break
            kind = request.WhichOneof("request")
            if kind == "audio":
                last_audio = time.monotonic()
                if first_audio is None:
                    first_audio = last_audio
                await session.audio(request.audio)
                if session.audio_seconds > limit:
                    await self._finish(session)
                    raise ResourceExhausted(
                        "SESSION_TOO_LONG", f"the session passed its limit of {limit:.0f} s of audio",
                        subject="stream-gateway:session-duration",
                    )
            elif kind == "control":
                action = request.control.action
                if action == streaming_pb2.CONTROL_ACTION_FORCE_FINALIZE:
                    await session.force_finalize()
                elif action != streaming_pb2.CONTROL_ACTION_KEEPALIVE:
                    raise InvalidArgument("UNKNOWN_CONTROL", "control.action must be set", field="control.action")
            else:
                raise InvalidArgument(
                    "CONFIG_REPEATED" if kind == "config" else "EMPTY_REQUEST",
                    "only the first message may carry a config; later ones carry audio or control",
                    field="config" if kind == "config" else "request",
                )
        await self._finish(session)
        log.info("session ended", extra={"audio_seconds": round(session.audio_seconds, 3), "decodes": session.decodes,
                                         "decode_retries": session.retries})

    async def _store(self, session: CallSession) -> str:
        try:
            return await session.store(self.bus, self.store, self.settings.job_pool, self.settings.retention_days)
        except Exception:  # noqa: BLE001 - the caller has its finals; the summary says the job is missing
            log.exception("storing the call failed")
            return ""

    @staticmethod
    async def _next(queue: asyncio.Queue) -> object:
        item = await queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    @staticmethod
    async def _read(request_iterator: AsyncIterator[Req], queue: asyncio.Queue) -> None:
        """Move requests into the one-slot queue (blocks while the session loop is busy)."""
        try:
            async for request in request_iterator:
                await queue.put(request)
            await queue.put(_END)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the loop, which raises it
            await queue.put(exc)


async def create_server(settings: Settings) -> GrpcServer:
    """Connect to NATS and the store, load Silero VAD, start the server; SERVING when all are ready."""
    from scribe_libs.streaming.vad import load_silero_session

    bus = await busmod.connect(
        settings.nats, "scribe-stream-gateway", retention_seconds=settings.retention_days * 86400
    )
    store = open_store(settings.store)
    await store.ensure_bucket(AUDIO_BUCKET)
    await store.ensure_bucket(RESULTS_BUCKET, expiry_days=settings.retention_days)
    vad_session = await asyncio.to_thread(load_silero_session)
    registry = await WorkerRegistry(bus.workers, bus).start()
    workers = WorkerPool(bus, settings, registry)
    temp = OwnedTempDir(settings.temp_dir, "stream-gateway").open()  # clears what a killed gateway left
    servicer = StreamGatewayServicer(settings, bus, store, workers, vad_session, temp=temp)
    server = await start_grpc_server(
        settings,
        lambda s: streaming_pb2_grpc.add_StreamGatewayServicer_to_server(servicer, s),
        [streaming_pb2.DESCRIPTOR.services_by_name["StreamGateway"].full_name],
    )

    async def stop() -> None:
        await workers.close()
        await registry.stop()
        await bus.close()
        temp.close()

    server.on_stop.append(stop)
    await server.set_serving(True)
    log.info("stream gateway ready", extra={"max_sessions": settings.max_sessions})
    return server
