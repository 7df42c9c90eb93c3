"""The decision: compute type and models that fit a device, each step down with its reason.

:func:`decide` searches precision first, then model, then the CPU, until the resident models and
the minimum batch/realtime slots fit in the device's free memory (measured through ``measure``
when the caller can load models, else estimated); :func:`oom_downgrade` continues that search
after an out-of-memory during a job, at most :data:`MAX_OOM_DOWNGRADES` times. The accepted
configuration's batch capacity is :func:`scribe_libs.devices.capacity.job_slots`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from scribe_libs.devices.capacity import CPU_CORES_PER_BATCH_SLOT, HEADROOM_FRACTION, job_slots
from scribe_libs.devices.memory import (
    ENGLISH_LADDER,
    MODEL_SPECS,
    MULTILINGUAL_LADDER,
    REQUESTABLE_COMPUTE_TYPES,
    RUNTIME_BYTES,
    GiB,
    _descending,
    _supported,
    canonical_model,
    estimate_model_bytes,
    estimate_slot_bytes,
    preferred_compute_types,
)
from scribe_libs.devices.probe import DeviceFacts
from scribe_libs.errors import InvalidArgument

log = logging.getLogger(__name__)

#: Realtime windows decoded together at most (policy; the gateway batches across sessions).
MAX_REALTIME_CAPACITY = 32
#: On CPU: cores per concurrent realtime window (policy: DESIGN.md measured 0.55-0.9 s per window
#: on 2 cores); per concurrent batch job: :data:`CPU_CORES_PER_BATCH_SLOT` (4, capacity.py).
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
        batch_capacity: Concurrent batch jobs the memory allows (each ``batch_size`` windows plus
            its workspace, after the models and ``realtime_capacity`` windows; CPU: also by
            replicas and cores), at most :data:`~scribe_libs.devices.capacity.MAX_JOB_SLOTS`:
            :func:`~scribe_libs.devices.capacity.job_slots`. The number of jobs the worker runs
            at once and advertises (``WorkerProfile.batch_capacity``).
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
    headroom_fraction: float
    batch_size: int
    cpu_replicas: int
    measure: Measure | None
    cache: dict[tuple[str, str], int | None]


def decide(
    facts: DeviceFacts,
    models: Sequence[str],
    compute_type_requested: str = "auto",
    *,
    measure: Measure | None = None,
    headroom_fraction: float = HEADROOM_FRACTION,
    batch_slots: int = 4,
    realtime_slots: int = 4,
    realtime_share: float = 0.5,
    cpu_facts: DeviceFacts | None = None,
    cpu_measure: Measure | None = None,
    batch_size: int = 8,
    cpu_replicas: int = 1,
) -> Decision:
    """Pick the compute type and models for a device; step down until they fit.

    A configuration fits when ``runtime + resident models + batch_slots x batch-model slot +
    realtime_slots x realtime-model slot <= free - headroom_fraction x total``. The search tries,
    in order: each precision of the ladder (:func:`preferred_compute_types`, or the requested
    type then smaller ones), for each model set: the batch model stepped down its ladder (when a
    step reaches a model no larger than a resident realtime model of the same language family,
    the realtime model serves batch jobs too), then the realtime model (batch follows). If no GPU
    configuration fits and ``cpu_facts`` is given, the same search runs on the CPU. Each step is
    recorded in ``Decision.steps`` and logged. The accepted configuration's
    ``batch_capacity`` (concurrent batch jobs) is :func:`~scribe_libs.devices.capacity.job_slots`
    on these facts (free memory before any model was loaded) with ``batch_size`` and
    ``cpu_replicas``; ``realtime_capacity`` splits the memory left by ``realtime_share``.

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
        cpu_measure: ``measure`` for the CPU fall-back (a caller that loads models for real
            loads them on another device there); ``measure`` when ``None``.
        batch_size: Windows per batch of one batch job (the transcriber's ``batch_size``); sizes
            ``batch_capacity``.
        cpu_replicas: CTranslate2 replicas of a CPU model (the transcriber's engine.cpu_layout);
            on CPU at most one batch job per replica.

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
        headroom_fraction=headroom_fraction,
        batch_size=batch_size,
        cpu_replicas=cpu_replicas,
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
            measure=measure if cpu_measure is None else cpu_measure,
            headroom_fraction=headroom_fraction,
            batch_slots=batch_slots,
            realtime_slots=realtime_slots,
            realtime_share=realtime_share,
            batch_size=batch_size,
            cpu_replicas=cpu_replicas,
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
    realtime_slot = estimate_slot_bytes(decision.realtime_model, ct, facts.device, facts.compute_capability)
    realtime = plan.realtime_slots + int(leftover * plan.realtime_share) // realtime_slot
    realtime_cap = MAX_REALTIME_CAPACITY
    if facts.device == "cpu":
        realtime_cap = max(1, facts.cpu_cores // CPU_CORES_PER_REALTIME_SLOT)
    decision.realtime_capacity = min(realtime, realtime_cap)
    # Jobs in what is left after the models and the realtime windows (job_slots reads both).
    decision.batch_capacity = job_slots(
        decision,
        facts,
        plan.batch_size,
        cpu_replicas=plan.cpu_replicas,
        headroom_fraction=plan.headroom_fraction,
    )
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
        f"{decision.batch_capacity} concurrent batch job(s) at batch size {plan.batch_size}, "
        f"realtime capacity {decision.realtime_capacity}",
    )


def _too_big(model_set: list[str], ct: str, need: int, available: int, facts: DeviceFacts) -> str:
    names = " + ".join(dict.fromkeys(model_set))
    return f"{names} at {ct} need {_gib(need)}, {_gib(available)} available on {facts.label}"


def _step(decision: Decision, reason: str) -> None:
    decision.steps.append(reason)
    log.info("device decision: %s", reason)


def _gib(n: int) -> str:
    return f"{n / GiB:.2f} GiB"
