"""Start-up: probe -> decide (models loaded for real through the loader, measured) -> engine or not ready."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from scribe_libs.devices import GiB, RecordedProbe, estimate_model_bytes, load_recorded
from scribe_transcriber import device as device_module
from scribe_transcriber.config import Settings
from scribe_transcriber.device import WorkerDevice, decide_and_load
from scribe_transcriber.engine import ModelLoader


@pytest.fixture(autouse=True)
def fake_gauge(monkeypatch, fake_device):
    # The loaders decide_and_load builds measure through the fake device's gauge.
    original = ModelLoader.__post_init__

    def post_init(self):
        self.gauge = fake_device.gauge()
        original(self)

    monkeypatch.setattr(ModelLoader, "__post_init__", post_init)


def settings(**values) -> Settings:
    values.setdefault("models", ["large-v3", "large-v3-turbo"])
    return Settings(worker_id="w-test", pool="gpu-t4", **values)


def start(fake, facts, **values) -> WorkerDevice:
    probe = RecordedProbe(facts)
    return decide_and_load(settings(**values), probe, fake.resolve, fake.factory)


def test_t4_loads_both_models_at_float16_and_reports_measured_memory(fake_device):
    device = start(fake_device, [load_recorded("t4"), load_recorded("cpu-only")])
    assert device.ready and device.not_ready_reason == ""
    assert device.engine.compute_type == "float16" and list(device.engine.models) == ["large-v3", "large-v3-turbo"]
    # each model was loaded once, on the GPU, and the loader measured what it took
    assert fake_device.loads == [("large-v3", "cuda", "float16"), ("large-v3-turbo", "cuda", "float16")]
    profile = device.profile(settings(), endpoint="10.0.0.7:50053", start_time=1000.0, current_load=1,
                             real_time_factor=0.05)
    expected = estimate_model_bytes("large-v3", "float16") + estimate_model_bytes("large-v3-turbo", "float16")
    assert profile.memory_used_by_models_bytes == expected
    assert (profile.device, profile.gpu_name, profile.compute_capability) == ("cuda", "Tesla T4", "7.5")
    assert (profile.compute_type_requested, profile.compute_type_effective) == ("auto", "float16")
    assert list(profile.models_loaded) == ["large-v3", "large-v3-turbo"]
    assert profile.realtime_capacity >= 1
    # concurrent batch jobs (batch_size 8): what the decision planned, as libs/tests/test_job_slots.py
    assert profile.batch_capacity == device.decision.batch_capacity == device.job_slots(settings()) == 2
    assert (profile.current_load, profile.real_time_factor, profile.endpoint) == (1, 0.05, "10.0.0.7:50053")
    assert profile.decisions[0].startswith("device cuda:0 (Tesla T4, cc 7.5)")
    assert "(measured)" in profile.decisions[-1]


def test_a_model_that_runs_out_of_memory_on_load_is_a_logged_step_down(fake_device, caplog):
    caplog.set_level(logging.INFO)
    fake_device.oom_on_load = {("large-v3", "float16")}
    device = start(fake_device, [load_recorded("t4"), load_recorded("cpu-only")])
    assert device.ready
    assert device.engine.compute_type == "int8_float16"
    steps = device.decision.steps
    assert "loading large-v3 at float16 ran out of memory on cuda:0 (Tesla T4, cc 7.5)" in steps
    assert "step down precision float16 -> int8_float16" in steps
    assert any("ran out of memory" in r.getMessage() for r in caplog.records if r.name.startswith("scribe_libs"))
    # only the chosen precision stays resident
    assert {key[1] for key in device.engine.loader.loaded} == {"int8_float16"}


def test_requested_and_effective_compute_type_mismatch_is_a_warning(fake_device, caplog):
    caplog.set_level(logging.WARNING)
    device = start(fake_device, [load_recorded("gtx-1050"), load_recorded("cpu-only")], compute_type="float16",
                   models=["large-v3-turbo"])
    assert device.ready and device.engine.compute_type == "int8"
    profile = device.profile(settings(compute_type="float16"), endpoint="", start_time=0.0)
    assert (profile.compute_type_requested, profile.compute_type_effective) == ("float16", "int8")
    assert "warning: compute type requested float16, effective int8" in profile.decisions
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "device decided" in r.getMessage()]
    assert warned and "requested float16" in warned[0].getMessage()


def test_nothing_fits_falls_back_to_the_cpu_and_loads_there(fake_device):
    tiny_gpu = dataclasses.replace(load_recorded("gtx-1050"), memory_total_bytes=1 * GiB, memory_free_bytes=GiB // 2)
    device = start(fake_device, [tiny_gpu, load_recorded("cpu-only")], models=["base"])
    assert device.ready and device.engine.device == "cpu" and device.facts.device == "cpu"
    assert "fall back to the CPU" in " ".join(device.decision.steps)
    assert fake_device.loads[-1] == ("base", "cpu", "int8")
    assert device.decision.batch_capacity == 1  # 2 cores: one job
    assert all(key[0] != "cuda" for key in device.engine.loader.loaded)


def test_nothing_fits_anywhere_is_not_ready_with_the_reason_in_the_profile(fake_device, caplog):
    caplog.set_level(logging.ERROR)
    small_cpu = dataclasses.replace(load_recorded("cpu-only"), memory_total_bytes=GiB, memory_free_bytes=GiB // 2)
    device = start(fake_device, [small_cpu], models=["large-v3"])
    assert not device.ready and device.engine is None
    assert device.not_ready_reason.startswith("nothing fits on cpu")
    profile = device.profile(settings(models=["large-v3"]), endpoint="", start_time=0.0)
    assert profile.decisions[-1] == f"not ready: {device.not_ready_reason}"
    assert list(profile.models_loaded) == []
    assert any("not ready" in r.getMessage() for r in caplog.records)


def test_an_explicit_cuda_device_that_is_absent_is_not_ready(fake_device):
    device = start(fake_device, [load_recorded("cpu-only")], device="cuda")
    assert not device.ready
    assert "configured device=cuda" in device.not_ready_reason
    profile = device.profile(settings(device="cuda"), endpoint="", start_time=0.0)
    assert profile.decisions[-1].startswith("not ready: configured device=cuda")


def test_a_model_that_cannot_be_found_is_not_ready_with_the_reason(fake_device):
    from scribe_libs.models import ModelUnavailable

    def resolve(name: str) -> Path:
        raise ModelUnavailable(name, ["package: not installed"])

    device = decide_and_load(settings(models=["base"]), RecordedProbe([load_recorded("cpu-only")]), resolve,
                             fake_device.factory)
    assert not device.ready
    assert device.not_ready_reason == "model 'base' not found; tried: package: not installed"


def test_the_realtime_model_is_part_of_the_decision(fake_device):
    values = {"models": ["large-v3"], "realtime_model": "turbo"}
    assert device_module.resident_models(settings(**values)) == ["large-v3", "turbo"]
    device = start(fake_device, [load_recorded("a100-80gb")], **values)
    assert device.engine.decision.resident_models == ["large-v3", "large-v3-turbo"]
    # the streaming decoder looks the realtime model up by its configured name
    assert device.engine.load("turbo") is device.engine.models["large-v3-turbo"]


def test_the_served_profile_carries_the_decoder_s_capacity_and_how_it_was_measured(fake_device):
    from scribe_transcriber.decode import DecodeScheduler
    from scribe_transcriber.servicer import TranscriberState

    device = start(fake_device, [load_recorded("t4"), load_recorded("cpu-only")])
    state = TranscriberState(settings=settings(), device=device, port=50053)
    before = state.profile()
    assert before.realtime_capacity == 0 and before.realtime_window_cost_seconds == 0.0  # Decode not served yet
    assert list(before.decisions) == list(device.profile(settings(), endpoint="", start_time=0.0).decisions)

    state.decoder = DecodeScheduler(device.engine, "large-v3", "w-test", max_batch=2, parallel=1)
    state.decoder.capacity, state.decoder.window_cost_seconds = 6, 0.155123
    profile = state.profile()
    assert (profile.realtime_capacity, profile.realtime_sessions) == (6, 0)
    assert profile.realtime_window_cost_seconds == 0.1551
    assert profile.decisions[-1] == (
        "realtime capacity 6 live sessions (measured: a 2-window decode of the 7.7 s probe costs 0.155 s of device "
        "time with 1 in parallel, target period 1.25 s at 80% utilization); 2 window(s) decoded together"
    )
    assert profile.decisions[:-1] == before.decisions
    assert profile.endpoint.endswith(":50053") and list(profile.models_loaded) == ["large-v3", "large-v3-turbo"]
