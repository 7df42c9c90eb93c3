"""Transcriber start-up: device, models, profile heartbeat, gRPC server, worker loop.

Health stays NOT_SERVING until every configured model is loaded and NATS is connected; a model
that cannot be found or loaded keeps it NOT_SERVING with the reason logged (never a hang).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import grpc

from scribe.v1 import transcriber_pb2, transcriber_pb2_grpc
from scribe_libs import bus as busmod
from scribe_libs import metrics
from scribe_libs.devices import RealtimeServing
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, now_timestamp
from scribe_libs.models import ModelRegistry
from scribe_libs.objectstore import open_store
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_transcriber.config import Settings
from scribe_transcriber.decode import DecodeScheduler, serve_decode, start_decoder
from scribe_transcriber.device import WorkerDevice, start_device
from scribe_transcriber.engine import Engine
from scribe_transcriber.podlabels import labeler_from
from scribe_transcriber.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class TranscriberState:
    """What GetProfile and the heartbeat report."""

    settings: Settings
    device: WorkerDevice = field(default_factory=WorkerDevice)
    engine: Engine | None = None
    worker: Worker | None = None
    decoder: DecodeScheduler | None = None
    port: int = 0
    start_time: object = field(default_factory=now_timestamp)

    def profile(self) -> transcriber_pb2.WorkerProfile:
        """The current WorkerProfile (scribe_transcriber.device: the decision and its reasons)."""
        s = self.settings
        realtime = (
            self.decoder.serving(s.realtime_target_period_seconds, s.realtime_utilization)
            if self.decoder is not None
            else RealtimeServing()  # Decode is not served yet: no live sessions are admitted
        )
        return self.device.profile(
            s,
            endpoint=f"{s.advertise_host}:{self.port}",
            start_time=self.start_time.ToNanoseconds() / 1e9,
            current_load=self.worker.current_load if self.worker else 0,
            real_time_factor=self.worker.real_time_factor if self.worker else 0.0,
            realtime=realtime,
        )


class TranscriberServicer(transcriber_pb2_grpc.TranscriberServicer):
    """Implements scribe.v1.Transcriber."""

    def __init__(self, state: TranscriberState):
        self.state = state

    async def GetProfile(  # noqa: N802 - gRPC method name
        self, request: transcriber_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> transcriber_pb2.GetProfileResponse:
        """This worker's profile."""
        return transcriber_pb2.GetProfileResponse(profile=self.state.profile())

    async def Decode(  # noqa: N802 - gRPC method name
        self, request: transcriber_pb2.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> transcriber_pb2.DecodeResponse:
        """One streaming window (scribe_transcriber.decode)."""
        return await serve_decode(self.state.decoder, request)


async def _heartbeat(state: TranscriberState, bus: busmod.Bus) -> None:
    """Write the profile to ``scribe_workers`` every WORKER_HEARTBEAT_SECONDS (TTL bucket).

    Each beat re-reads the device's free memory; in Kubernetes the pod labels follow the profile
    (re-patched when they change, e.g. after an out-of-memory downgrade).
    """
    s = state.settings
    labeler = labeler_from(s.pod_name, s.pod_namespace, s.kubernetes_api_host)
    while True:
        try:
            await asyncio.to_thread(state.device.refresh_memory)
            profile = state.profile()
            metrics.realtime.capacity, metrics.realtime.sessions = profile.realtime_capacity, profile.realtime_sessions
            await bus.workers.put(s.worker_id, profile.SerializeToString())
            if labeler is not None:
                await asyncio.to_thread(labeler.apply, profile, only_if_changed=True)
        except Exception:  # noqa: BLE001 - the next beat retries
            log.warning("could not write worker profile", exc_info=True)
        await asyncio.sleep(busmod.WORKER_HEARTBEAT_SECONDS)


async def create_server(settings: Settings) -> GrpcServer:
    """Start the gRPC server (NOT_SERVING), load models, then consume jobs and report SERVING.

    Model loading runs in a thread; the server answers health checks meanwhile. If a model is
    unavailable the server stays NOT_SERVING and the error is logged.
    """
    state = TranscriberState(settings=settings)
    server = await start_grpc_server(
        settings,
        lambda s: transcriber_pb2_grpc.add_TranscriberServicer_to_server(TranscriberServicer(state), s),
        [transcriber_pb2.DESCRIPTOR.services_by_name["Transcriber"].full_name],
    )
    state.port = server.port
    bus = await busmod.connect(
        settings.nats, f"scribe-transcriber-{settings.worker_id}", retention_seconds=settings.retention_days * 86400
    )
    store = open_store(settings.store)
    await store.ensure_bucket(AUDIO_BUCKET)
    await store.ensure_bucket(RESULTS_BUCKET)
    registry = ModelRegistry(settings.model_store, store)
    tasks: list[asyncio.Task] = []

    async def start() -> None:
        device = await start_device(settings, registry, state.device)
        if device.engine is None:
            # Not ready: health stays NOT_SERVING; the reason is logged and in GetProfile's decisions
            # (and on the pod's scribe.dev/profile annotation in Kubernetes).
            labeler = labeler_from(settings.pod_name, settings.pod_namespace, settings.kubernetes_api_host)
            if labeler is not None:
                await asyncio.to_thread(labeler.apply, state.profile())
            return
        engine = device.engine
        try:
            decoder = await start_decoder(settings, engine, registry)
        except Exception as exc:  # noqa: BLE001 - readiness stays false with the reason
            log.error("transcriber not ready: %s", getattr(exc, "message", exc), exc_info=True)
            return
        state.engine = engine
        # As many jobs at once as the device's memory allows (device.job_slots), re-read before
        # each fetch so an out-of-memory downgrade lowers it.
        worker = Worker(settings, bus, store, engine, slots=lambda: device.job_slots(settings))
        state.worker = worker
        state.decoder = decoder
        tasks.append(asyncio.create_task(_heartbeat(state, bus), name=f"heartbeat-{settings.worker_id}"))
        tasks.append(asyncio.create_task(worker.run()))
        await server.set_serving(True)
        log.info("transcriber ready", extra={"pool": settings.pool, "models": settings.models})

    tasks.append(asyncio.create_task(start()))

    async def stop() -> None:
        if state.decoder is not None:
            await state.decoder.stop()
        if state.worker is not None:
            await state.worker.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await bus.workers.delete(settings.worker_id)
        await bus.close()

    server.on_stop.append(stop)
    return server
