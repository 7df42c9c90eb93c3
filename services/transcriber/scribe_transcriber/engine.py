"""faster-whisper models on one device: loaded and measured once, decoding batch jobs in a thread.

:class:`ModelLoader` loads a model at a compute type and measures the memory it takes (CPU:
resident set size before/after; CUDA: NVML used memory before/after); it is the ``measure``
callback of :func:`scribe_libs.devices.decide` at start-up, so the decision works on real numbers.
:class:`Engine` holds the models of the decision in effect.

Batch jobs go through faster-whisper's ``BatchedInferencePipeline`` (Silero VAD chunks decoded
``batch_size`` at a time; on 2 CPU cores this measured ~10x faster than sequential decoding).
The pipeline yields segments batch by batch; between them the engine reports progress and
checks the cancel flag, so a cancel stops the job at the next chunk boundary.

Out of memory during a job (CTranslate2 raises ``RuntimeError: CUDA failed with error out of
memory``): the engine takes the next step down (:func:`scribe_libs.devices.oom_downgrade`:
lower precision, then a smaller model), reloads and runs the job again, at most
``MAX_OOM_DOWNGRADES`` (2) times; then the job fails with :class:`OutOfMemory`
(``FAILED_PRECONDITION``, reason ``OUT_OF_MEMORY``), which the worker records as FAILED.
"""

from __future__ import annotations

import gc
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scribe.v1 import transcript_pb2
from scribe_libs import metrics
from scribe_libs.audio import WHISPER_SAMPLE_RATE, decode_for_whisper
from scribe_libs.devices import (
    MAX_OOM_DOWNGRADES,
    Decision,
    canonical_model,
    estimate_model_bytes,
    nvml_handle,
    oom_downgrade,
)
from scribe_libs.errors import FailedPrecondition
from scribe_transcriber.decode import RealtimeGate

log = logging.getLogger(__name__)

#: Whisper's window, seconds (openai/whisper audio.py CHUNK_LENGTH). With VAD off, audio is cut
#: into windows of this length (the batched pipeline needs clip boundaries).
CHUNK_SECONDS = 30.0
DEFAULT_BEAM_SIZE = 5
#: A measured load delta under this share of the static estimate is taken as blurred, not real
#: (seen: 0.4 MB for tiny.en int8 while a second worker loaded in the same test process).
MIN_PLAUSIBLE_MEASURE = 0.25

#: ``factory(path, device, device_index, compute_type, cpu_threads, num_workers) -> (model,
#: pipeline)``; the pipeline has faster-whisper's ``transcribe(audio, **options) -> (segments, info)``.
ModelFactory = Callable[[Path, str, int, str, int, int], tuple[Any, Any]]
#: ``resolve(model name) -> directory`` (blocking; the registry's resolve run on the event loop).
Resolve = Callable[[str], Path]


class OutOfMemory(FailedPrecondition):
    """A job ran out of device memory after the allowed downgrades (reason ``OUT_OF_MEMORY``)."""

    def __init__(self, message: str, metadata: dict[str, str] | None = None):
        super().__init__("OUT_OF_MEMORY", message, metadata)


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


