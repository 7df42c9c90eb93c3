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
from scribe_libs import __version__
from scribe_libs import bus as busmod
from scribe_libs.jobs import AUDIO_BUCKET, RESULTS_BUCKET, now_timestamp
from scribe_libs.models import ModelRegistry
from scribe_libs.objectstore import open_store
from scribe_libs.server import GrpcServer, start_grpc_server
from scribe_transcriber.config import Settings
from scribe_transcriber.device import DevicePlan, load_engine, plan_device
from scribe_transcriber.engine import Engine
from scribe_transcriber.worker import Worker

log = logging.getLogger(__name__)


@dataclass
class TranscriberState:
    """What GetProfile and the heartbeat report."""

    settings: Settings
    plan: DevicePlan
    engine: Engine | None = None
    worker: Worker | None = None
    port: int = 0
    start_time: object = field(default_factory=now_timestamp)

    def profile(self) -> transcriber_pb2.WorkerProfile:
        """The current WorkerProfile."""
        s, plan = self.settings, self.plan
        engine = self.engine
        profile = transcriber_pb2.WorkerProfile(
            worker_id=s.worker_id,
            pod=s.pod_name,
            node=s.node_name,
            pool=s.pool,
            device=plan.device,
            gpu_name=plan.gpu_name,
            compute_capability=plan.compute_capability,
            memory_total_bytes=plan.memory_total_bytes,
            memory_free_bytes=plan.memory_free_bytes,
            memory_used_by_models_bytes=sum(m.memory_bytes for m in engine.models.values()) if engine else 0,
            compute_type_requested=s.compute_type,
            compute_type_effective=plan.compute_type,
            models_loaded=list(engine.models) if engine else [],
            batch_capacity=1,
            realtime_capacity=0,
            current_load=self.worker.current_load if self.worker else 0,
            real_time_factor=self.worker.real_time_factor if self.worker else 0.0,
            endpoint=f"{s.advertise_host}:{self.port}",
            version=__version__,
            cpu_cores=plan.cpu_cores,
            decisions=plan.decisions,
        )
        profile.start_time.CopyFrom(self.start_time)
        profile.update_time.CopyFrom(now_timestamp())
        return profile


class TranscriberServicer(transcriber_pb2_grpc.TranscriberServicer):
    """Implements scribe.v1.Transcriber."""

    def __init__(self, state: TranscriberState):
        self.state = state

    async def GetProfile(  # noqa: N802 - gRPC method name
        self, request: transcriber_pb2.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> transcriber_pb2.GetProfileResponse:
        """This worker's profile."""
        return transcriber_pb2.GetProfileResponse(profile=self.state.profile())


async def _heartbeat(state: TranscriberState, bus: busmod.Bus) -> None:
    """Write the profile to ``scribe_workers`` every WORKER_HEARTBEAT_SECONDS (TTL bucket)."""
    while True:
        try:
            await bus.workers.put(state.settings.worker_id, state.profile().SerializeToString())
        except Exception:  # noqa: BLE001 - the next beat retries
            log.warning("could not write worker profile", exc_info=True)
        await asyncio.sleep(busmod.WORKER_HEARTBEAT_SECONDS)


async def create_server(settings: Settings) -> GrpcServer:
    """Start the gRPC server (NOT_SERVING), load models, then consume jobs and report SERVING.

    Model loading runs in a thread; the server answers health checks meanwhile. If a model is
    unavailable the server stays NOT_SERVING and the error is logged.
    """
    plan = plan_device(settings)
    state = TranscriberState(settings=settings, plan=plan)
    server = await start_grpc_server(
        settings,
        lambda s: transcriber_pb2_grpc.add_TranscriberServicer_to_server(TranscriberServicer(state), s),
        [transcriber_pb2.DESCRIPTOR.services_by_name["Transcriber"].full_name],
    )
    state.port = server.port
    bus = await busmod.connect(settings.nats, f"scribe-transcriber-{settings.worker_id}")
    store = open_store(settings.store)
    await store.ensure_bucket(AUDIO_BUCKET)
    await store.ensure_bucket(RESULTS_BUCKET)
    registry = ModelRegistry(settings.model_store, store)
    tasks: list[asyncio.Task] = []

    async def start() -> None:
        try:
            engine = await load_engine(settings, plan, registry)
        except Exception as exc:  # noqa: BLE001 - readiness stays false with the reason
            log.error("transcriber not ready: %s", getattr(exc, "message", exc), exc_info=True)
            return
        state.engine = engine
        worker = Worker(settings, bus, store, engine)
        state.worker = worker
        tasks.append(asyncio.create_task(_heartbeat(state, bus)))
        tasks.append(asyncio.create_task(worker.run()))
        await server.set_serving(True)
        log.info("transcriber ready", extra={"pool": settings.pool, "models": settings.models})

    tasks.append(asyncio.create_task(start()))

    async def stop() -> None:
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
