"""This worker's device and compute type, decided at start and reported in its profile."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field

from scribe_libs.models import ModelRegistry
from scribe_transcriber.config import Settings
from scribe_transcriber.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class DevicePlan:
    """Device facts and the compute type chosen for them, with the reasons."""

    device: str
    compute_type: str
    cpu_cores: int
    gpu_name: str = ""
    compute_capability: str = ""
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    decisions: list[str] = field(default_factory=list)


def _meminfo(key: str) -> int:
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def plan_device(settings: Settings) -> DevicePlan:
    """Pick the device (CUDA when present and allowed, else CPU) and the compute type."""
    import ctranslate2

    cores = len(os.sched_getaffinity(0))
    cuda = ctranslate2.get_cuda_device_count() if settings.device in ("auto", "cuda") else 0
    device = "cuda" if cuda > 0 else "cpu"
    decisions = [f"device {device}: {cuda} CUDA device(s) visible, {cores} CPU cores"]
    supported = set(ctranslate2.get_supported_compute_types(device))
    wanted = settings.compute_type
    if wanted == "auto":
        compute_type = "float16" if device == "cuda" and "float16" in supported else "int8"
        decisions.append(f"compute type {compute_type} chosen for {device}")
    elif wanted in supported:
        compute_type = wanted
        decisions.append(f"compute type {compute_type} as requested")
    else:
        compute_type = "int8" if "int8" in supported else "float32"
        decisions.append(f"requested compute type {wanted} unsupported on {device}; using {compute_type}")
        log.warning(decisions[-1])
    return DevicePlan(
        device=device,
        compute_type=compute_type,
        cpu_cores=cores,
        memory_total_bytes=_meminfo("MemTotal"),
        memory_free_bytes=_meminfo("MemAvailable"),
        decisions=decisions,
    )


async def load_engine(settings: Settings, plan: DevicePlan, registry: ModelRegistry) -> Engine:
    """Resolve and load every configured model on the planned device.

    Raises:
        scribe_libs.models.ModelUnavailable: a model has no source.
        RuntimeError: CTranslate2 could not load a model (e.g. out of memory).
    """
    engine = Engine(plan.device, settings.device_index, plan.compute_type, settings.cpu_threads or os.cpu_count() or 0)
    for name in settings.models:
        path = await registry.resolve(name)
        await asyncio.to_thread(engine.load, name, path)
    return engine
