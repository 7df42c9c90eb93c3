"""Loading faster-whisper models on one device and measuring what each takes.

:class:`ModelLoader` loads a model at a compute type and measures the memory it took (CPU:
resident set size before/after; CUDA: NVML used memory before/after); it is the ``measure``
callback of :func:`scribe_libs.devices.decide`, so a decision works on real numbers. The
transcriber (its Engine), ``scribe detect --measure`` and ``tools/measure_models.py`` share it.

faster-whisper (the ``asr`` extra of scribe-libs) and pynvml are imported only when a model is
loaded or a GPU's memory is read, so the rest of :mod:`scribe_libs.devices` needs neither.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scribe_libs.devices.memory import canonical_model, estimate_model_bytes
from scribe_libs.devices.probe import nvml_handle

log = logging.getLogger(__name__)

#: A measured load delta under this share of the static estimate is taken as blurred, not real
#: (seen: 0.4 MB for tiny.en int8 while a second worker loaded in the same test process).
MIN_PLAUSIBLE_MEASURE = 0.25

#: ``factory(path, device, device_index, compute_type, cpu_threads, num_workers) -> (model,
#: pipeline)``; the pipeline has faster-whisper's ``transcribe(audio, **options) -> (segments, info)``.
ModelFactory = Callable[[Path, str, int, str, int, int], tuple[Any, Any]]
#: ``resolve(model name) -> directory`` (blocking; the registry's resolve run on the event loop).
Resolve = Callable[[str], Path]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is CTranslate2's (or the allocator's) out-of-memory error.

    CTranslate2 raises ``RuntimeError("CUDA failed with error out of memory")`` on the GPU and
    ``std::bad_alloc`` (Python ``MemoryError``) on the CPU.
    """
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def rss_bytes() -> int:
    """Resident set size of this process, bytes (from /proc/self/statm; 0 where unavailable)."""
    try:
        import resource

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


class MemoryGauge:
    """Memory in use on one device, bytes: RSS of this process on CPU, NVML used memory on CUDA.

    On CUDA the figure is the whole GPU's used memory (other processes included): the transcriber
    owns its GPU, so the before/after difference is what the model took. Without NVML it reports
    ``None`` and the decision keeps its estimate.
    """

    def __init__(self, device: str, device_index: int = 0, nvml_module: Any | None = None):
        self.device = device
        self.device_index = device_index
        self._nvml = nvml_module
        self._handle: Any | None = None

    def used_bytes(self) -> int | None:
        """Bytes in use now, or ``None`` when the device's memory cannot be read."""
        if self.device == "cpu":
            return rss_bytes() or None
        try:
            if self._handle is None:
                if self._nvml is None:
                    import pynvml

                    self._nvml = pynvml
                self._nvml.nvmlInit()
                self._handle = nvml_handle(self._nvml, self.device_index)
            return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)
        except Exception:  # noqa: BLE001 - no NVML: the estimate stands
            log.debug("NVML memory query failed", exc_info=True)
            return None


def _plausible(name: str, compute_type: str, device: str, measured: int) -> int:
    """``measured`` (bytes), or the static estimate when the delta cannot be the model's.

    A load delta under :data:`MIN_PLAUSIBLE_MEASURE` of the estimate means the process's memory
    changed for another reason meanwhile (another worker in the same process freed memory while
    this one loaded); 0 (unreadable) stays 0.
    """
    try:
        estimate = estimate_model_bytes(name, compute_type, device)
    except KeyError:
        return measured
    if measured and measured < estimate * MIN_PLAUSIBLE_MEASURE:
        log.info("memory delta not plausible; using the estimate",
                 extra={"model": name, "measured_bytes": measured, "estimate_bytes": estimate})
        return estimate
    return measured


def whisper_factory(
    path: Path, device: str, device_index: int, compute_type: str, cpu_threads: int, num_workers: int = 1
) -> tuple[Any, Any]:
    """faster-whisper's ``WhisperModel`` and its ``BatchedInferencePipeline``.

    The model has ``num_workers`` CTranslate2 replicas of ``cpu_threads`` threads each.
    """
    from faster_whisper import BatchedInferencePipeline, WhisperModel

    model = WhisperModel(
        str(path), device=device, device_index=device_index, compute_type=compute_type, cpu_threads=cpu_threads,
        num_workers=max(num_workers, 1),
    )
    return model, BatchedInferencePipeline(model)


