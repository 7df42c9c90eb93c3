"""The Starlette application: OpenAI-compatible routes, health and readiness.

Routes:

* ``POST /v1/audio/transcriptions`` (multipart/form-data): ``file`` (required), ``model``
  (required by OpenAI; empty or ``whisper-1`` is the deployment's default model), ``language``
  (ISO 639-1 or BCP-47), ``prompt`` (Whisper's initial prompt), ``response_format``
  (json|text|srt|vtt|verbose_json, default json), ``temperature`` (0..1, checked but not used:
  the platform decodes with its own temperature schedule), ``timestamp_granularities[]``
  (word and/or segment; word asks the platform for word timestamps), and speaches' ``hotwords``
  (comma separated). ``stream=true`` is refused (400). An ``Idempotency-Key`` header becomes the
  job's ``request_id``, so a retried request joins the job the first one created.
  The body is spooled to a temporary file while it is read (Starlette's multipart parser keeps
  at most 1 MiB of a file part in memory), then streamed to Ingest.CreateJob in chunks; the job
  is watched with Results.WatchJob and its transcript fetched with Results.GetTranscript.
  A request that ends first (the caller disconnects, or ``request_timeout_seconds`` passes)
  cancels its job.
* ``GET /v1/models``, ``GET /v1/models/{model}``: the models live workers have loaded
  (Results.ListWorkers ``models_loaded``), the configured ``models``, and ``whisper-1``.
* ``GET /healthz`` (liveness: the process answers), ``GET /readyz`` (readiness: Ingest and
  Results answer gRPC health SERVING, and the gateway is not draining).

Auth: ``Authorization: Bearer <key>`` (or ``x-api-key``) is passed on to every gRPC call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_http_gateway.backend import Backends, Deadline
from scribe_http_gateway.config import Settings
from scribe_http_gateway.errors import (
    INVALID_REQUEST,
    SERVER_ERROR,
    HttpError,
    bad_request,
    from_failed_job,
    from_rpc_error,
)
from scribe_http_gateway.openai_api import (
    RESPONSE_FORMATS,
    WHISPER_1,
    json_object,
    model_object,
    normalize_language,
    parse_granularities,
    parse_temperature,
    transcript_text,
    verbose_json_object,
)

log = logging.getLogger(__name__)

S = jobs_pb2.JobState
#: Multipart overhead allowed above max_upload_bytes (boundaries, part headers, small fields).
_FORM_OVERHEAD_BYTES = 1024 * 1024
_TEXT = "text/plain; charset=utf-8"
_RENDERED = {"srt": transcript_pb2.TRANSCRIPT_FORMAT_SRT, "vtt": transcript_pb2.TRANSCRIPT_FORMAT_VTT}


async def _disconnected(receive: Receive) -> None:
    """Return when the client disconnects (the body has been read: receive waits for that alone)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _BodyTooLarge(Exception):
    pass


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises _BodyTooLarge once more than ``limit`` body bytes arrived."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return wrapped


def _too_large(limit: int) -> HttpError:
    return HttpError(413, f"the request body exceeds the {limit} byte limit", INVALID_REQUEST, "audio_too_large",
                     "file")


