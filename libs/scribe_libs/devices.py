"""Device probe, compute-type and model decision, worker profile (DESIGN.md, "Device profiles and pools").

A transcriber owns one device. At start it probes the device (:class:`SystemProbe`), then
:func:`decide` picks the compute type and the models that fit in the device's free memory,
stepping down precision, then model, then to the CPU, each step recorded as a reason. The
decision becomes a ``scribe.v1.WorkerProfile`` (:func:`profile_from`) and Kubernetes pod
labels/annotations (:func:`kubernetes_labels`). An out-of-memory during a job takes at most two
further steps down (:func:`oom_downgrade`), then the job fails.

Memory figures here are ESTIMATES from published numbers (sources in :mod:`._model_memory`
comments below). The transcriber replaces the per-model figure with a measurement after loading
through the ``measure`` callback of :func:`decide`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from google.protobuf import json_format

from scribe.v1 import transcriber_pb2
from scribe_libs.errors import InvalidArgument

log = logging.getLogger(__name__)

MiB = 1 << 20
GiB = 1 << 30
FACTS_DIR = Path(__file__).parent / "device_facts"

# ---------------------------------------------------------------------------------------------
# Device facts and probes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceFacts:
    """What one device can do, as probed (or recorded for tests).

    Attributes:
        device: ``"cuda"`` or ``"cpu"``.
        index: CUDA device index (0 on CPU).
        gpu_name: NVML product name, e.g. ``"Tesla T4"``; empty on CPU.
        compute_capability: CUDA compute capability ``(major, minor)``; ``None`` on CPU.
        memory_total_bytes: Device memory (system memory or cgroup limit on CPU), bytes.
        memory_free_bytes: Free device memory (``MemAvailable`` or cgroup headroom on CPU), bytes.
        cpu_cores: CPU cores this process may use (affinity, bounded by the cgroup CPU quota).
        supported_compute_types: ``ctranslate2.get_supported_compute_types(device, index)``;
            empty when unknown (then derived from the compute capability, see
            :func:`supported_compute_types_for`).
        driver_version: NVIDIA driver version from NVML, when known.
        cuda_version: CUDA version the driver supports ("12.4"), when known.
        source: Where the facts come from (``"probe"`` or a description of the recording).
    """

    device: str
    index: int = 0
    gpu_name: str = ""
    compute_capability: tuple[int, int] | None = None
    memory_total_bytes: int = 0
    memory_free_bytes: int = 0
    cpu_cores: int = 0
    supported_compute_types: frozenset[str] = frozenset()
    driver_version: str | None = None
    cuda_version: str | None = None
    source: str = ""

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``"cuda:0 (Tesla T4, cc 7.5)"`` or ``"cpu (8 cores)"``."""
        if self.device == "cpu":
            return f"cpu ({self.cpu_cores} cores)"
        cc = ".".join(map(str, self.compute_capability)) if self.compute_capability else "?"
        return f"cuda:{self.index} ({self.gpu_name or 'unknown GPU'}, cc {cc})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the format of ``device_facts/*.json``)."""
        out = dataclasses.asdict(self)
        out["compute_capability"] = list(self.compute_capability) if self.compute_capability else None
        out["supported_compute_types"] = sorted(self.supported_compute_types)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceFacts:
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        values = dict(data)
        cc = values.get("compute_capability")
        values["compute_capability"] = (int(cc[0]), int(cc[1])) if cc else None
        values["supported_compute_types"] = frozenset(values.get("supported_compute_types") or ())
        return cls(**values)


class DeviceProbe(Protocol):
    """Anything that lists this machine's devices: GPUs first, then the CPU (always present)."""

    def probe(self) -> list[DeviceFacts]:
        """The devices, GPUs in CUDA index order, the CPU last."""
        ...


class RecordedProbe:
    """A probe that returns recorded facts (tests, ``scribe detect --facts``)."""

    def __init__(self, facts: Sequence[DeviceFacts]):
        self._facts = list(facts)

    def probe(self) -> list[DeviceFacts]:
        """The recorded facts, as given."""
        return list(self._facts)


def load_recorded(name: str) -> DeviceFacts:
    """Load ``device_facts/<name>.json`` (e.g. ``"t4"``, ``"gtx-1050"``, ``"cpu-only"``).

    Raises:
        FileNotFoundError: No recording of that name (the message lists the known ones).
    """
    path = FACTS_DIR / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in FACTS_DIR.glob("*.json"))
        raise FileNotFoundError(f"no recorded device facts {name!r}; known: {', '.join(known)}")
    data = json.loads(path.read_text())
    data.pop("notes", None)
    return DeviceFacts.from_dict(data)


