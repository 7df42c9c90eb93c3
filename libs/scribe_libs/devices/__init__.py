"""Device probe, compute-type and model decision, worker profile (DESIGN.md, "Device profiles and pools").

A transcriber owns one device. At start it probes the device (:class:`SystemProbe`), then
:func:`decide` picks the compute type and the models that fit in the device's free memory,
stepping down precision, then model, then to the CPU, each step recorded as a reason. The
decision becomes a ``scribe.v1.WorkerProfile`` (:func:`profile_from`) and Kubernetes pod
labels/annotations (:func:`kubernetes_labels`). Its batch capacity, the batch jobs the worker
runs at once, is :func:`job_slots` of the accepted configuration. An out-of-memory during a job takes at most two
further steps down (:func:`oom_downgrade`), then the job fails.

Modules: :mod:`.probe` (facts, probes), :mod:`.memory` (compute types, model memory estimates),
:mod:`.capacity` (concurrent batch jobs), :mod:`.decision` (decide, oom_downgrade),
:mod:`.profile` (WorkerProfile, pod labels).
"""

from scribe_libs.devices.capacity import (
    CPU_CORES_PER_BATCH_SLOT,
    HEADROOM_FRACTION,
    MAX_JOB_SLOTS,
    job_slots,
    job_workspace_bytes,
)
from scribe_libs.devices.decision import (
    CPU_CORES_PER_REALTIME_SLOT,
    MAX_OOM_DOWNGRADES,
    MAX_REALTIME_CAPACITY,
    Decision,
    Measure,
    decide,
    oom_downgrade,
)
from scribe_libs.devices.memory import (
    COMPUTE_TYPES,
    ENGLISH_LADDER,
    MODEL_ALIASES,
    MODEL_SPECS,
    MULTILINGUAL_LADDER,
    REQUESTABLE_COMPUTE_TYPES,
    RUNTIME_BYTES,
    UNKNOWN_MODEL_SLOT_BYTES,
    GiB,
    MiB,
    ModelSpec,
    bytes_per_param,
    canonical_model,
    estimate_model_bytes,
    estimate_slot_bytes,
    preferred_compute_types,
    supported_compute_types_for,
)
from scribe_libs.devices.probe import (
    FACTS_DIR,
    DeviceFacts,
    DeviceProbe,
    RecordedProbe,
    Selection,
    SystemProbe,
    load_recorded,
    nvml_handle,
    select_device,
)
from scribe_libs.devices.profile import LABEL_VALUE, RealtimeServing, kubernetes_labels, label_value, profile_from

__all__ = [
    "COMPUTE_TYPES",
    "CPU_CORES_PER_BATCH_SLOT",
    "CPU_CORES_PER_REALTIME_SLOT",
    "ENGLISH_LADDER",
    "FACTS_DIR",
    "HEADROOM_FRACTION",
    "LABEL_VALUE",
    "MAX_JOB_SLOTS",
    "MAX_OOM_DOWNGRADES",
    "MAX_REALTIME_CAPACITY",
    "MODEL_ALIASES",
    "MODEL_SPECS",
    "MULTILINGUAL_LADDER",
    "REQUESTABLE_COMPUTE_TYPES",
    "RUNTIME_BYTES",
    "UNKNOWN_MODEL_SLOT_BYTES",
    "Decision",
    "DeviceFacts",
    "DeviceProbe",
    "GiB",
    "Measure",
    "MiB",
    "ModelSpec",
    "RealtimeServing",
    "RecordedProbe",
    "Selection",
    "SystemProbe",
    "bytes_per_param",
    "canonical_model",
    "decide",
    "estimate_model_bytes",
    "estimate_slot_bytes",
    "job_slots",
    "job_workspace_bytes",
    "kubernetes_labels",
    "label_value",
    "load_recorded",
    "nvml_handle",
    "oom_downgrade",
    "preferred_compute_types",
    "profile_from",
    "select_device",
    "supported_compute_types_for",
]
