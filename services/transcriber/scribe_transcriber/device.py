"""This worker's device, compute type and models: probed, decided and loaded at start-up.

Flow (DESIGN.md, "Device profiles and pools"): :class:`scribe_libs.devices.SystemProbe` lists
the devices; :func:`scribe_libs.devices.select_device` picks the configured one;
:func:`scribe_libs.devices.decide` chooses the compute type and models, loading each candidate
for real through :class:`ModelLoader` (its ``measure``), stepping down precision, then model,
then to the CPU, each step logged with its reason. The effective and requested compute types
are both reported; a mismatch is a warning. When nothing fits (or a model cannot be found) the
worker is not ready: health stays NOT_SERVING, the reason is logged and is the last line of the
profile's ``decisions``. The decision's ``batch_capacity`` (made with this worker's
``batch_size`` and CPU replicas) is how many batch jobs the worker loop runs at once and what the
profile advertises; the ``max_concurrent_jobs`` setting, when > 0, replaces it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scribe.v1 import transcriber_pb2
from scribe_libs import __version__, metrics
from scribe_libs.devices import (
    MAX_JOB_SLOTS,
    Decision,
    DeviceFacts,
    DeviceProbe,
    RealtimeServing,
    SystemProbe,
    decide,
    profile_from,
    select_device,
)
from scribe_libs.models import ModelRegistry
from scribe_transcriber.config import Settings
from scribe_transcriber.engine import (
    Engine,
    ModelFactory,
    ModelLoader,
    cpu_layout,
    default_cpu_threads,
    whisper_factory,
)

log = logging.getLogger(__name__)


@dataclass
class WorkerDevice:
    """What start-up found and decided; the source of this worker's profile.

    Attributes:
        facts: The device the decision is for (the CPU after a fall-back); ``None`` until probed
            or when the configured device is absent.
        decision: From :func:`decide`; ``None`` until decided.
        engine: The loaded models; ``None`` unless ready.
        not_ready_reason: Why the worker cannot serve (empty when ready or still starting).
        selection_reason: Why this device.
        started: Whether start-up has finished (ready or not).
    """

    facts: DeviceFacts | None = None
    decision: Decision | None = None
    engine: Engine | None = None
    not_ready_reason: str = ""
    selection_reason: str = ""
    started: bool = False
    probe: DeviceProbe | None = field(default=None, repr=False)

    @property
    def ready(self) -> bool:
        """Whether the models are loaded and the worker can take jobs."""
        return self.engine is not None and not self.not_ready_reason

    def job_slots(self, settings: Settings) -> int:
        """Concurrent batch jobs for the decision in effect; 0 when not ready.

        The decision's ``batch_capacity`` (:func:`scribe_libs.devices.job_slots`, made by
        :func:`decide` with this worker's ``batch_size`` and CPU replicas on the memory free
        before the models loaded), following an out-of-memory downgrade (the engine's decision).
        ``max_concurrent_jobs`` > 0 (an operator who measured) replaces it.
        """
        decision = self.engine.decision if self.engine is not None else self.decision
        if decision is None or not decision.ready:
            return 0
        return _max_concurrent_jobs(settings) or decision.batch_capacity

    def profile(
        self,
        settings: Settings,
        *,
        endpoint: str,
        start_time: float,
        current_load: int = 0,
        real_time_factor: float = 0.0,
        realtime: RealtimeServing | None = None,
    ) -> transcriber_pb2.WorkerProfile:
        """The current ``WorkerProfile`` (:func:`scribe_libs.devices.profile_from`).

        After an out-of-memory downgrade it is the new decision's. ``start_time`` is Unix seconds;
        ``realtime`` as in ``profile_from`` (None: the decision's planned realtime capacity).
        """
        decision = self.engine.decision if self.engine is not None else self.decision
        profile = profile_from(
            decision,
            self.facts,
            worker_id=settings.worker_id,
            pool=settings.pool,
            pod=settings.pod_name,
            node=settings.node_name,
            endpoint=endpoint,
            version=__version__,
            start_time=start_time,
            update_time=time.time(),
            current_load=current_load,
            real_time_factor=real_time_factor,
            memory_models_bytes=(self.engine.memory_used_by_models() or None) if self.engine is not None else None,
            compute_type_requested=settings.compute_type,
            selection_reason=self.selection_reason,
            not_ready_reason=self.not_ready_reason,
            realtime=realtime,
        )
        if decision is not None and decision.ready:
            profile.batch_capacity = self.job_slots(settings)  # with max_concurrent_jobs applied
        return profile

    def refresh_memory(self) -> None:
        """Re-read the device's free memory (blocking; a failed probe keeps the old figure)."""
        if self.facts is None or self.probe is None:
            return
        try:
            for facts in self.probe.probe():
                if (facts.device, facts.index) == (self.facts.device, self.facts.index):
                    self.facts = dataclasses.replace(self.facts, memory_free_bytes=facts.memory_free_bytes)
                    return
        except Exception:  # noqa: BLE001 - the profile keeps the last figure
            log.debug("memory refresh failed", exc_info=True)


def resident_models(settings: Settings) -> list[str]:
    """The models to keep resident: the configured ones, then the realtime model if not among them.

    The first is the batch model of the decision; the realtime model (``realtime_model``, or the
    first configured model when empty) is planned with its realtime windows.
    """
    models = list(dict.fromkeys(settings.models))
    realtime = settings.realtime_model
    if realtime and realtime not in models:
        models.append(realtime)
    return models


def blocking_resolver(registry: ModelRegistry, loop: asyncio.AbstractEventLoop) -> Callable[[str], Path]:
    """``resolve(name) -> Path`` for worker threads: runs ``registry.resolve`` on ``loop``."""

    def resolve(name: str) -> Path:
        return asyncio.run_coroutine_threadsafe(registry.resolve(name), loop).result()

    return resolve


def decide_and_load(
    settings: Settings,
    probe: DeviceProbe,
    resolve: Callable[[str], Path],
    factory: ModelFactory = whisper_factory,
    device: WorkerDevice | None = None,
) -> WorkerDevice:
    """Probe, decide (loading and measuring the models), and build the engine. Blocking.

    Never raises for a device or model problem: the result is not ready with the reason.

    Args:
        settings: device, device_index, compute_type, models, cpu_threads.
        probe: The device probe (``SystemProbe()``; recorded facts in tests).
        resolve: Model name -> directory (blocking).
        factory: Builds a model (faster-whisper; a fake in tests).
        device: Filled in place (so a profile read meanwhile sees progress); a new one if None.
    """
    out = device or WorkerDevice()
    out.probe = probe
    try:
        probed = probe.probe()
        selection = select_device(
            probed, settings.device, settings.device_index, getattr(probe, "no_gpu_reason", None)
        )
        out.selection_reason = selection.reason
        log.info("device decision: %s", selection.reason)
        if selection.facts is None:
            return _not_ready(out, selection.reason)
        out.facts = selection.facts
        threads, replicas = cpu_layout(settings.cpu_threads, settings.cpu_replicas)
        # CUDA: one CTranslate2 replica per concurrent job, plus one for live Decode windows, so
        # concurrent calls run in parallel instead of queueing on one replica; replicas on one
        # device share the weights (CTranslate2 docs/parallel.md), each only adds its workspace
        # when it runs, which the decision's batch capacity (job_slots) plans for.
        gpu_workers = max(MAX_JOB_SLOTS, _max_concurrent_jobs(settings)) + 1
        loaders = {
            "cuda": ModelLoader("cuda", settings.device_index, default_cpu_threads(settings.cpu_threads), resolve,
                                factory, num_workers=gpu_workers),
            "cpu": ModelLoader("cpu", 0, threads, resolve, factory, num_workers=replicas),
        }
        decision = decide(
            selection.facts,
            resident_models(settings),
            settings.compute_type,
            measure=loaders[selection.facts.device].measure,
            cpu_facts=selection.cpu_facts,
            cpu_measure=loaders["cpu"].measure,
            batch_size=settings.batch_size,
            cpu_replicas=replicas,
        )
        decision.steps.insert(0, selection.reason)
        out.decision = decision
        if decision.device != selection.facts.device and selection.cpu_facts is not None:
            out.facts = selection.cpu_facts
        for device_name, loader in loaders.items():
            if device_name != decision.device or not decision.ready:
                loader.keep_only(())
        if not decision.ready:
            return _not_ready(out, decision.not_ready_reason)
        out.engine = Engine(
            loaders[decision.device], decision, resident_models(settings), piece_seconds=settings.piece_seconds
        )
    except Exception as exc:  # noqa: BLE001 - any start-up failure is a not-ready reason
        reason = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        log.error("transcriber not ready: %s", reason, exc_info=True)
        return _not_ready(out, reason)
    _log_decision(settings, decision, out.job_slots(settings))
    out.started = True
    return out


def _max_concurrent_jobs(settings: Settings) -> int:
    """The configured ``max_concurrent_jobs`` (0 = the decision's batch capacity)."""
    return settings.max_concurrent_jobs


def _not_ready(out: WorkerDevice, reason: str) -> WorkerDevice:
    out.not_ready_reason = reason
    out.started = True
    log.error("transcriber not ready: %s", reason)
    return out


def _log_decision(settings: Settings, decision: Decision, slots: int) -> None:
    level = logging.WARNING if decision.warnings else logging.INFO
    if decision.warnings:
        metrics.downgrades.add(len(decision.warnings), {"cause": "start_up", "device": decision.device})
    log.log(
        level,
        "device decided: %s at %s (requested %s)%s",
        " + ".join(decision.resident_models),
        decision.compute_type_effective,
        settings.compute_type,
        "; " + "; ".join(decision.warnings) if decision.warnings else "",
        extra={
            "device": decision.device,
            "compute_type_requested": settings.compute_type,
            "compute_type_effective": decision.compute_type_effective,
            "models": decision.resident_models,
            "memory_models_bytes": decision.memory_models_bytes,
            "batch_capacity": decision.batch_capacity,
            "batch_size": settings.batch_size,
            "job_slots": slots,
            "realtime_capacity": decision.realtime_capacity,
        },
    )


async def start_device(
    settings: Settings,
    registry: ModelRegistry,
    device: WorkerDevice,
    *,
    probe: DeviceProbe | None = None,
    factory: ModelFactory = whisper_factory,
) -> WorkerDevice:
    """:func:`decide_and_load` in a thread, resolving models on this event loop."""
    resolve = blocking_resolver(registry, asyncio.get_running_loop())
    return await asyncio.to_thread(decide_and_load, settings, probe or SystemProbe(), resolve, factory, device)