def api_key_metadata(request: Request) -> list[tuple[str, str]]:
    """The caller's key as gRPC metadata (``x-api-key``); empty when the request carries none."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    key = token.strip() if scheme.lower() == "bearer" else ""
    key = key or request.headers.get("x-api-key", "").strip()
    return [("x-api-key", key)] if key else []


class Gateway:
    """Route handlers over one :class:`Backends` and the settings."""

    def __init__(self, settings: Settings, backends: Backends):
        self.settings = settings
        self.backends = backends
        self.draining = False
        self._background: set[asyncio.Task[None]] = set()

    # --- health ----------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        """Liveness: the process serves HTTP."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Readiness: both backends SERVING and not draining; else 503 with what is wrong."""
        backends = await self.backends.health(self.settings.backend_check_timeout_seconds)
        ready = not self.draining and all(v == "SERVING" for v in backends.values())
        body = {"status": "ready" if ready else "unavailable", "draining": self.draining, "backends": backends}
        return JSONResponse(body, status_code=200 if ready else 503)

    # --- models ----------------------------------------------------------------------------

    async def _models(self, request: Request) -> list[dict[str, Any]]:
        try:
            workers = await self.backends.workers(api_key_metadata(request), timeout=10)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        created: dict[str, int] = {}
        for worker in workers:
            started = int(worker.start_time.seconds)
            for name in worker.models_loaded:
                created[name] = min(created.get(name, started), started) if started else created.get(name, 0)
        for name in self.settings.models:
            created.setdefault(name, 0)
        created.setdefault(WHISPER_1, 0)
        return [model_object(name, created[name]) for name in sorted(created)]

    async def list_models(self, request: Request) -> Response:
        """``GET /v1/models``: OpenAI's list object."""
        return JSONResponse({"object": "list", "data": await self._models(request)})

    async def get_model(self, request: Request) -> Response:
        """``GET /v1/models/{model}``: one model object, or 404 model_not_found."""
        wanted = request.path_params["model"]
        for model in await self._models(request):
            if model["id"] == wanted:
                return JSONResponse(model)
        raise HttpError(404, f"The model '{wanted}' does not exist", INVALID_REQUEST, "model_not_found", "model")

    # --- transcriptions --------------------------------------------------------------------

    async def transcriptions(self, request: Request) -> Response:
        """``POST /v1/audio/transcriptions`` (see the module docstring)."""
        limit = self.settings.max_upload_bytes + _FORM_OVERHEAD_BYTES
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            raise _too_large(self.settings.max_upload_bytes)
        if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
            raise bad_request("the request body must be multipart/form-data with a 'file' field", "file",
                              "invalid_content_type")
        limited = Request(request.scope, _limited(request.receive, limit))
        try:
            form = await limited.form(max_files=1, max_fields=64)
        except _BodyTooLarge:
            raise _too_large(self.settings.max_upload_bytes) from None
        except (MultiPartException, HTTPException) as exc:  # Starlette raises the latter inside an app
            detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
            raise bad_request(f"the multipart body could not be read: {detail}", None, "invalid_multipart") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise bad_request("'file' is required: the audio file to transcribe, as a multipart file part", "file",
                                  "missing_required_parameter")
            if upload.size is not None and upload.size > self.settings.max_upload_bytes:
                raise _too_large(self.settings.max_upload_bytes)
            if not upload.size:
                raise bad_request("the uploaded file is empty", "file", "empty_audio")

            def field(name: str) -> str:
                value = form.get(name)
                return value if isinstance(value, str) else ""

            response_format = field("response_format").strip() or "json"
            if response_format not in RESPONSE_FORMATS:
                raise bad_request(
                    f"response_format {response_format!r} is not one of {', '.join(RESPONSE_FORMATS)}",
                    "response_format",
                )
            if field("stream").strip().lower() in ("true", "1"):
                raise bad_request("stream=true is not supported; the response comes when the transcript is final",
                                  "stream", "unsupported_value")
            parse_temperature(field("temperature"))  # accepted, checked, not used (see the docstring)
            granularities = parse_granularities(
                [v for key in ("timestamp_granularities[]", "timestamp_granularities")
                 for v in form.getlist(key) if isinstance(v, str)]
            )
            words = response_format == "verbose_json" and "word" in granularities
            model = field("model").strip()
            if model == WHISPER_1:
                model = self.settings.default_model
            config = transcript_pb2.RecognitionConfig(
                language=normalize_language(field("language")),
                model=model,
                initial_prompt=field("prompt"),
                word_timestamps=words,
                hotwords=[h.strip() for h in field("hotwords").split(",") if h.strip()],
            )
            spec = jobs_pb2.JobSpec(
                config=config,
                filename=(upload.filename or "")[:255],
                labels={"api": "openai"},
                request_id=request.headers.get("idempotency-key", "").strip()[:128],
            )
            metadata = api_key_metadata(request)
            deadline = Deadline(self.settings.request_timeout_seconds)
            job = asyncio.ensure_future(
                self._run_job(spec, upload, metadata, deadline, response_format, granularities)
            )
            gone = asyncio.ensure_future(_disconnected(request.receive))
            try:
                await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not job.done():
                    # The caller went away (or this handler was cancelled): stop the job's work.
                    job.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await job
            if job.cancelled():
                log.info("caller disconnected before the transcript was ready")
                return Response(status_code=499)
            return job.result()
        finally:
            await form.close()

    async def _chunks(self, upload: UploadFile) -> AsyncIterator[bytes]:
        await upload.seek(0)
        while True:
            chunk = await upload.read(self.settings.upload_chunk_bytes)
            if not chunk:
                return
            yield chunk

    async def _run_job(
        self,
        spec: jobs_pb2.JobSpec,
        upload: UploadFile,
        metadata: list[tuple[str, str]],
        deadline: Deadline,
        response_format: str,
        granularities: set[str],
    ) -> Response:
        try:
            job = await self.backends.create_job(spec, self._chunks(upload), metadata, deadline)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finished = False
        try:
            job = await self.backends.wait_terminal(job.job_id, metadata, deadline)
            if job.state == S.JOB_STATE_FAILED:
                finished = True
                raise from_failed_job(job.error_reason, job.error_message)
            if job.state == S.JOB_STATE_CANCELLED:
                finished = True
                raise HttpError(409, f"job {job.job_id} was cancelled", INVALID_REQUEST, "job_cancelled")
            finished = True
            if response_format in _RENDERED:
                text = await self.backends.rendered(job.job_id, _RENDERED[response_format], metadata, deadline)
                return PlainTextResponse(text, media_type=_TEXT)
            transcript = await self.backends.transcript(job.job_id, metadata, deadline)
            if response_format == "text":
                return PlainTextResponse(transcript_text(transcript) + "\n", media_type=_TEXT)
            if response_format == "verbose_json":
                return JSONResponse(verbose_json_object(transcript, granularities))
            return JSONResponse(json_object(transcript))
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        finally:
            if not finished:
                # The caller went away or the deadline passed before the job ended: stop its work.
                task = asyncio.get_running_loop().create_task(self.backends.cancel_quietly(job.job_id, metadata))
                self._background.add(task)
                task.add_done_callback(self._background.discard)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return exc.response()


async def _starlette_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    kind = INVALID_REQUEST if exc.status_code < 500 else SERVER_ERROR
    return HttpError(exc.status_code, str(exc.detail), kind, code).response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    import uuid

    error_id = uuid.uuid4().hex[:12]
    log.error("internal error %s: %r", error_id, exc, exc_info=exc, extra={"error_id": error_id})
    return HttpError(500, f"internal error (error id {error_id})", SERVER_ERROR, "internal_error").response()


def create_app(settings: Settings, backends: Backends) -> tuple[Starlette, Gateway]:
    """The ASGI app and its handlers (the server flips ``gateway.draining`` on SIGTERM)."""
    gateway = Gateway(settings, backends)
    routes = [
        Route("/v1/audio/transcriptions", gateway.transcriptions, methods=["POST"]),
        Route("/v1/models", gateway.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", gateway.get_model, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={HttpError: _http_error, HTTPException: _starlette_error, Exception: _unexpected},
        # A server span per request (W3C traceparent from the caller honoured), so logs and the
        # gRPC calls made for it carry one trace id. Probes are not traced.
        middleware=[
            Middleware(OpenTelemetryMiddleware, excluded_urls="/healthz,/readyz", exclude_spans=["receive", "send"])
        ],
    )
    return app, gateway
