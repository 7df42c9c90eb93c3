"""The worker profile a decision becomes, and the Kubernetes pod labels/annotations for it."""

from __future__ import annotations

import json
import re

from google.protobuf import json_format

from scribe.v1 import transcriber_pb2
from scribe_libs.devices.decision import Decision
from scribe_libs.devices.memory import GiB
from scribe_libs.devices.probe import DeviceFacts


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
    current_load: int = 0,
    real_time_factor: float = 0.0,
    memory_models_bytes: int | None = None,
) -> transcriber_pb2.WorkerProfile:
    """The ``WorkerProfile`` a worker advertises.

    ``decisions`` lists the decision's steps, then its warnings not already among them (prefixed
    ``warning:``), then ``not ready: <reason>`` when it is not ready.

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
        current_load: Jobs running now.
        real_time_factor: Measured processing seconds / audio seconds (0 before the first job).
        memory_models_bytes: What the loaded models take as the worker measured them; the
            decision's figure when ``None``.
    """
    decisions = list(decision.steps)
    decisions += [f"warning: {w}" for w in decision.warnings if w not in decision.steps]
    if not decision.ready:
        decisions.append(f"not ready: {decision.not_ready_reason}")
    models_bytes = decision.memory_models_bytes if memory_models_bytes is None else memory_models_bytes
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
        memory_used_by_models_bytes=max(0, models_bytes),
        compute_type_requested=decision.compute_type_requested,
        compute_type_effective=decision.compute_type_effective,
        models_loaded=decision.resident_models if decision.ready else [],
        batch_capacity=decision.batch_capacity,
        realtime_capacity=decision.realtime_capacity,
        current_load=max(0, current_load),
        real_time_factor=max(0.0, real_time_factor),
        endpoint=endpoint,
        version=version,
        cpu_cores=facts.cpu_cores,
        decisions=decisions,
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