class Engine:
    """The models of the decision in effect, on one device; decodes batch jobs.

    Attributes:
        loader: Loads (and measured) the models.
        decision: The decision in effect (replaced by an out-of-memory downgrade).
        requested: The configured models (canonical names), to map a job's model onto the
            model that replaced it in a step down.
        models: Model name -> loaded model, for the decision in effect.
    """

    def __init__(self, loader: ModelLoader, decision: Decision, requested: Iterable[str] = ()):
        self.loader = loader
        self.decision = decision
        self.realtime_gate = RealtimeGate()
        """Batch decoding yields to live Decode windows (shared with the DecodeScheduler)."""
        self.requested = [canonical_model(m) for m in requested] or list(decision.models)
        self.models: dict[str, LoadedModel] = {}
        self.oom_downgrades = 0
        self._aliases: set[str] = set()
        self._lock = threading.Lock()
        self.adopt(decision)

    @property
    def device(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
        return self.decision.device

    @property
    def device_index(self) -> int:
        """CUDA index."""
        return self.decision.device_index

    @property
    def compute_type(self) -> str:
        """Effective compute type."""
        return self.decision.compute_type_effective

    def memory_used_by_models(self) -> int:
        """Measured bytes of the resident models (0 where the device's memory cannot be read)."""
        return sum(m.memory_bytes for m in {id(m): m for m in self.models.values()}.values())

    def adopt(self, decision: Decision) -> None:
        """Load the decision's resident models at its compute type; release the rest.

        Raises:
            MemoryError / RuntimeError: A model does not load (see :meth:`ModelLoader.load`).
        """
        ct = decision.compute_type_effective
        self.loader.keep_only((m, ct) for m in decision.resident_models)
        models = {m: self.loader.load(m, ct) for m in decision.resident_models}
        self.decision, self.models = decision, models
        for alias in self._aliases:
            models.setdefault(alias, models[self.model_for(alias)])

    def load(self, name: str, path: Path | None = None) -> LoadedModel:
        """Make ``name`` available in :attr:`models` (for callers that look models up by name).

        A configured model, or one the decision stepped down, is already resident: ``name``
        becomes an alias of the model serving it (kept across downgrades). Any other model is
        loaded at the effective compute type outside the decision (its memory was not planned:
        a warning).
        """
        try:
            target = self.model_for(name)
        except FailedPrecondition:
            log.warning("loading %s outside the device decision (its memory was not planned)", name)
            loaded = self.loader.load(name, self.compute_type, path)
            self.models[name] = loaded
            return loaded
        if name != target:
            self._aliases.add(name)
            self.models[name] = self.models[target]
        return self.models[name]

    def model_for(self, requested: str) -> str:
        """The resident model that serves a job asking for ``requested``.

        The model itself when resident; else, when ``requested`` is a configured model the
        decision stepped down, the model that replaced it (logged as a warning).

        Raises:
            FailedPrecondition: reason ``MODEL_NOT_LOADED``: this worker does not serve it.
        """
        name = canonical_model(requested) if requested else self.decision.batch_model
        if name in self.models:
            return name
        if name in self.requested:
            position = self.requested.index(name)
            replacement = self.decision.models[min(position, len(self.decision.models) - 1)]
            log.warning("model %s was stepped down on this worker; the job runs with %s", name, replacement)
            return replacement
        raise FailedPrecondition(
            "MODEL_NOT_LOADED",
            f"model {requested!r} is not loaded on this worker (it has {', '.join(self.models)})",
            {"model": requested},
        )

    def transcribe(
        self,
        audio_path: Path,
        config: transcript_pb2.RecognitionConfig,
        *,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> tuple[transcript_pb2.Transcript, bool]:
        """Decode ``audio_path`` with the model for ``config.model`` (blocking; run in a thread).

        On out-of-memory: step down (:func:`oom_downgrade`), reload, decode again; at most
        ``MAX_OOM_DOWNGRADES`` times per job.

        Args:
            audio_path: Any file PyAV decodes.
            config: Validated recognition config (model set).
            batch_size: Chunks per batch.
            on_progress: Called with (processed seconds, total seconds) after each segment.
            cancelled: When set, decoding stops at the next chunk boundary.

        Returns:
            (transcript, was_cancelled). A cancelled transcript holds what was decoded so far.
            ``transcript.model`` and ``compute_type`` are what really ran.

        Raises:
            scribe_libs.errors.InvalidArgument: UNDECODABLE_AUDIO.
            FailedPrecondition: ``MODEL_NOT_LOADED``; :class:`OutOfMemory` (``OUT_OF_MEMORY``)
                after the allowed downgrades.
        """
        audio = decode_for_whisper(audio_path)
        attempt = 0
        while True:
            with self._lock:
                decision = self.decision
                name = self.model_for(config.model)
                loaded = self.models[name]
            try:
                return self._decode(loaded, decision, audio, config, batch_size, on_progress, cancelled)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                attempt += 1
                self._downgrade(decision, attempt, exc)

    def _downgrade(self, decision: Decision, attempt: int, exc: BaseException) -> None:
        what = f"{' + '.join(decision.resident_models)} at {decision.compute_type_effective} on {decision.device}"
        log.warning("out of memory during a job (attempt %d): %s: %s", attempt, what, exc)
        metrics.out_of_memory.add(1, {"device": decision.device})
        with self._lock:
            if self.decision is not decision:  # another thread already stepped down
                return
            new = oom_downgrade(decision, attempt) if attempt <= MAX_OOM_DOWNGRADES else None
            if new is None:
                raise OutOfMemory(
                    f"out of memory on {decision.device} with {what} after {attempt - 1} downgrade(s) "
                    f"(at most {MAX_OOM_DOWNGRADES}): {exc}",
                    {"compute_type": decision.compute_type_effective, "models": ",".join(decision.resident_models)},
                ) from exc
            try:
                self.adopt(new)
            except MemoryError as load_exc:
                raise OutOfMemory(f"out of memory reloading after a downgrade: {load_exc}") from load_exc
            self.oom_downgrades += 1
            metrics.downgrades.add(1, {"cause": "out_of_memory", "device": new.device})
            log.warning(
                "stepped down after out of memory: %s",
                new.steps[-2] if len(new.steps) > 1 else new.steps[-1],
                extra={"compute_type": new.compute_type_effective, "models": new.resident_models},
            )

    def _decode(
        self,
        loaded: LoadedModel,
        decision: Decision,
        audio: Any,
        config: transcript_pb2.RecognitionConfig,
        batch_size: int,
        on_progress: Callable[[float, float], None],
        cancelled: threading.Event,
    ) -> tuple[transcript_pb2.Transcript, bool]:
        started = time.monotonic()
        duration = len(audio) / WHISPER_SAMPLE_RATE
        vad = config.vad_filter if config.HasField("vad_filter") else True
        kwargs: dict = dict(
            language=config.language or None,
            beam_size=config.beam_size or DEFAULT_BEAM_SIZE,
            word_timestamps=config.word_timestamps,
            initial_prompt=config.initial_prompt or None,
            hotwords=" ".join(config.hotwords) or None,
            batch_size=max(batch_size, 1),
            vad_filter=vad,
        )
        if not vad:
            kwargs["clip_timestamps"] = [
                {"start": t, "end": min(t + CHUNK_SECONDS, duration)} for t in _frange(0.0, duration, CHUNK_SECONDS)
            ]
        segments, info = loaded.pipeline.transcribe(audio, **kwargs)
        transcript = transcript_pb2.Transcript(
            language=info.language,
            language_probability=float(info.language_probability or 0.0),
            duration=duration,
            model=loaded.name,
            compute_type=decision.compute_type_effective,
            device=decision.device,
        )
        was_cancelled = False
        iterator = iter(segments)
        for index in itertools.count():
            # Live windows first: each next() runs one batch of model calls.
            self.realtime_gate.wait_clear()
            segment = next(iterator, None)
            if segment is None:
                break
            transcript.segments.append(
                transcript_pb2.Segment(
                    id=index,
                    start=segment.start,
                    end=segment.end,
                    text=segment.text.strip(),
                    avg_logprob=segment.avg_logprob,
                    no_speech_prob=segment.no_speech_prob,
                    compression_ratio=segment.compression_ratio,
                    words=[
                        transcript_pb2.Word(start=w.start, end=w.end, word=w.word, probability=w.probability)
                        for w in (segment.words or [])
                    ],
                )
            )
            on_progress(min(segment.end, duration), duration)
            if cancelled.is_set():
                was_cancelled = True
                break
        transcript.processing_seconds = time.monotonic() - started
        return transcript, was_cancelled


def default_cpu_threads(configured: int) -> int:
    """CTranslate2 intra-op threads: the configured number, else the cores this process may use."""
    return configured or len(os.sched_getaffinity(0)) or 1


def cpu_layout(cpu_threads: int, cpu_replicas: int) -> tuple[int, int]:
    """``(threads per replica, replicas)`` of a CPU model.

    Default (both 0): one replica per core, each with as many threads as there are cores.
    Measured here (tiny.en int8, 2 cores): 16 streaming windows of 3-7 s decoded two at a time
    took 0.133 s per window with 2 replicas of 2 threads, 0.136 s with 2 of 1 thread, and 0.281 s
    on one 2-thread replica (intra-op threads barely speed up a small model's decode; parallel
    calls double throughput). The price is paid by batch jobs (one model call at a time):
    tools/bench_batch.py measured raw/platform 0.86-0.89 with two replicas against 0.96 with one
    (``SCRIBE_TRANSCRIBER_CPU_REPLICAS=1``, the right setting for a CPU pool that serves no calls).
    """
    cores = default_cpu_threads(0)
    replicas = cpu_replicas or (1 if cpu_threads else cores)
    threads = cpu_threads or cores
    return threads, max(replicas, 1)


def _frange(start: float, stop: float, step: float) -> list[float]:
    out, t = [], start
    while t < stop:
        out.append(t)
        t += step
    return out
