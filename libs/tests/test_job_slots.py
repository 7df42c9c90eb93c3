"""Batch capacity: concurrent batch jobs per worker (scribe_libs.devices.job_slots) on recorded devices.

The decision is the real one (:func:`scribe_libs.devices.decide` with its estimates) on the facts
in scribe_libs/device_facts; its ``batch_capacity`` is the number of jobs a worker on that card
runs at once with ``batch_size`` 8, and the counts below follow from the formula in job_slots'
docstring.
"""

from __future__ import annotations

import dataclasses

import pytest

from scribe_libs.devices import (
    MAX_JOB_SLOTS,
    MODEL_SPECS,
    RUNTIME_BYTES,
    GiB,
    bytes_per_param,
    decide,
    estimate_model_bytes,
    estimate_slot_bytes,
    job_slots,
    job_workspace_bytes,
    load_recorded,
    oom_downgrade,
)

LARGE = ["large-v3"]
LARGE_AND_TURBO = ["large-v3", "large-v3-turbo"]


def capacity(card: str, models: list[str], compute_type: str, **kwargs) -> int:
    decision = decide(load_recorded(card), models, compute_type, **kwargs)
    assert decision.ready, decision.not_ready_reason
    return decision.batch_capacity


@pytest.mark.parametrize(
    ("card", "models", "compute_type", "expected"),
    [
        # 4 GB Pascal: large-v3 steps down to large-v3-turbo at int8; one job at a time.
        ("gtx-1050", LARGE, "auto", 1),
        ("gtx-1050", LARGE_AND_TURBO, "int8", 1),
        # 16 GB T4: large-v3 alone also serves live windows (19 of them reserved): one job.
        ("t4", LARGE, "float16", 1),
        ("t4", LARGE_AND_TURBO, "float16", 2),
        # 24 GB L4
        ("l4", LARGE, "float16", 3),
        ("l4", LARGE_AND_TURBO, "float16", 4),
        ("l4", LARGE_AND_TURBO, "int8", 5),
        # 40 GB A100 and 80 GB cards: the cap.
        ("a100-40gb", LARGE_AND_TURBO, "float16", MAX_JOB_SLOTS),
        ("h100-80gb", LARGE, "float16", MAX_JOB_SLOTS),
        ("h100-80gb", LARGE_AND_TURBO, "float16", MAX_JOB_SLOTS),
        ("h100-80gb", LARGE_AND_TURBO, "int8", MAX_JOB_SLOTS),
        # CPU (2 cores): one job.
        ("cpu-only", LARGE_AND_TURBO, "auto", 1),
    ],
)
def test_batch_capacity_on_recorded_devices_is_concurrent_jobs(card, models, compute_type, expected):
    facts = load_recorded(card)
    decision = decide(facts, models, compute_type)
    assert decision.batch_capacity == job_slots(decision, facts, 8) == expected
    assert f"{expected} concurrent batch job(s) at batch size 8" in decision.steps[-1]


@pytest.mark.parametrize(("compute_type", "by_memory"), [("float16", 23), ("int8", 24)])
def test_h100_memory_allows_more_than_the_cap(compute_type, by_memory):
    facts = load_recorded("h100-80gb")
    decision = decide(facts, LARGE_AND_TURBO, compute_type)
    assert job_slots(decision, facts, 8, max_slots=1000) == by_memory