@dataclass
class LoadedModel:
    """A resident model and what loading it cost."""

    name: str
    path: Path
    model: object
    pipeline: object
    memory_bytes: int
    load_seconds: float
    compute_type: str = ""


@dataclass
class ModelLoader:
    """Loads models on one device, measures them, and keeps them until released.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        device_index: CUDA index.
        cpu_threads: CTranslate2 intra-op threads per replica (0 = all cores).
        resolve: Model name -> directory.
        factory: Builds the model (faster-whisper by default; tests give a fake).
        gauge: Measures device memory (``MemoryGauge(device, device_index)`` by default).
        loaded: ``(model, compute type)`` -> the loaded model.
    """

    device: str
    device_index: int
    cpu_threads: int
    resolve: Resolve
    factory: ModelFactory = whisper_factory
    gauge: MemoryGauge | None = None
    loaded: dict[tuple[str, str], LoadedModel] = field(default_factory=dict)
    num_workers: int = 1
    """CTranslate2 replicas (``inter_threads``): calls decoded in parallel, e.g. one per core on CPU."""

    def __post_init__(self) -> None:
        if self.gauge is None:
            self.gauge = MemoryGauge(self.device, self.device_index)
        self._lock = threading.Lock()

    def load(self, name: str, compute_type: str, path: Path | None = None) -> LoadedModel:
        """The model at ``compute_type``, loaded now unless already resident.

        Models held at another compute type are released first: the decision search moves from
        one precision to the next, and the GPU should not hold both.

        Raises:
            MemoryError: The model does not fit (CTranslate2's out-of-memory).
            scribe_libs.models.ModelUnavailable: The model has no source.
            RuntimeError / ValueError: CTranslate2 cannot load it (e.g. unsupported compute type).
        """
        name = canonical_model(name)
        with self._lock:
            key = (name, compute_type)
            if key in self.loaded:
                return self.loaded[key]
            self._release([k for k in self.loaded if k[1] != compute_type])
            path = path or self.resolve(name)
            before, started = self.gauge.used_bytes(), time.monotonic()
            try:
                model, pipeline = self.factory(
                    path, self.device, self.device_index, compute_type, self.cpu_threads, self.num_workers
                )
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise MemoryError(f"loading {name} at {compute_type} on {self.device}: {exc}") from exc
                raise
            after = self.gauge.used_bytes()
            memory = max(after - before, 0) if before is not None and after is not None else 0
            memory = _plausible(name, compute_type, self.device, memory)
            loaded = LoadedModel(name, path, model, pipeline, memory, time.monotonic() - started, compute_type)
            self.loaded[key] = loaded
        log.info(
            "model loaded",
            extra={
                "model": name,
                "device": self.device,
                "compute_type": compute_type,
                "memory_bytes": memory,
                "load_seconds": round(loaded.load_seconds, 2),
            },
        )
        return loaded

    def measure(self, name: str, compute_type: str) -> int | None:
        """``decide``'s measure callback: load the model and return the bytes it took.

        Returns ``None`` (keep the estimate) when the device's memory cannot be read.

        Raises:
            MemoryError: It does not fit.
        """
        loaded = self.load(name, compute_type)
        return loaded.memory_bytes or None

    def keep_only(self, keep: Iterable[tuple[str, str]]) -> None:
        """Release every model except ``keep`` (``(model, compute type)`` pairs)."""
        wanted = {(canonical_model(m), ct) for m, ct in keep}
        with self._lock:
            self._release([k for k in self.loaded if k not in wanted])

    def _release(self, keys: list[tuple[str, str]]) -> None:
        for key in keys:
            del self.loaded[key]
            log.info("model released", extra={"model": key[0], "compute_type": key[1]})
        if keys:
            gc.collect()  # CTranslate2 frees the weights when the Python object goes
