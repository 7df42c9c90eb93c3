"""Device facts and probes: what this machine's GPUs and CPU can do.

:class:`SystemProbe` asks CTranslate2 (CUDA device count, supported compute types) and NVML
(``nvidia-ml-py``: GPU name, memory, compute capability, driver); :class:`RecordedProbe` and
:func:`load_recorded` feed recorded facts (``scribe_libs/device_facts/*.json``) to tests and to
``scribe detect --facts``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

#: Recorded facts of real devices (package data of scribe_libs).
FACTS_DIR = Path(__file__).resolve().parent.parent / "device_facts"


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
    or no driver means no GPU; why is kept in :attr:`no_gpu_reason` and logged at INFO (WARNING
    for a failed NVML query) on the first probe that finds it and whenever it changes, at DEBUG
    on the probes that find it again (the transcriber re-probes for free memory every profile
    refresh, a few seconds apart).

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
        self._logged_reason: str | None = None  # the no-GPU reason last logged above DEBUG

    def probe(self) -> list[DeviceFacts]:
        """GPU facts (possibly none) followed by the CPU facts."""
        self.no_gpu_reason = None
        cpu = self._probe_cpu()
        gpus = self._probe_cuda(cpu.cpu_cores)
        if self.no_gpu_reason is None:
            self._logged_reason = None  # a GPU again: losing it later is news
        return [*gpus, cpu]

    # -- CUDA ----------------------------------------------------------------------------------

    def _no_gpu(self, reason: str, level: int = logging.INFO) -> list[DeviceFacts]:
        """Record why there is no GPU; log it at ``level`` once per reason, then at DEBUG."""
        self.no_gpu_reason = reason
        if reason == self._logged_reason:
            level = logging.DEBUG
        self._logged_reason = reason
        log.log(level, "no GPU: %s", reason)
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
            return self._no_gpu(f"NVML query failed: {exc}", logging.WARNING)
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
        return nvml_handle(nvml, cuda_index, self._env)

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


def nvml_handle(nvml: Any, cuda_index: int, environ: Mapping[str, str] | None = None) -> Any:
    """The NVML handle of CUDA device ``cuda_index`` (``CUDA_VISIBLE_DEVICES`` mapped, see :class:`SystemProbe`).

    Raises:
        pynvml.NVMLError: NVML does not know the device (NVML must be initialised by the caller).
    """
    env = os.environ if environ is None else environ
    visible = [e.strip() for e in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    if cuda_index < len(visible):
        entry = visible[cuda_index]
        if entry.isdigit():
            return nvml.nvmlDeviceGetHandleByIndex(int(entry))
        return nvml.nvmlDeviceGetHandleByUUID(entry)
    return nvml.nvmlDeviceGetHandleByIndex(cuda_index)


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


@dataclass(frozen=True)
class Selection:
    """The device a worker runs on, chosen from a probe.

    Attributes:
        facts: The chosen device, or ``None`` when the configured device is absent.
        cpu_facts: The CPU to fall back to when nothing fits on the chosen GPU (``None`` on CPU,
            or when the GPU was asked for explicitly).
        reason: Why this device (or why none), for the decision's steps.
    """

    facts: DeviceFacts | None
    cpu_facts: DeviceFacts | None
    reason: str


def select_device(
    probed: Sequence[DeviceFacts], device: str = "auto", index: int = 0, no_gpu_reason: str | None = None
) -> Selection:
    """Pick the device a worker runs on.

    ``"auto"``: the GPU ``index`` if present (the CPU as fall-back), else the CPU; ``"cuda"``:
    that GPU or nothing; ``"cpu"``: the CPU.

    Args:
        probed: :meth:`DeviceProbe.probe` output (GPUs, then the CPU).
        device: As configured.
        index: CUDA index as configured.
        no_gpu_reason: Why the probe found no GPU (:attr:`SystemProbe.no_gpu_reason`).

    Raises:
        ValueError: ``device`` is none of the three.
    """
    if device not in ("auto", "cuda", "cpu"):
        raise ValueError(f"device must be auto, cuda or cpu, got {device!r}")
    cpu = next((f for f in probed if f.device == "cpu"), None)
    gpus = [f for f in probed if f.device == "cuda"]
    gpu = next((f for f in gpus if f.index == index), None)
    if device == "cpu":
        return Selection(cpu, None, f"device {cpu.label if cpu else 'cpu'}: configured device=cpu")
    if gpu is not None:
        fallback = cpu if device == "auto" else None
        return Selection(
            gpu, fallback, f"device {gpu.label}: {len(gpus)} CUDA device(s), configured device={device} index={index}"
        )
    why = no_gpu_reason or (f"no CUDA device {index} ({len(gpus)} visible)" if gpus else "no CUDA device")
    if device == "cuda":
        return Selection(None, None, f"configured device=cuda index={index} but {why}")
    return Selection(cpu, None, f"device {cpu.label if cpu else 'cpu'}: {why}")