@pytest.mark.parametrize("card", ["gtx-1050", "t4", "l4", "a100-40gb", "a100-80gb", "h100-80gb"])
@pytest.mark.parametrize("compute_type", ["float16", "int8"])
def test_planned_jobs_fit_in_the_memory_the_decision_saw(card, compute_type):
    facts = load_recorded(card)
    decision = decide(facts, LARGE_AND_TURBO, compute_type)
    n = job_slots(decision, facts, 8, max_slots=1000)
    ct, cc = decision.compute_type_effective, facts.compute_capability
    per_job = 8 * estimate_slot_bytes(decision.batch_model, ct, "cuda", cc) + job_workspace_bytes(
        decision.batch_model, ct, "cuda", cc
    )
    fixed = (
        RUNTIME_BYTES["cuda"]
        + decision.memory_models_bytes
        + decision.realtime_capacity * estimate_slot_bytes(decision.realtime_model, ct, "cuda", cc)
    )
    available = facts.memory_free_bytes - int(0.1 * facts.memory_total_bytes)
    # n jobs fit; one more would not (except the floor of 1 on a card where even one is tight)
    assert n == 1 or fixed + n * per_job <= available
    assert fixed + (n + 1) * per_job > available
    assert decision.batch_capacity == min(n, MAX_JOB_SLOTS)


def test_large_v2_float16_batch_8_job_matches_the_published_peak():
    # faster-whisper README: large-v2 float16 batch 8 peaks at 6090 MiB; minus weights (2956 MiB)
    # and the CUDA context (400 MiB) a job is 2734 MiB. The formula's per-job cost is within 5 %.
    mib = 1 << 20
    per_job = 8 * estimate_slot_bytes("large-v2", "float16") + job_workspace_bytes(
        "large-v2", "float16", "cuda", (8, 0)
    )
    assert abs(per_job / mib - 2734) / 2734 < 0.05


def test_workspace_is_the_model_estimate_minus_its_weights():
    params = MODEL_SPECS["large-v3"].params
    for ct in ("float16", "int8_float16", "int8", "float32"):
        weights = int(params * bytes_per_param(ct))
        assert job_workspace_bytes("large-v3", ct, "cuda", (8, 0)) == estimate_model_bytes("large-v3", ct) - weights
    assert bytes_per_param("float16") == 2.0 and bytes_per_param("int8_float16") < bytes_per_param("int8")


def test_smaller_batches_leave_room_for_more_jobs():
    assert capacity("l4", LARGE_AND_TURBO, "float16", batch_size=4) > capacity("l4", LARGE_AND_TURBO, "float16")


def test_cpu_is_bounded_by_replicas_and_cores():
    many = dataclasses.replace(load_recorded("cpu-only"), cpu_cores=16)
    # one job per CTranslate2 replica, and one per 4 cores
    assert decide(many, ["base"]).batch_capacity == 1  # one replica by default
    assert decide(many, ["base"], cpu_replicas=2).batch_capacity == 2
    assert decide(many, ["base"], cpu_replicas=16).batch_capacity == 4


def test_the_cpu_fall_back_plans_with_the_same_batch_size_and_replicas():
    tiny_gpu = dataclasses.replace(load_recorded("gtx-1050"), memory_total_bytes=GiB, memory_free_bytes=GiB // 2)
    cpu = dataclasses.replace(load_recorded("cpu-only"), cpu_cores=16)
    decision = decide(tiny_gpu, ["base"], cpu_facts=cpu, cpu_replicas=3)
    assert decision.device == "cpu" and decision.batch_capacity == 3


def test_not_ready_is_zero():
    facts = load_recorded("l4")
    decision = decide(facts, LARGE_AND_TURBO)
    assert job_slots(None, facts, 8) == 0
    assert job_slots(dataclasses.replace(decision, ready=False), facts, 8) == 0
    nothing_fits = decide(dataclasses.replace(load_recorded("t4"), memory_free_bytes=2 * GiB), LARGE_AND_TURBO)
    assert not nothing_fits.ready and nothing_fits.batch_capacity == 0


def test_an_oom_downgrade_plans_its_jobs_on_the_facts_before_the_models_loaded():
    facts = load_recorded("l4")
    decision = decide(facts, LARGE_AND_TURBO, batch_size=4)
    smaller = oom_downgrade(decision, 1)
    assert smaller is not None and smaller.compute_type_effective != decision.compute_type_effective
    assert smaller.batch_capacity == job_slots(smaller, facts, 4) >= decision.batch_capacity
