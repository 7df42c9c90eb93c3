"""The worker profile a decision becomes, and the Kubernetes pod labels/annotations for it."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from google.protobuf import json_format

from scribe.v1 import transcriber_pb2
from scribe_libs.devices.decision import Decision
from scribe_libs.devices.memory import GiB
from scribe_libs.devices.probe import DeviceFacts


@dataclass(frozen=True)
class RealtimeServing:
    """What a worker's streaming decoder (``Transcriber.Decode``) advertises in its profile.

    ``RealtimeServing()`` is a worker that does not serve live windows (yet): capacity 0.

    Attributes:
        capacity: Live sessions the worker carries (``WorkerProfile.realtime_capacity``).
        sessions: Live sessions now (``realtime_sessions``).
        window_cost_seconds: Device seconds one window batch costs, as measured at start (0 when
            the capacity was configured rather than measured); rounded to 0.1 ms in the profile.
        reason: The line of ``decisions`` that says how the capacity was reached ("" for none).
    """

    capacity: int = 0
    sessions: int = 0
    window_cost_seconds: float = 0.0
    reason: str = ""


def profile_from(
    decision: Decision | None,
    facts: DeviceFacts | None,
    *,
    worker_id: str,
    pool: str,
    pod: str = "",
    node: str = "",
    endpoint: str = "",
    version: str = "",
    start_time: float | None = None,
    update_time: float | None = None,
    current_load: int = 0,
    real_time_factor: float = 0.0,
    memory_models_bytes: int | None = None,
    compute_type_requested: str = "",
    selection_reason: str = "",
    not_ready_reason: str = "",
    realtime: RealtimeServing | None = None,
) -> transcriber_pb2.WorkerProfile:
    """The ``WorkerProfile`` a worker advertises (the one builder of it).

    ``decisions`` lists the decision's steps, then its warnings not already among them (prefixed
    ``warning:``), then ``not ready: <reason>`` when it is not ready, then ``realtime.reason``.

    Before the device is decided (``decision`` or ``facts`` is None) the profile has the worker's
    identity, ``compute_type_requested`` and ``decisions`` = ``[selection_reason]`` (when given)
    plus ``not ready: <not_ready_reason>`` or ``starting: probing the device``; device, memory,
    models and capacities are empty.

    Args:
        decision: From :func:`decide` (or :func:`oom_downgrade`); None before it is made.
        facts: The device the decision is for (after a CPU fall-back: the CPU facts).
        worker_id: Unique worker id (the ``scribe_workers`` key).
        pool: Pool the worker takes jobs from.
        pod: Kubernetes pod name (downward API), empty outside Kubernetes.
        node: Kubernetes node name, or the host name.
        endpoint: ``host:port`` of the worker's gRPC server (``Transcriber.Decode``).
        version: Worker software version.
        start_time: Worker start, Unix seconds; unset when ``None``.
        update_time: Profile time, Unix seconds; unset when ``None``.
        current_load: Jobs running now.
        real_time_factor: Measured processing seconds / audio seconds (0 before the first job).
        memory_models_bytes: What the loaded models take as the worker measured them, bytes; the
            decision's figure when ``None``.
        compute_type_requested: As configured; used only before the decision (which has its own).
        selection_reason: Why this device; used only before the decision (its steps start with it).
        not_ready_reason: Why the worker cannot serve although the decision is ready (e.g. the
            engine failed to start): appended as ``not ready: <reason>`` and ``models_loaded``
            left empty. A decision that is not ready brings its own reason.
        realtime: The streaming decoder's figures; None keeps the decision's planned
            ``realtime_capacity`` (windows that fit in memory) and no sessions.
    """
    profile = transcriber_pb2.WorkerProfile(
        worker_id=worker_id, pod=pod, node=node, pool=pool, endpoint=endpoint, version=version
    )
    if decision is None or facts is None:
        status = f"not ready: {not_ready_reason}" if not_ready_reason else "starting: probing the device"
        profile.compute_type_requested = compute_type_requested
        profile.decisions.extend([*([selection_reason] if selection_reason else []), status])
    else:
        _fill_decided(profile, decision, facts, current_load, real_time_factor, memory_models_bytes)
        if not_ready_reason and decision.ready:
            profile.decisions.append(f"not ready: {not_ready_reason}")
            del profile.models_loaded[:]
    if realtime is not None:
        profile.realtime_capacity = max(0, realtime.capacity)
        profile.realtime_sessions = max(0, realtime.sessions)
        profile.realtime_window_cost_seconds = round(realtime.window_cost_seconds, 4)
        if realtime.reason:
            profile.decisions.append(realtime.reason)
    if start_time is not None:
        profile.start_time.FromNanoseconds(int(start_time * 1e9))
    if update_time is not None:
        profile.update_time.FromNanoseconds(int(update_time * 1e9))
    return profile


def _fill_decided(
    profile: transcriber_pb2.WorkerProfile,
    decision: Decision,
    facts: DeviceFacts,
    current_load: int,
    real_time_factor: float,
    memory_models_bytes: int | None,
) -> None:
    """The device, memory, models, capacities and decisions of a decided worker."""
    models_bytes = decision.memory_models_bytes if memory_models_bytes is None else memory_models_bytes
    profile.device = facts.device
    profile.gpu_name = facts.gpu_name
    profile.compute_capability = ".".join(map(str, facts.compute_capability)) if facts.compute_capability else ""
    profile.memory_total_bytes = max(0, facts.memory_total_bytes)
    profile.memory_free_bytes = max(0, facts.memory_free_bytes)
    profile.memory_used_by_models_bytes = max(0, models_bytes)
    profile.compute_type_requested = decision.compute_type_requested
    profile.compute_type_effective = decision.compute_type_effective
    profile.models_loaded.extend(decision.resident_models if decision.ready else [])
    profile.batch_capacity = decision.batch_capacity
    profile.realtime_capacity = decision.realtime_capacity
    profile.current_load = max(0, current_load)
    profile.real_time_factor = max(0.0, real_time_factor)
    profile.cpu_cores = facts.cpu_cores
    profile.decisions.extend(decision.steps)
    profile.decisions.extend(f"warning: {w}" for w in decision.warnings if w not in decision.steps)
    if not decision.ready:
        profile.decisions.append(f"not ready: {decision.not_ready_reason}")


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
