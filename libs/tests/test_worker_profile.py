"""The one WorkerProfile builder (scribe_libs.devices.profile_from) in the states a worker goes
through: starting, not ready, ready, ready but its engine failed, serving live windows."""

from __future__ import annotations

import dataclasses

from scribe_libs.devices import GiB, RealtimeServing, decide, load_recorded, profile_from

RESIDENT = ["large-v3", "large-v3-turbo"]
WHO = dict(worker_id="t4-0", pool="t4", pod="p", node="n", endpoint="10.0.0.5:50053", version="1.0")


def test_before_the_decision_the_profile_says_who_and_what_it_is_doing():
    starting = profile_from(None, None, **WHO, compute_type_requested="auto", start_time=10.0, update_time=12.0)
    assert (starting.worker_id, starting.pool, starting.pod, starting.node) == ("t4-0", "t4", "p", "n")
    assert (starting.endpoint, starting.version, starting.compute_type_requested) == ("10.0.0.5:50053", "1.0", "auto")
    assert list(starting.decisions) == ["starting: probing the device"]
    assert (starting.device, starting.compute_type_effective, list(starting.models_loaded)) == ("", "", [])
    assert (starting.batch_capacity, starting.realtime_capacity) == (0, 0)
    assert starting.start_time.ToNanoseconds() == 10 * 10**9 and starting.update_time.ToNanoseconds() == 12 * 10**9

    absent = profile_from(None, None, **WHO, selection_reason="no CUDA device", not_ready_reason="configured cuda")
    assert list(absent.decisions) == ["no CUDA device", "not ready: configured cuda"]


def test_a_ready_decision_whose_engine_failed_is_not_ready_and_serves_no_model():
    facts = load_recorded("t4")
    decision = decide(facts, RESIDENT)
    profile = profile_from(decision, facts, **WHO, not_ready_reason="RuntimeError: boom")
    assert list(profile.decisions) == [*decision.steps, "not ready: RuntimeError: boom"]
    assert list(profile.models_loaded) == []


def test_a_decision_that_is_not_ready_brings_its_own_reason_once():
    facts = dataclasses.replace(load_recorded("t4"), memory_free_bytes=2 * GiB)  # nothing fits
    decision = decide(facts, RESIDENT)
    assert not decision.ready
    profile = profile_from(decision, facts, **WHO, not_ready_reason=decision.not_ready_reason)
    assert [d for d in profile.decisions if d.startswith("not ready")] == [f"not ready: {decision.not_ready_reason}"]
    assert list(profile.models_loaded) == []


def test_the_streaming_decoder_s_figures_replace_the_planned_realtime_capacity():
    facts = load_recorded("t4")
    decision = decide(facts, RESIDENT)
    planned = profile_from(decision, facts, **WHO)
    assert planned.realtime_capacity == decision.realtime_capacity and planned.realtime_sessions == 0
    serving = profile_from(
        decision, facts, **WHO,
        realtime=RealtimeServing(capacity=6, sessions=2, window_cost_seconds=0.155123, reason="realtime capacity 6"),
    )
    assert (serving.realtime_capacity, serving.realtime_sessions, serving.realtime_window_cost_seconds) == (
        6, 2, 0.1551
    )
    assert list(serving.decisions) == [*planned.decisions, "realtime capacity 6"]
    idle = profile_from(decision, facts, **WHO, realtime=RealtimeServing())  # Decode not served yet
    assert (idle.realtime_capacity, list(idle.decisions)) == (0, list(planned.decisions))
