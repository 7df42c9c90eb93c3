"""Batch capacity: how many batch jobs one worker runs at once on its device.

:func:`job_slots` is the one rule. :func:`scribe_libs.devices.decide` applies it to the
configuration it accepts (``Decision.batch_capacity``, advertised as
``WorkerProfile.batch_capacity``); the transcriber's worker loop runs that many jobs at once,
and ``scribe detect`` prints it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from scribe_libs.devices.memory import (
    MODEL_SPECS,
    RUNTIME_BYTES,
    UNKNOWN_MODEL_SLOT_BYTES,
    bytes_per_param,
    canonical_model,
    estimate_model_bytes,
    estimate_slot_bytes,
)
from scribe_libs.devices.probe import DeviceFacts

if TYPE_CHECKING:
    from scribe_libs.devices.decision import Decision

#: Concurrent batch jobs on one device at most (policy). Memory allows ~20 large-v3 jobs at batch 8
#: on an 80 GB card, but the jobs share the device's compute: past a few batches in flight each
#: job only gets slower (its in_progress heartbeats, cancel latency and progress with it) while
#: the device's throughput stops growing. 8 jobs x batch 8 = 64 windows in flight. Raise it with
#: the transcriber's ``max_concurrent_jobs`` setting after measuring (tools/bench_batch.py).
MAX_JOB_SLOTS = 8
#: On CPU: cores per concurrent batch job (policy: one decode keeps 2-4 CTranslate2 threads busy).
CPU_CORES_PER_BATCH_SLOT = 4
#: Share of the device's total memory never planned for (the default of :func:`decide`).
HEADROOM_FRACTION = 0.1


def job_workspace_bytes(model: str, compute_type: str, device: str, cc: tuple[int, int] | None) -> int:
    """Workspace of one model call in flight (encoder activations, beam buffers), bytes.

    :func:`scribe_libs.devices.estimate_model_bytes` minus the weights (params x
    :func:`scribe_libs.devices.bytes_per_param` of the compute type): 0.30 x params x activation
    bytes, at least 64 MiB (scribe_libs/devices/memory.py, from faster-whisper's published
    large-v2 peaks). Each concurrent job runs its own model calls, so each needs its own. A model
    with no spec: the unknown-model slot figure.
    """
    spec = MODEL_SPECS.get(canonical_model(model))
    if spec is None:
        return UNKNOWN_MODEL_SLOT_BYTES
    weights = int(spec.params * bytes_per_param(compute_type))
    return max(0, estimate_model_bytes(model, compute_type, device, cc) - weights)


def job_slots(
    decision: Decision | None,
    facts: DeviceFacts | None,
    batch_size: int,
    *,
    cpu_replicas: int = 1,
    max_slots: int = MAX_JOB_SLOTS,
    headroom_fraction: float = HEADROOM_FRACTION,
) -> int:
    """How many batch jobs a worker runs at once: what the device's memory (and cores) allow.

    GPU (and the memory bound on CPU)::

        available = free - headroom_fraction x total        (decide()'s headroom, 0.1)
        fixed     = runtime + models + realtime_capacity x realtime slot
        per_job   = batch_size x batch slot + workspace of one call
        slots     = clamp(floor((available - fixed) / per_job), 1, max_slots)

    Sources: ``free``/``total``: the device facts the decision was made on (NVML, or the recorded
    facts in scribe_libs/device_facts), before the models were loaded; ``runtime``:
    :data:`scribe_libs.devices.RUNTIME_BYTES` (CUDA context 400 MiB; CPU process 800 MiB);
    ``models``: ``decision.memory_models_bytes`` (measured at load where the device reports
    memory, else estimated); ``realtime_capacity``: the decision's live windows, kept free for
    ``Transcriber.Decode``; slot: :func:`scribe_libs.devices.estimate_slot_bytes` (cross-attention
    keys/values of one 30 s window; faster-whisper measured 224 MiB per extra batch element for
    large-v2 float16, the estimate gives 234 MiB); workspace: :func:`job_workspace_bytes`. For
    large-v2 float16 at batch 8 one job is 944 + 8 x 234 = 2816 MiB, against faster-whisper's
    published batch-8 peak minus weights and context of 6090 - 2956 - 400 = 2734 MiB.

    CPU: also at most one job per CTranslate2 replica (``cpu_replicas``, the transcriber's
    engine.cpu_layout: a replica decodes one call at a time) and one per
    :data:`CPU_CORES_PER_BATCH_SLOT` (4) cores; 1 on a 2-core machine.

    Args:
        decision: A decision whose models, compute type, ``memory_models_bytes`` and
            ``realtime_capacity`` are set (``None`` or not ready: 0). Its ``batch_capacity`` is
            not read.
        facts: The device the decision was made on (its free memory before the models loaded).
        batch_size: Windows per batch of one job (the transcriber's ``batch_size``).
        cpu_replicas: CTranslate2 replicas of a CPU model.
        max_slots: Cap (:data:`MAX_JOB_SLOTS`).
        headroom_fraction: As given to :func:`decide`.

    Returns:
        Concurrent jobs, >= 1 for a ready decision; 0 when not ready.
    """
    if decision is None or not decision.ready or facts is None:
        return 0
    device, cc, ct = decision.device, facts.compute_capability, decision.compute_type_effective
    bound = max_slots
    if device == "cpu":
        bound = min(bound, max(1, cpu_replicas), max(1, facts.cpu_cores // CPU_CORES_PER_BATCH_SLOT))
    if facts.memory_total_bytes <= 0:  # memory unknown: cores and the cap decide
        return max(1, bound)
    available = facts.memory_free_bytes - int(headroom_fraction * facts.memory_total_bytes)
    fixed = (
        RUNTIME_BYTES[device]
        + decision.memory_models_bytes
        + decision.realtime_capacity * estimate_slot_bytes(decision.realtime_model, ct, device, cc)
    )
    per_job = max(1, batch_size) * estimate_slot_bytes(decision.batch_model, ct, device, cc) + job_workspace_bytes(
        decision.batch_model, ct, device, cc
    )
    by_memory = max(0, available - fixed) // per_job
    return int(max(1, min(bound, by_memory)))