class SystemProbe:
    """The real probe: CUDA devices through CTranslate2 and NVML, then the CPU.

    CUDA device count and supported compute types come from CTranslate2; GPU name, memory
    total/free, compute capability (``nvmlDeviceGetCudaComputeCapability``) and driver version
    from NVML (``nvidia-ml-py``, module ``pynvml``). No CTranslate2 CUDA device, no NVML library
    or no driver means no GPU; why is logged and kept in :attr:`no_gpu_reason`.

    NVML numbers physical GPUs while CUDA numbers the visible ones: with ``CUDA_VISIBLE_DEVICES``
    set, its entries (indices or ``GPU-``/``MIG-`` UUIDs) map CUDA indices to NVML handles.
    Without it, CUDA index i is taken as NVML index i (true in a Kubernetes pod that is given
    one GPU; on a multi-GPU host set ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` so both orders agree).

    Args:
        proc_root: ``/proc`` (for ``meminfo``); a temporary directory in tests.
        cgroup_root: cgroup v2 mount (``cpu.max``, ``memory.max``, ``memory.current``).
        ctranslate2_module: Stand-in for ``ctranslate2`` (tests); imported when ``None``.
        nvml_module: Stand-in for ``pynvml`` (tests); imported when ``None``.
        environ: Environment (``CUDA_VISIBLE_DEVICES``); ``os.environ`` when ``None``.
    """

    def __init__(
        self,
        *,
        proc_root: Path = Path("/proc"),
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        ctranslate2_module: Any | None = None,
        nvml_module: Any | None = None,
        environ: Mapping[str, str] | None = None,
    ):
        self._proc = Path(proc_root)
        self._cgroup = Path(cgroup_root)
        self._ct2 = ctranslate2_module
        self._nvml = nvml_module
        self._env = os.environ if environ is None else environ
        self.no_gpu_reason: str | None = None

    def probe(self) -> list[DeviceFacts]:
        """GPU facts (possibly none) followed by the CPU facts."""
        self.no_gpu_reason = None
        cpu = self._probe_cpu()
        gpus = self._probe_cuda(cpu.cpu_cores)
        return [*gpus, cpu]

    # -- CUDA ----------------------------------------------------------------------------------

    def _no_gpu(self, reason: str) -> list[DeviceFacts]:
        self.no_gpu_reason = reason
        log.info("no GPU: %s", reason)
        return []

    def _import(self, name: str, given: Any | None) -> Any:
        return given if given is not None else importlib.import_module(name)

    def _probe_cuda(self, cpu_cores: int) -> list[DeviceFacts]:
        try:
            ct2 = self._import("ctranslate2", self._ct2)
        except ImportError as exc:
            return self._no_gpu(f"ctranslate2 is not importable ({exc})")
        try:
            count = int(ct2.get_cuda_device_count())
        except Exception as exc:  # noqa: BLE001 - any CUDA runtime failure means no usable GPU
            return self._no_gpu(f"ctranslate2.get_cuda_device_count() failed: {exc!r}")
        if count == 0:
            return self._no_gpu(f"CTranslate2 reports 0 CUDA devices ({self._nvml_status()})")
        try:
            nvml = self._import("pynvml", self._nvml)
        except ImportError:
            return self._no_gpu(f"CTranslate2 sees {count} CUDA device(s) but nvidia-ml-py (pynvml) is not installed")
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - pynvml.NVMLError and its subclasses
            return self._no_gpu(f"CTranslate2 sees {count} CUDA device(s) but NVML failed to start: {exc}")
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda = _cuda_version(nvml)
            out = []
            for index in range(count):
                handle = self._nvml_handle(nvml, index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                out.append(
                    DeviceFacts(
                        device="cuda",
                        index=index,
                        gpu_name=_text(nvml.nvmlDeviceGetName(handle)),
                        compute_capability=(int(major), int(minor)),
                        memory_total_bytes=int(memory.total),
                        memory_free_bytes=int(memory.free),
                        cpu_cores=cpu_cores,
                        supported_compute_types=frozenset(ct2.get_supported_compute_types("cuda", index)),
                        driver_version=driver,
                        cuda_version=cuda,
                        source="probe",
                    )
                )
            return out
        except Exception as exc:  # noqa: BLE001 - a half-read GPU is treated as no GPU, loudly
            log.warning("NVML query failed, treating as no GPU: %s", exc)
            self.no_gpu_reason = f"NVML query failed: {exc}"
            return []
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutdown failure changes nothing we report
                log.debug("nvmlShutdown failed", exc_info=True)

    def _nvml_status(self) -> str:
        """Why NVML sees no GPU either, for the log ("NVML: NVML Shared Library Not Found")."""
        try:
            nvml = self._import("pynvml", self._nvml)
        except ImportError:
            return "nvidia-ml-py not installed"
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001
            return f"NVML: {exc}"
        try:
            return f"NVML: driver present, {nvml.nvmlDeviceGetCount()} device(s) visible to NVML"
        except Exception as exc:  # noqa: BLE001
            return f"NVML: {exc}"
        finally:
            try:
                nvml.nvmlShutdown()
            except Exception:  # noqa: BLE001
                log.debug("nvmlShutdown failed", exc_info=True)

    def _nvml_handle(self, nvml: Any, cuda_index: int) -> Any:
        visible = [e.strip() for e in self._env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
        if cuda_index < len(visible):
            entry = visible[cuda_index]
            if entry.isdigit():
                return nvml.nvmlDeviceGetHandleByIndex(int(entry))
            return nvml.nvmlDeviceGetHandleByUUID(entry)
        return nvml.nvmlDeviceGetHandleByIndex(cuda_index)

    # -- CPU -----------------------------------------------------------------------------------

    def _probe_cpu(self) -> DeviceFacts:
        cores = len(os.sched_getaffinity(0))
        quota = _cgroup_cpu_limit(self._cgroup / "cpu.max")
        if quota is not None and quota < cores:
            cores = max(1, quota)
        meminfo = _meminfo(self._proc / "meminfo")
        total = meminfo.get("MemTotal", 0)
        free = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
        limit = _read_int(self._cgroup / "memory.max")
        if limit is not None and limit < total:
            used = _read_int(self._cgroup / "memory.current") or 0
            total, free = limit, min(free, max(0, limit - used))
        try:
            ct2 = self._import("ctranslate2", self._ct2)
            supported = frozenset(ct2.get_supported_compute_types("cpu"))
        except ImportError:
            supported = frozenset()
        return DeviceFacts(
            device="cpu",
            cpu_cores=cores,
            memory_total_bytes=total,
            memory_free_bytes=free,
            supported_compute_types=supported,
            source="probe",
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(nvml: Any) -> str | None:
    try:
        version = int(nvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12040
    except Exception:  # noqa: BLE001 - optional fact
        return None
    return f"{version // 1000}.{(version % 1000) // 10}"


def _meminfo(path: Path) -> dict[str, int]:
    """``/proc/meminfo`` as bytes per key (the file's values are kB)."""
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_cpu_limit(path: Path) -> int | None:
    """Whole cores allowed by cgroup v2 ``cpu.max`` ("<quota> <period>" or "max <period>")."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return math.ceil(int(quota) / int(period))


# ---------------------------------------------------------------------------------------------
# Compute types
# ---------------------------------------------------------------------------------------------

#: Compute types CTranslate2 accepts (docs/quantization.md, "Quantize on model loading").
COMPUTE_TYPES = (
    "float32",
    "float16",
    "bfloat16",
    "int16",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
)
REQUESTABLE_COMPUTE_TYPES = ("auto", "default", *COMPUTE_TYPES)


def supported_compute_types_for(device: str, compute_capability: tuple[int, int] | None) -> frozenset[str]:
    """What CTranslate2 supports on a device, when the probe could not ask it.

    Source: CTranslate2 docs/quantization.md, "Supported types": int8 on NVIDIA GPUs with compute
    capability >= 7.0 or exactly 6.1; float16 and int8_float16 with >= 7.0 (CTranslate2 reports
    float16 only where it is efficient, i.e. tensor cores, unless ``CT2_CUDA_ALLOW_FP16=1``);
    bfloat16 with >= 8.0. On CPU int8 (oneDNN/MKL/Ruy backends) and float32; int16 only with MKL,
    so it is left out here.
    """
    if device == "cpu":
        return frozenset({"float32", "int8", "int8_float32"})
    cc = compute_capability or (0, 0)
    out = {"float32"}
    if cc >= (7, 0) or cc == (6, 1):
        out |= {"int8", "int8_float32"}
    if cc >= (7, 0):
        out |= {"float16", "int8_float16"}
    if cc >= (8, 0):
        out |= {"bfloat16", "int8_bfloat16"}
    return frozenset(out)


def _supported(facts: DeviceFacts) -> frozenset[str]:
    return facts.supported_compute_types or supported_compute_types_for(facts.device, facts.compute_capability)


def preferred_compute_types(facts: DeviceFacts) -> list[str]:
    """The precision ladder for "auto", best first (DESIGN.md table).

    cc >= 7.0: float16, then int8_float16 when memory is tight. cc 6.1 (Pascal, e.g. GTX 1050):
    int8 (float16 runs without tensor cores there, CTranslate2 does not offer it). Other GPUs:
    float32 (CTranslate2 has no int8 kernels for them). CPU: int8.
    """
    supported = _supported(facts)
    if facts.device == "cpu":
        ladder = ["int8", "float32"]
    elif (facts.compute_capability or (0, 0)) >= (7, 0):
        ladder = ["float16", "int8_float16", "int8"]
    else:
        ladder = ["int8", "float32"]
    return _descending([t for t in ladder if t in supported] or ["float32"])


def _descending(ladder: list[str]) -> list[str]:
    """Keep only the steps that make the weights strictly smaller than the step before."""
    out = ladder[:1]
    for t in ladder[1:]:
        if _weight_bytes_per_param(t) < _weight_bytes_per_param(out[-1]):
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Model memory (estimates; the transcriber measures)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a Whisper model (Whisper paper, Table 1, and the model cards).

    Attributes:
        params: Parameter count.
        decoder_layers: Decoder layers (sizes the cross-attention cache per batch slot).
        d_model: Width.
        english_only: ``.en`` and distil models transcribe English only.
    """

    params: int
    decoder_layers: int
    d_model: int
    english_only: bool = False


# Whisper paper (Radford et al. 2022) Table 1: tiny 39M 4 layers width 384; base 74M 6/512;
# small 244M 12/768; medium 769M 24/1024; large 1550M 32/1280. large-v3-turbo: 809M, 32 encoder
# and 4 decoder layers (openai/whisper-large-v3-turbo model card). distil-large-v3: 756M, 2
# decoder layers, English only (distil-whisper/distil-large-v3 model card).
MODEL_SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(39_000_000, 4, 384),
    "tiny.en": ModelSpec(39_000_000, 4, 384, english_only=True),
    "base": ModelSpec(74_000_000, 6, 512),
    "base.en": ModelSpec(74_000_000, 6, 512, english_only=True),
    "small": ModelSpec(244_000_000, 12, 768),
    "small.en": ModelSpec(244_000_000, 12, 768, english_only=True),
    "medium": ModelSpec(769_000_000, 24, 1024),
    "medium.en": ModelSpec(769_000_000, 24, 1024, english_only=True),
    "large-v2": ModelSpec(1_550_000_000, 32, 1280),
    "large-v3": ModelSpec(1_550_000_000, 32, 1280),
    "large-v3-turbo": ModelSpec(809_000_000, 4, 1280),
    "distil-large-v3": ModelSpec(756_000_000, 2, 1280, english_only=True),
}
#: faster-whisper's own aliases ("large" is large-v3, "turbo" is large-v3-turbo).
MODEL_ALIASES = {"turbo": "large-v3-turbo", "large": "large-v3"}

#: Step-down order (quality first). A step skips a model that would not need less memory: with
#: batch slots, medium (24 decoder layers) needs more than large-v3-turbo (4), and large-v2 the
#: same as large-v3.
MULTILINGUAL_LADDER = ("large-v3", "large-v2", "large-v3-turbo", "medium", "small", "base", "tiny")
ENGLISH_LADDER = ("distil-large-v3", "medium.en", "small.en", "base.en", "tiny.en")

# Bytes per parameter of the weights. float32 4, float16/bfloat16 2 (CTranslate2 stores them as
# is). int8 types: only embeddings and linear layers are quantized, the rest stays in float;
# CTranslate2 docs/quantization.md sizes a base Transformer at 364 MB float32, 182 MB float16,
# 100 MB int8_float32 and 95 MB int8_float16, i.e. 1.10 and 1.04 bytes/param; int16 187 MB, 2.05.
_BYTES_PER_PARAM = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "int16": 2.05,
    "int8": 1.10,
    "int8_float32": 1.10,
    "int8_float16": 1.04,
    "int8_bfloat16": 1.04,
}
# Fixed cost once per device. CUDA: context, cuBLAS/cuDNN handles; 400 MiB is typical of CUDA 12
# on data-center GPUs and makes the published peaks below add up. CPU: the transcriber process
# itself (Python, CTranslate2, audio decoding, VAD): faster-whisper 1.1.0 README, small on CPU
# int8 peaks at 1477 MB, of which weights + workspace + one slot are ~0.65 GB.
RUNTIME_BYTES = {"cuda": 400 * MiB, "cpu": 800 * MiB}
# Per-model workspace (encoder activations, beam search buffers, allocator cache) as a fraction
# of params x activation bytes: faster-whisper 1.1.0 README, large-v2 float16 beam 5 peaks at
# 4525 MiB = 2956 MiB weights + 400 context + 225 one slot + 944 workspace = 0.32 x 1550M x 2 B.
_WORKSPACE_FRACTION = 0.30
_MIN_WORKSPACE = 64 * MiB
# Per batch slot (one 30 s window in a batch): the decoder's cross-attention keys and values,
# decoder_layers x 2 x 1500 frames x d_model x activation bytes. For large-v2 float16 that is
# 234 MiB; the same README measures 224 MiB per extra batch element ((6090 - 4525) / 7 float16,
# (4500 - 2926) / 7 int8).
_WINDOW_FRAMES = 1500
_MIN_SLOT = 32 * MiB
#: Slot size assumed for a model with no spec (a measured custom model): the large-model figure.
UNKNOWN_MODEL_SLOT_BYTES = 256 * MiB


def canonical_model(name: str) -> str:
    """faster-whisper model name with aliases resolved (``"turbo"`` -> ``"large-v3-turbo"``)."""
    return MODEL_ALIASES.get(name, name)


def _weight_bytes_per_param(compute_type: str) -> float:
    return _BYTES_PER_PARAM[compute_type]


def _activation_bytes(compute_type: str, device: str, cc: tuple[int, int] | None) -> int:
    """Bytes per activation value: 2 where CTranslate2 runs layers in half precision, else 4.

    "int8" keeps non-quantized layers in the model's saved precision (float16 for the published
    faster-whisper models) on GPUs with cc >= 7.0, and runs them in float32 elsewhere
    (docs/quantization.md, "Implicit type conversion on load").
    """
    if compute_type in ("float16", "bfloat16", "int8_float16", "int8_bfloat16"):
        return 2
    if compute_type == "int8" and device == "cuda" and (cc or (0, 0)) >= (7, 0):
        return 2
    return 4


def estimate_model_bytes(
    model: str, compute_type: str, device: str = "cuda", cc: tuple[int, int] | None = (8, 0)
) -> int:
    """Estimated memory one loaded model takes: weights + workspace, bytes (no runtime, no slots).

    Raises:
        KeyError: No spec for the model (measure it instead).
    """
    spec = MODEL_SPECS[canonical_model(model)]
    weights = spec.params * _weight_bytes_per_param(compute_type)
    workspace = max(_MIN_WORKSPACE, _WORKSPACE_FRACTION * spec.params * _activation_bytes(compute_type, device, cc))
    return int(weights + workspace)


def estimate_slot_bytes(
    model: str, compute_type: str, device: str = "cuda", cc: tuple[int, int] | None = (8, 0)
) -> int:
    """Estimated memory of one concurrent batch slot / realtime window of a model, bytes."""
    spec = MODEL_SPECS.get(canonical_model(model))
    if spec is None:
        return UNKNOWN_MODEL_SLOT_BYTES
    kv = spec.decoder_layers * 2 * _WINDOW_FRAMES * spec.d_model * _activation_bytes(compute_type, device, cc)
    return max(_MIN_SLOT, kv)


# ---------------------------------------------------------------------------------------------
# Decision
# ---------------------------------------------------------------------------------------------

#: Batch slots the batched pipeline may use at most (faster-whisper benchmarks batch 8 and 16).
MAX_BATCH_CAPACITY = 16
#: Realtime windows decoded together at most (policy; the gateway batches across sessions).
MAX_REALTIME_CAPACITY = 32
#: On CPU: cores per concurrent batch job, and per concurrent realtime window (policy: one decode
#: keeps 2-4 CTranslate2 threads busy; DESIGN.md measured 0.55-0.9 s per window on 2 cores).
CPU_CORES_PER_BATCH_SLOT = 4
CPU_CORES_PER_REALTIME_SLOT = 2
#: Out-of-memory downgrades per job before it fails (issue 3).
MAX_OOM_DOWNGRADES = 2

Measure = Callable[[str, str], "int | None"]


@dataclass
class Decision:
    """The compute type and models a worker runs with, and why.

    Attributes:
        device: ``"cuda"`` or ``"cpu"`` (``"cpu"`` also after a fall-back from a GPU).
        device_index: CUDA index (0 on CPU).
        compute_type_requested: As configured (``"auto"`` lets the device decide).
        compute_type_effective: In effect after any downgrade.
        models: Effective models by position: ``[batch, realtime...]`` as requested; a stepped
            down batch model may equal the realtime model (one resident copy serves both).
        steps: Human-readable reasons, in order (every downgrade, and the final choice).
        warnings: Requested-vs-effective mismatches and other things an operator should see.
        ready: Whether the worker can serve.
        not_ready_reason: Why not, when not ready.
        memory_needed_bytes: Runtime + models + the minimum slots, bytes.
        memory_models_bytes: What the resident models take (measured when ``measure`` was
            given, else estimated), bytes.
        measured: Whether ``memory_models_bytes`` comes from measurements.
        batch_capacity: Concurrent batch slots that fit in the memory left (CPU: also by cores).
        realtime_capacity: Concurrent realtime windows that fit (CPU: also by cores).
    """

    device: str
    device_index: int
    compute_type_requested: str
    compute_type_effective: str
    models: list[str]
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ready: bool = False
    not_ready_reason: str = ""
    memory_needed_bytes: int = 0
    memory_models_bytes: int = 0
    measured: bool = False
    batch_capacity: int = 0
    realtime_capacity: int = 0
    oom_downgrades: int = 0
    _plan: _Plan | None = field(default=None, repr=False, compare=False)

    @property
    def resident_models(self) -> list[str]:
        """Distinct models loaded on the device, in position order."""
        return list(dict.fromkeys(self.models))

    @property
    def batch_model(self) -> str:
        """The model batch jobs run with."""
        return self.models[0]

    @property
    def realtime_model(self) -> str:
        """The model ``Transcriber.Decode`` runs with (the batch model when none is configured)."""
        return self.models[1] if len(self.models) > 1 else self.models[0]


@dataclass
class _Plan:
    """What :func:`oom_downgrade` needs to continue the search where :func:`decide` stopped."""

    facts: DeviceFacts
    candidates: list[tuple[list[str], str, str]]  # (models, compute type, reason to get there)
    position: int
    available: int
    batch_slots: int
    realtime_slots: int
    realtime_share: float
    measure: Measure | None
    cache: dict[tuple[str, str], int | None]


def decide(
    facts: DeviceFacts,
    models: Sequence[str],
    compute_type_requested: str = "auto",
    *,
    measure: Measure | None = None,
    headroom_fraction: float = 0.1,
    batch_slots: int = 4,
    realtime_slots: int = 4,
    realtime_share: float = 0.5,
    cpu_facts: DeviceFacts | None = None,
) -> Decision:
    """Pick the compute type and models for a device; step down until they fit.

    A configuration fits when ``runtime + resident models + batch_slots x batch-model slot +
    realtime_slots x realtime-model slot <= free - headroom_fraction x total``. The search tries,
    in order: each precision of the ladder (:func:`preferred_compute_types`, or the requested
    type then smaller ones), for each model set: the batch model stepped down its ladder (when a
    step reaches a model no larger than a resident realtime model of the same language family,
    the realtime model serves batch jobs too), then the realtime model (batch follows). If no GPU
    configuration fits and ``cpu_facts`` is given, the same search runs on the CPU. Each step is
    recorded in ``Decision.steps`` and logged.

    Args:
        facts: The device (one entry of :meth:`DeviceProbe.probe`).
        models: ``[batch_model, realtime_model...]``; aliases such as ``"turbo"`` are resolved.
        compute_type_requested: ``"auto"`` or a CTranslate2 compute type. An unsupported type is
            replaced by the device's best (a warning); an effective type different from a
            requested one is always a warning.
        measure: ``measure(model, compute_type) -> bytes`` the model really takes once loaded
            (``None`` = use the estimate); raising ``MemoryError`` means it did not fit. Called
            at most once per (model, compute type).
        headroom_fraction: Share of total memory never planned for (fragmentation, other users).
        batch_slots: Minimum concurrent batch slots a configuration must leave room for.
        realtime_slots: Minimum concurrent realtime windows.
        realtime_share: Share of the memory left after the minimum that goes to realtime windows.
        cpu_facts: The CPU, to fall back to when nothing fits on the GPU.

    Returns:
        The decision; ``ready`` is False with ``not_ready_reason`` when nothing fits.

    Raises:
        InvalidArgument: Unknown compute type (reason ``UNKNOWN_COMPUTE_TYPE``) or no models.
    """
    if compute_type_requested not in REQUESTABLE_COMPUTE_TYPES:
        raise InvalidArgument(
            "UNKNOWN_COMPUTE_TYPE",
            f"compute type {compute_type_requested!r} is not one of {', '.join(REQUESTABLE_COMPUTE_TYPES)}",
            field="compute_type",
        )
    if not models:
        raise InvalidArgument("NO_MODELS", "at least one model must be configured", field="models")
    wanted = [canonical_model(m) for m in models]
    decision = Decision(
        device=facts.device,
        device_index=facts.index,
        compute_type_requested=compute_type_requested,
        compute_type_effective="",
        models=list(wanted),
    )
    precisions = _precision_ladder(facts, compute_type_requested, decision)
    if facts.device == "cpu":
        batch_slots = min(batch_slots, max(1, facts.cpu_cores // CPU_CORES_PER_BATCH_SLOT))
        realtime_slots = min(realtime_slots, max(1, facts.cpu_cores // CPU_CORES_PER_REALTIME_SLOT))
    plan = _Plan(
        facts=facts,
        candidates=[
            (model_set, ct, reason)
            for model_set, model_reason in _model_sets(wanted, batch_slots)
            for ct, reason in _with_precisions(precisions, model_reason)
        ],
        position=0,
        available=max(0, facts.memory_free_bytes - int(headroom_fraction * facts.memory_total_bytes)),
        batch_slots=batch_slots,
        realtime_slots=realtime_slots,
        realtime_share=realtime_share,
        measure=measure,
        cache={},
    )
    last_need = 0
    for position, (model_set, ct, reason) in enumerate(plan.candidates):
        if reason:
            _step(decision, reason)
        need, models_bytes, why = _requirement(plan, model_set, ct)
        last_need = need
        if why is None and need <= plan.available:
            plan.position = position
            _accept(decision, plan, model_set, ct, need, models_bytes)
            return decision
        _step(decision, why or _too_big(model_set, ct, need, plan.available, facts))
    if cpu_facts is not None and facts.device != "cpu":
        _step(decision, f"nothing fits on {facts.label}: fall back to the CPU")
        cpu = decide(
            cpu_facts,
            models,
            compute_type_requested,
            measure=measure,
            headroom_fraction=headroom_fraction,
            batch_slots=batch_slots,
            realtime_slots=realtime_slots,
            realtime_share=realtime_share,
        )
        cpu.steps[:0] = decision.steps
        cpu.warnings[:0] = [w for w in decision.warnings if w not in cpu.warnings]
        return cpu
    smallest, ct, _ = plan.candidates[-1]
    decision.compute_type_effective = ct
    decision.models = smallest
    decision.memory_needed_bytes = last_need
    decision.not_ready_reason = (
        f"nothing fits on {facts.label}: the smallest configuration tried ({' + '.join(dict.fromkeys(smallest))} at "
        f"{ct}) needs {_gib(last_need)}, {_gib(plan.available)} available"
        + ("" if facts.device == "cpu" else "; no CPU fall-back configured")
    )
    log.error("device decision: not ready: %s", decision.not_ready_reason)
    return decision


def oom_downgrade(decision: Decision, attempt: int) -> Decision | None:
    """The next step down after an out-of-memory during a job, or ``None`` when the job must fail.

    Takes the next configuration of the :func:`decide` search whose estimated need is strictly
    below the current one (precision first, then model). At most :data:`MAX_OOM_DOWNGRADES`.

    Args:
        decision: The decision in effect when the job ran out of memory.
        attempt: 1 for the first out-of-memory of the job, 2 for the second, ...

    Returns:
        A new ready decision (the old one is not modified), or ``None`` when ``attempt`` exceeds
        the limit or nothing smaller remains: the job then fails with the reason.

    Raises:
        ValueError: ``attempt`` < 1, or the decision did not come from :func:`decide`.
    """
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if attempt > MAX_OOM_DOWNGRADES or not decision.ready:
        return None
    plan = decision._plan
    if plan is None:
        raise ValueError("decision was not made by decide()")
    current = decision.memory_needed_bytes
    for position in range(plan.position + 1, len(plan.candidates)):
        model_set, ct, _ = plan.candidates[position]
        need, models_bytes, why = _requirement(plan, model_set, ct)
        if why is not None or need >= current:
            continue
        new_plan = dataclasses.replace(plan, position=position)
        new = dataclasses.replace(
            decision, steps=list(decision.steps), warnings=list(decision.warnings), oom_downgrades=attempt
        )
        _step(
            new,
            f"out of memory during a job (downgrade {attempt} of {MAX_OOM_DOWNGRADES}): "
            f"{' + '.join(decision.resident_models)} at {decision.compute_type_effective} -> "
            f"{' + '.join(dict.fromkeys(model_set))} at {ct}",
        )
        _accept(new, new_plan, model_set, ct, need, models_bytes)
        return new
    return None


def _precision_ladder(facts: DeviceFacts, requested: str, decision: Decision) -> list[str]:
    device_ladder = preferred_compute_types(facts)
    if requested in ("auto", "default"):
        return device_ladder
    supported = _supported(facts)
    if requested not in supported:
        message = (
            f"compute type {requested} requested but {facts.label} does not support it "
            f"(CTranslate2 offers {', '.join(sorted(supported))}): using {device_ladder[0]}"
        )
        decision.warnings.append(message)
        _step(decision, message)
        return device_ladder
    return _descending([requested, *device_ladder])


def _with_precisions(precisions: list[str], model_reason: str | None) -> Iterator[tuple[str, str | None]]:
    for i, ct in enumerate(precisions):
        if i == 0:
            yield ct, model_reason
        else:
            yield ct, f"step down precision {precisions[i - 1]} -> {ct}"


def _ladder(model: str) -> tuple[str, ...]:
    spec = MODEL_SPECS.get(model)
    if spec is None:
        return ()
    return ENGLISH_LADDER if spec.english_only else MULTILINGUAL_LADDER


def _cost(model: str, slots: int) -> float:
    """Memory a model needs with ``slots`` batch slots at float16 (to order step-down candidates)."""
    return estimate_model_bytes(model, "float16") + slots * estimate_slot_bytes(model, "float16")


def _smaller(model: str, slots: int) -> Iterator[str]:
    """Models below ``model`` on its ladder that need strictly less memory, in ladder order."""
    ladder = _ladder(model)
    if model not in ladder:
        return
    current = _cost(model, slots)
    for candidate in ladder[ladder.index(model) + 1 :]:
        if _cost(candidate, slots) < current:
            current = _cost(candidate, slots)
            yield candidate


def _model_sets(wanted: list[str], slots: int) -> Iterator[tuple[list[str], str | None]]:
    """Model sets to try, each with the reason for the step that led to it (None for the first)."""
    current = list(wanted)
    yield list(current), None
    realtime = [m for m in current[1:] if m in MODEL_SPECS]
    # Phase A: the batch model steps down; it joins a realtime model as soon as that is no larger.
    # (Skipped when it already is a realtime model: stepping it down alone would only add a model.)
    for candidate in _smaller(current[0], slots) if current[0] not in current[1:] else ():
        spec = MODEL_SPECS[candidate]
        shared = [
            r
            for r in realtime
            if MODEL_SPECS[r].english_only == spec.english_only and MODEL_SPECS[r].params >= spec.params
        ]
        if shared:
            target = max(shared, key=lambda r: MODEL_SPECS[r].params)
            yield (
                [target, *current[1:]],
                (f"step down batch model {current[0]} -> {target} (the resident realtime model serves batch jobs too)"),
            )
            current = [target, *current[1:]]
            break
        yield [candidate, *current[1:]], f"step down batch model {current[0]} -> {candidate}"
        current = [candidate, *current[1:]]
    # Phase B: realtime models step down, largest first; a batch model sharing one follows it.
    while True:
        movable = [(MODEL_SPECS[m].params, i, m) for i, m in enumerate(current) if i > 0 and m in MODEL_SPECS]
        movable = [(p, i, m) for p, i, m in movable if next(_smaller(m, slots), None) is not None]
        if not movable:
            return
        _, _, model = max(movable)
        smaller = next(_smaller(model, slots))
        current = [smaller if m == model else m for m in current]
        follows = " (batch jobs follow it)" if current[0] == smaller else ""
        yield list(current), f"step down realtime model {model} -> {smaller}{follows}"


def _requirement(plan: _Plan, model_set: list[str], ct: str) -> tuple[int, int, str | None]:
    """(bytes needed, bytes the resident models take, reason it cannot be used or None)."""
    facts = plan.facts
    models_bytes = 0
    for model in dict.fromkeys(model_set):
        key = (model, ct)
        if key not in plan.cache:
            plan.cache[key] = _model_bytes(plan, model, ct)
        value = plan.cache[key]
        if value is None:
            return 0, 0, f"{model} at {ct}: no memory estimate for this model and no measurement"
        if value < 0:
            return 0, 0, f"loading {model} at {ct} ran out of memory on {facts.label}"
        models_bytes += value
    cc = facts.compute_capability
    slots = plan.batch_slots * estimate_slot_bytes(model_set[0], ct, facts.device, cc)
    realtime = model_set[1] if len(model_set) > 1 else model_set[0]
    slots += plan.realtime_slots * estimate_slot_bytes(realtime, ct, facts.device, cc)
    return RUNTIME_BYTES[facts.device] + models_bytes + slots, models_bytes, None


def _model_bytes(plan: _Plan, model: str, ct: str) -> int | None:
    """Measured or estimated bytes; -1 when the measurement ran out of memory; None if unknown."""
    if plan.measure is not None:
        try:
            measured = plan.measure(model, ct)
        except MemoryError:
            return -1
        if measured is not None:
            return int(measured)
    if model not in MODEL_SPECS:
        return None
    return estimate_model_bytes(model, ct, plan.facts.device, plan.facts.compute_capability)


def _accept(decision: Decision, plan: _Plan, model_set: list[str], ct: str, need: int, models_bytes: int) -> None:
    facts = plan.facts
    decision.device, decision.device_index = facts.device, facts.index
    decision.models = list(model_set)
    decision.compute_type_effective = ct
    decision.memory_needed_bytes = need
    decision.memory_models_bytes = models_bytes
    decision.measured = plan.measure is not None
    decision.ready, decision.not_ready_reason = True, ""
    decision._plan = plan
    leftover = max(0, plan.available - need)
    cc = facts.compute_capability
    batch_slot = estimate_slot_bytes(decision.batch_model, ct, facts.device, cc)
    realtime_slot = estimate_slot_bytes(decision.realtime_model, ct, facts.device, cc)
    batch = plan.batch_slots + int(leftover * (1 - plan.realtime_share)) // batch_slot
    realtime = plan.realtime_slots + int(leftover * plan.realtime_share) // realtime_slot
    batch_cap, realtime_cap = MAX_BATCH_CAPACITY, MAX_REALTIME_CAPACITY
    if facts.device == "cpu":
        batch_cap = max(1, facts.cpu_cores // CPU_CORES_PER_BATCH_SLOT)
        realtime_cap = max(1, facts.cpu_cores // CPU_CORES_PER_REALTIME_SLOT)
    decision.batch_capacity = min(batch, batch_cap)
    decision.realtime_capacity = min(realtime, realtime_cap)
    requested = decision.compute_type_requested
    if requested not in ("auto", "default") and requested != ct:
        mismatch = f"compute type requested {requested}, effective {ct}"
        if mismatch not in decision.warnings:
            decision.warnings.append(mismatch)
            log.warning("device decision: %s", mismatch)
    _step(
        decision,
        f"use {' + '.join(decision.resident_models)} at {ct} on {facts.label}: needs {_gib(need)} of "
        f"{_gib(plan.available)} available ({'measured' if decision.measured else 'estimated'}); "
        f"batch capacity {decision.batch_capacity}, realtime capacity {decision.realtime_capacity}",
    )


def _too_big(model_set: list[str], ct: str, need: int, available: int, facts: DeviceFacts) -> str:
    names = " + ".join(dict.fromkeys(model_set))
    return f"{names} at {ct} need {_gib(need)}, {_gib(available)} available on {facts.label}"


def _step(decision: Decision, reason: str) -> None:
    decision.steps.append(reason)
    log.info("device decision: %s", reason)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"


# ---------------------------------------------------------------------------------------------
# Profile and Kubernetes labels
# ---------------------------------------------------------------------------------------------


def profile_from(
    decision: Decision,
    facts: DeviceFacts,
    *,
    worker_id: str,
    pool: str,
    pod: str = "",
    node: str = "",
    endpoint: str = "",
    version: str = "",
    start_time: float | None = None,
    update_time: float | None = None,
) -> transcriber_pb2.WorkerProfile:
    """The ``WorkerProfile`` a worker advertises (load and RTF start at 0; the worker updates them).

    Args:
        decision: From :func:`decide` (or :func:`oom_downgrade`).
        facts: The device the decision is for (after a CPU fall-back: the CPU facts).
        worker_id: Unique worker id (the ``scribe_workers`` key).
        pool: Pool the worker takes jobs from.
        pod: Kubernetes pod name (downward API), empty outside Kubernetes.
        node: Kubernetes node name, or the host name.
        endpoint: ``host:port`` of the worker's gRPC server (``Transcriber.Decode``).
        version: Worker software version.
        start_time: Worker start, Unix seconds; unset when ``None``.
        update_time: Profile time, Unix seconds; unset when ``None``.
    """
    profile = transcriber_pb2.WorkerProfile(
        worker_id=worker_id,
        pod=pod,
        node=node,
        pool=pool,
        device=facts.device,
        gpu_name=facts.gpu_name,
        compute_capability=".".join(map(str, facts.compute_capability)) if facts.compute_capability else "",
        memory_total_bytes=max(0, facts.memory_total_bytes),
        memory_free_bytes=max(0, facts.memory_free_bytes),
        memory_used_by_models_bytes=max(0, decision.memory_models_bytes),
        compute_type_requested=decision.compute_type_requested,
        compute_type_effective=decision.compute_type_effective,
        models_loaded=decision.resident_models if decision.ready else [],
        batch_capacity=decision.batch_capacity,
        realtime_capacity=decision.realtime_capacity,
        endpoint=endpoint,
        version=version,
        cpu_cores=facts.cpu_cores,
        decisions=[*decision.steps, *([f"not ready: {decision.not_ready_reason}"] if not decision.ready else [])],
    )
    if start_time is not None:
        profile.start_time.FromNanoseconds(int(start_time * 1e9))
    if update_time is not None:
        profile.update_time.FromNanoseconds(int(update_time * 1e9))
    return profile


_LABEL_BAD = re.compile(r"[^A-Za-z0-9_.-]+")
#: Kubernetes label value syntax (apimachinery validation, at most 63 characters).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def label_value(text: str) -> str:
    """``text`` made a valid Kubernetes label value: runs of other characters become ``-``."""
    value = _LABEL_BAD.sub("-", text)
    value = re.sub(r"-{2,}", "-", value)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def kubernetes_labels(profile: transcriber_pb2.WorkerProfile) -> tuple[dict[str, str], dict[str, str]]:
    """Pod labels and annotations for a profile (``kubectl get pods -L scribe.dev/gpu,...``).

    Labels: ``scribe.dev/gpu`` (label-safe GPU name, e.g. ``Tesla-T4``, or ``cpu``),
    ``scribe.dev/vram-gb`` (device memory in GiB, rounded; ``0`` on CPU),
    ``scribe.dev/compute-type``, ``scribe.dev/pool``, ``scribe.dev/device``.
    Annotations: ``scribe.dev/profile`` (the whole profile as JSON, decisions included).
    """
    on_gpu = profile.device == "cuda"
    labels = {
        "scribe.dev/gpu": (label_value(profile.gpu_name) or "unknown") if on_gpu else "cpu",
        "scribe.dev/vram-gb": str(round(profile.memory_total_bytes / GiB)) if on_gpu else "0",
        "scribe.dev/compute-type": label_value(profile.compute_type_effective) or "none",
        "scribe.dev/pool": label_value(profile.pool) or "none",
        "scribe.dev/device": label_value(profile.device) or "none",
    }
    profile_json = json.dumps(json_format.MessageToDict(profile), sort_keys=True, separators=(",", ":"))
    return labels, {"scribe.dev/profile": profile_json}
