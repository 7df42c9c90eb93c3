import dataclasses
import json
import logging
import sys
import types

import grpc
import pytest

from scribe_libs.devices import (
    LABEL_VALUE,
    MAX_OOM_DOWNGRADES,
    DeviceFacts,
    GiB,
    MiB,
    RecordedProbe,
    SystemProbe,
    decide,
    estimate_model_bytes,
    kubernetes_labels,
    load_recorded,
    oom_downgrade,
    profile_from,
)
from scribe_libs.errors import InvalidArgument

RESIDENT = ["large-v3", "large-v3-turbo"]

# name -> (compute capability, total GiB roughly, effective compute type and models for large-v3 + turbo)
TABLE = {
    "gtx-1050": ((6, 1), 4, "int8", ["large-v3-turbo", "large-v3-turbo"]),
    "t4": ((7, 5), 15, "float16", RESIDENT),
    "l4": ((8, 9), 22, "float16", RESIDENT),
    "a100-40gb": ((8, 0), 40, "float16", RESIDENT),
    "a100-80gb": ((8, 0), 80, "float16", RESIDENT),
    "h100-80gb": ((9, 0), 80, "float16", RESIDENT),
    "cpu-only": (None, None, "int8", RESIDENT),
}


def available(facts: DeviceFacts, headroom: float = 0.1) -> int:
    return facts.memory_free_bytes - int(headroom * facts.memory_total_bytes)


@pytest.mark.parametrize("name", sorted(TABLE))
def test_decision_table_with_large_v3_and_turbo_resident(name):
    cc, total_gib, compute_type, models = TABLE[name]
    facts = load_recorded(name)
    assert facts.compute_capability == cc
    if total_gib is not None:
        assert round(facts.memory_total_bytes / GiB) == total_gib
    decision = decide(facts, RESIDENT)
    assert decision.ready, decision.not_ready_reason
    assert decision.compute_type_effective == compute_type
    assert decision.models == models
    assert decision.warnings == []
    assert 0 < decision.memory_needed_bytes <= available(facts)
    assert decision.batch_capacity >= 1 and decision.realtime_capacity >= 1
    assert decision.steps[-1].startswith(f"use {' + '.join(dict.fromkeys(models))} at {compute_type}")


def test_bigger_cards_get_more_capacity_than_smaller_ones():
    t4 = decide(load_recorded("t4"), ["large-v3"])
    a100 = decide(load_recorded("a100-80gb"), ["large-v3"])
    assert (a100.batch_capacity, a100.realtime_capacity) >= (t4.batch_capacity, t4.realtime_capacity)
    assert a100.realtime_capacity > t4.realtime_capacity


def test_cpu_capacity_comes_from_cores():
    two = load_recorded("cpu-only")
    many = dataclasses.replace(two, cpu_cores=16)
    assert decide(two, ["base"], cpu_replicas=2).batch_capacity == 1
    assert decide(two, ["base"]).realtime_capacity == 1
    # concurrent batch jobs: one per 4 cores (and per CTranslate2 replica, libs/tests/test_job_slots.py)
    assert decide(many, ["base"], cpu_replicas=16).batch_capacity == 4
    assert decide(many, ["base"]).realtime_capacity == 8


def test_tight_memory_on_volta_or_newer_steps_down_to_int8_float16():
    facts = dataclasses.replace(load_recorded("t4"), memory_free_bytes=7 * GiB)
    decision = decide(facts, RESIDENT)
    assert decision.ready
    assert decision.compute_type_effective == "int8_float16"
    assert decision.models == RESIDENT
    assert decision.steps[0].startswith("large-v3 + large-v3-turbo at float16 need")
    assert decision.steps[1] == "step down precision float16 -> int8_float16"
    assert decision.warnings == []  # "auto" asked for nothing in particular


def test_large_models_on_the_4_gb_pascal_card_step_down_one_logged_step_at_a_time(caplog):
    caplog.set_level(logging.INFO, logger="scribe_libs.devices")
    decision = decide(load_recorded("gtx-1050"), RESIDENT)
    assert decision.ready
    assert decision.steps[0].startswith("large-v3 + large-v3-turbo at int8 need")
    assert decision.steps[1] == (
        "step down batch model large-v3 -> large-v3-turbo (the resident realtime model serves batch jobs too)"
    )
    assert decision.steps[2].startswith("use large-v3-turbo at int8 on cuda:0 (NVIDIA GeForce GTX 1050, cc 6.1)")
    assert decision.resident_models == ["large-v3-turbo"]
    logged = [r.getMessage() for r in caplog.records]
    assert logged == [f"device decision: {step}" for step in decision.steps]


def test_batch_slots_that_do_not_fit_step_the_realtime_model_down_too():
    facts = load_recorded("gtx-1050")
    decision = decide(facts, RESIDENT, batch_slots=12, realtime_slots=12)
    assert decision.ready
    # 24 slots of float32 activations (Pascal runs int8 with float32 layers): small does not fit either
    model_steps = [s for s in decision.steps if s.startswith("step down")]
    assert model_steps == [
        "step down batch model large-v3 -> large-v3-turbo (the resident realtime model serves batch jobs too)",
        "step down realtime model large-v3-turbo -> small (batch jobs follow it)",
        "step down realtime model small -> base (batch jobs follow it)",
    ]
    assert decision.models == ["base", "base"]
    assert decision.memory_needed_bytes <= available(facts)


def test_a_shared_batch_and_realtime_model_steps_down_together():
    facts = dataclasses.replace(load_recorded("gtx-1050"), memory_free_bytes=2 * GiB)
    decision = decide(facts, ["turbo", "turbo"])
    assert decision.ready
    assert [s for s in decision.steps if s.startswith("step down")][0] == (
        "step down realtime model large-v3-turbo -> small (batch jobs follow it)"
    )
    assert decision.models[0] == decision.models[1]


def test_when_nothing_fits_the_worker_is_not_ready_and_says_why():
    facts = dataclasses.replace(load_recorded("t4"), memory_free_bytes=2 * GiB)  # 1.5 GiB of headroom
    decision = decide(facts, RESIDENT)
    assert not decision.ready
    assert decision.not_ready_reason.startswith("nothing fits on cuda:0 (Tesla T4, cc 7.5)")
    assert "tiny at int8_float16" in decision.not_ready_reason
    assert "no CPU fall-back configured" in decision.not_ready_reason
    # the whole ladder was tried, precision then model, in order
    steps = [s for s in decision.steps if s.startswith("step down")]
    assert steps == [
        "step down precision float16 -> int8_float16",
        "step down batch model large-v3 -> large-v3-turbo (the resident realtime model serves batch jobs too)",
        "step down precision float16 -> int8_float16",
        "step down realtime model large-v3-turbo -> small (batch jobs follow it)",
        "step down precision float16 -> int8_float16",
        "step down realtime model small -> base (batch jobs follow it)",
        "step down precision float16 -> int8_float16",
        "step down realtime model base -> tiny (batch jobs follow it)",
        "step down precision float16 -> int8_float16",
    ]
    profile = profile_from(decision, facts, worker_id="w", pool="t4")
    assert profile.decisions[-1] == f"not ready: {decision.not_ready_reason}"
    assert list(profile.models_loaded) == []


def test_when_nothing_fits_on_the_gpu_it_falls_back_to_the_cpu():
    gpu = dataclasses.replace(load_recorded("gtx-1050"), memory_free_bytes=300 * MiB)
    cpu = load_recorded("cpu-only")
    decision = decide(gpu, RESIDENT, cpu_facts=cpu)
    assert decision.ready
    assert decision.device == "cpu"
    assert decision.compute_type_effective == "int8"
    assert "nothing fits on cuda:0 (NVIDIA GeForce GTX 1050, cc 6.1): fall back to the CPU" in decision.steps
    assert decision.steps[-1].startswith("use large-v3 + large-v3-turbo at int8 on cpu (2 cores)")


def test_an_absurd_configuration_on_a_small_cpu_is_not_ready():
    cpu = dataclasses.replace(load_recorded("cpu-only"), memory_free_bytes=200 * MiB, memory_total_bytes=1 * GiB)
    decision = decide(cpu, ["large-v3"])
    assert not decision.ready
    assert decision.not_ready_reason.startswith("nothing fits on cpu (2 cores)")


def test_requested_float16_on_pascal_runs_int8_with_a_warning():
    decision = decide(load_recorded("gtx-1050"), ["base"], "float16")
    assert decision.compute_type_requested == "float16"
    assert decision.compute_type_effective == "int8"
    assert decision.warnings[0].startswith("compute type float16 requested but cuda:0 (NVIDIA GeForce GTX 1050")
    assert "compute type requested float16, effective int8" in decision.warnings
    profile = profile_from(decision, load_recorded("gtx-1050"), worker_id="w", pool="p")
    assert (profile.compute_type_requested, profile.compute_type_effective) == ("float16", "int8")


def test_requested_type_that_fits_is_honoured_and_a_memory_downgrade_of_it_warns():
    t4 = load_recorded("t4")
    honoured = decide(t4, RESIDENT, "int8_float16")
    assert honoured.compute_type_effective == "int8_float16" and honoured.warnings == []
    tight = decide(dataclasses.replace(t4, memory_free_bytes=7 * GiB), RESIDENT, "float16")
    assert tight.compute_type_effective == "int8_float16"
    assert tight.warnings == ["compute type requested float16, effective int8_float16"]


def test_unknown_compute_type_is_an_invalid_argument():
    with pytest.raises(InvalidArgument) as err:
        decide(load_recorded("t4"), ["base"], "fp16")
    assert err.value.reason == "UNKNOWN_COMPUTE_TYPE"
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_model_aliases_are_resolved():
    assert decide(load_recorded("l4"), ["large", "turbo"]).models == RESIDENT


def test_measurements_replace_the_estimate_and_are_taken_once():
    calls = []

    def measure(model, compute_type):
        calls.append((model, compute_type))
        # large-v3 at float16 turns out much bigger than estimated on this card
        return 11 * GiB if (model, compute_type) == ("large-v3", "float16") else None

    facts = load_recorded("t4")
    decision = decide(facts, RESIDENT, measure=measure)
    assert decision.measured
    assert decision.compute_type_effective == "int8_float16"
    assert len(calls) == len(set(calls))
    expected = estimate_model_bytes("large-v3", "int8_float16") + estimate_model_bytes("large-v3-turbo", "int8_float16")
    assert decision.memory_models_bytes == expected
    assert "(measured)" in decision.steps[-1]


def test_a_measurement_that_runs_out_of_memory_is_a_step_down():
    def measure(model, compute_type):
        if model == "large-v3":
            raise MemoryError("CUDA out of memory")
        return None

    decision = decide(load_recorded("a100-40gb"), RESIDENT, measure=measure)
    assert decision.ready
    assert decision.models == ["large-v3-turbo", "large-v3-turbo"]
    assert "loading large-v3 at float16 ran out of memory on cuda:0 (NVIDIA A100-SXM4-40GB, cc 8.0)" in decision.steps


def test_an_unknown_model_needs_a_measurement():
    facts = load_recorded("a100-80gb")
    unmeasured = decide(facts, ["my-finetune"])
    assert not unmeasured.ready
    assert "no memory estimate for this model" in unmeasured.steps[0]
    measured = decide(facts, ["my-finetune"], measure=lambda m, ct: 3 * GiB)
    assert measured.ready and measured.models == ["my-finetune"]


def test_oom_downgrades_at_most_twice_then_the_job_must_fail():
    first = decide(load_recorded("t4"), RESIDENT)
    assert first.compute_type_effective == "float16"
    second = oom_downgrade(first, 1)
    assert second is not None
    assert (second.compute_type_effective, second.models) == ("int8_float16", RESIDENT)
    assert second.steps[-2] == (
        "out of memory during a job (downgrade 1 of 2): large-v3 + large-v3-turbo at float16 -> "
        "large-v3 + large-v3-turbo at int8_float16"
    )
    third = oom_downgrade(second, 2)
    assert third is not None
    assert third.memory_needed_bytes < second.memory_needed_bytes < first.memory_needed_bytes
    assert third.resident_models == ["large-v3-turbo"]
    assert oom_downgrade(third, 3) is None
    assert MAX_OOM_DOWNGRADES == 2
    # the decisions given in are not changed
    assert first.compute_type_effective == "float16" and len(first.steps) == 1
    with pytest.raises(ValueError):
        oom_downgrade(first, 0)


def test_oom_downgrade_when_nothing_smaller_is_left_returns_none():
    smallest = decide(load_recorded("cpu-only"), ["tiny"])
    assert smallest.ready
    assert oom_downgrade(smallest, 1) is None


def test_profile_carries_the_facts_and_the_decision():
    facts = load_recorded("t4")
    decision = decide(facts, RESIDENT)
    profile = profile_from(
        decision,
        facts,
        worker_id="t4-0",
        pool="t4",
        pod="transcriber-t4-abc",
        node="gke-node-1",
        endpoint="10.0.0.5:50051",
        version="0.1.0",
        start_time=1_700_000_000.0,
        update_time=1_700_000_010.5,
    )
    assert (profile.device, profile.gpu_name, profile.compute_capability) == ("cuda", "Tesla T4", "7.5")
    assert profile.memory_total_bytes == facts.memory_total_bytes
    assert profile.memory_used_by_models_bytes == decision.memory_models_bytes > 0
    assert list(profile.models_loaded) == RESIDENT
    assert (profile.batch_capacity, profile.realtime_capacity) == (decision.batch_capacity, decision.realtime_capacity)
    assert profile.cpu_cores == 8
    assert list(profile.decisions) == decision.steps
    assert profile.update_time.ToNanoseconds() == 1_700_000_010_500_000_000


def test_kubernetes_labels_are_valid_and_annotations_carry_the_profile():
    facts = load_recorded("t4")
    profile = profile_from(decide(facts, RESIDENT), facts, worker_id="w", pool="t4")
    labels, annotations = kubernetes_labels(profile)
    assert labels["scribe.dev/gpu"] == "Tesla-T4"
    assert labels["scribe.dev/vram-gb"] == "15"  # NVML reports 15360 MiB for the "16 GB" T4
    assert labels["scribe.dev/compute-type"] == "float16"
    assert labels["scribe.dev/pool"] == "t4"
    body = json.loads(annotations["scribe.dev/profile"])
    assert body["gpuName"] == "Tesla T4"
    assert body["modelsLoaded"] == RESIDENT
    assert body["decisions"] == list(profile.decisions)

    cpu = load_recorded("cpu-only")
    cpu_profile = profile_from(decide(cpu, ["base"]), cpu, worker_id="w", pool="  CPU pool / embedded (dev)!!  " * 4)
    cpu_labels, _ = kubernetes_labels(cpu_profile)
    assert cpu_labels["scribe.dev/gpu"] == "cpu"
    assert cpu_labels["scribe.dev/vram-gb"] == "0"
    for value in [*labels.values(), *cpu_labels.values()]:
        assert len(value) <= 63 and LABEL_VALUE.match(value), value


def test_recorded_probe_returns_the_recorded_facts():
    facts = [load_recorded("h100-80gb"), load_recorded("cpu-only")]
    assert RecordedProbe(facts).probe() == facts
    with pytest.raises(FileNotFoundError, match="known: a100-40gb"):
        load_recorded("rtx-9090")


def test_facts_round_trip_through_json():
    facts = load_recorded("l4")
    assert DeviceFacts.from_dict(json.loads(json.dumps(facts.to_dict()))) == facts


def test_system_probe_on_this_machine_reports_the_cpu_and_why_there_is_no_gpu(caplog):
    ctranslate2 = pytest.importorskip("ctranslate2")
    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a CUDA device")
    caplog.set_level(logging.INFO, logger="scribe_libs.devices")
    probe = SystemProbe()
    facts = probe.probe()
    assert len(facts) == 1
    cpu = facts[0]
    assert cpu.device == "cpu" and cpu.gpu_name == "" and cpu.compute_capability is None
    assert cpu.cpu_cores > 0
    assert 0 < cpu.memory_free_bytes <= cpu.memory_total_bytes
    assert "int8" in cpu.supported_compute_types
    assert probe.no_gpu_reason and probe.no_gpu_reason.startswith("CTranslate2 reports 0 CUDA devices")
    assert f"no GPU: {probe.no_gpu_reason}" in [r.getMessage() for r in caplog.records]
    decision = decide(cpu, ["tiny.en"])
    assert decision.ready and decision.compute_type_effective == "int8"


# -- SystemProbe against stand-ins for ctranslate2 and NVML (the GPU path on a machine without one)


class FakeNVMLError(Exception):
    pass


def fake_nvml(gpus, *, init_error=None):
    """A pynvml stand-in: gpus = {index: (uuid, name, cc, total, free)}."""
    nvml = types.SimpleNamespace(NVMLError=FakeNVMLError, shutdowns=0)

    def init():
        if init_error:
            raise FakeNVMLError(init_error)

    def shutdown():
        nvml.shutdowns += 1

    by_uuid = {g[0]: i for i, g in gpus.items()}
    nvml.nvmlInit = init
    nvml.nvmlShutdown = shutdown
    nvml.nvmlDeviceGetCount = lambda: len(gpus)
    nvml.nvmlSystemGetDriverVersion = lambda: "550.54.15"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12040
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetHandleByUUID = lambda u: by_uuid[u]
    nvml.nvmlDeviceGetName = lambda h: gpus[h][1].encode()
    nvml.nvmlDeviceGetCudaComputeCapability = lambda h: gpus[h][2]
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=gpus[h][3], free=gpus[h][4], used=0)
    return nvml


def fake_ct2(count):
    def supported(device, index=0):
        return {"float32", "int8"} if device == "cpu" else {"float32", "int8", "float16", "int8_float16"}

    return types.SimpleNamespace(get_cuda_device_count=lambda: count, get_supported_compute_types=supported)


def proc_dir(tmp_path, total_kb=16_000_000, available_kb=12_000_000):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text(
        f"MemTotal:       {total_kb} kB\nMemFree:         1000 kB\nMemAvailable:   {available_kb} kB\n"
    )
    (tmp_path / "cgroup").mkdir()
    return tmp_path / "proc", tmp_path / "cgroup"


GPUS = {
    0: ("GPU-aaaa", "Tesla T4", (7, 5), 15360 * MiB, 15000 * MiB),
    1: ("GPU-bbbb", "NVIDIA L4", (8, 9), 23034 * MiB, 22000 * MiB),
}


def test_system_probe_reads_gpus_through_ctranslate2_and_nvml(tmp_path):
    proc, cgroup = proc_dir(tmp_path)
    nvml = fake_nvml(GPUS)
    probe = SystemProbe(
        proc_root=proc, cgroup_root=cgroup, ctranslate2_module=fake_ct2(2), nvml_module=nvml, environ={}
    )
    t4, l4, cpu = probe.probe()
    assert (t4.gpu_name, t4.compute_capability, t4.memory_total_bytes) == ("Tesla T4", (7, 5), 15360 * MiB)
    assert (l4.index, l4.gpu_name, l4.memory_free_bytes) == (1, "NVIDIA L4", 22000 * MiB)
    assert t4.driver_version == "550.54.15" and t4.cuda_version == "12.4"
    assert "float16" in t4.supported_compute_types
    assert cpu.device == "cpu" and cpu.memory_free_bytes == 12_000_000 * 1024
    assert probe.no_gpu_reason is None
    assert nvml.shutdowns == 1


def test_system_probe_maps_cuda_visible_devices_to_nvml_handles(tmp_path):
    proc, cgroup = proc_dir(tmp_path)
    probe = SystemProbe(
        proc_root=proc,
        cgroup_root=cgroup,
        ctranslate2_module=fake_ct2(1),
        nvml_module=fake_nvml(GPUS),
        environ={"CUDA_VISIBLE_DEVICES": "GPU-bbbb"},
    )
    gpu, _ = probe.probe()
    assert (gpu.index, gpu.gpu_name) == (0, "NVIDIA L4")


def test_system_probe_without_a_driver_treats_the_machine_as_cpu_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="scribe_libs.devices")
    proc, cgroup = proc_dir(tmp_path)
    nvml = fake_nvml(GPUS, init_error="Driver Not Loaded")
    probe = SystemProbe(proc_root=proc, cgroup_root=cgroup, ctranslate2_module=fake_ct2(1), nvml_module=nvml)
    facts = probe.probe()
    assert [f.device for f in facts] == ["cpu"]
    assert probe.no_gpu_reason == "CTranslate2 sees 1 CUDA device(s) but NVML failed to start: Driver Not Loaded"
    assert f"no GPU: {probe.no_gpu_reason}" in [r.getMessage() for r in caplog.records]


def test_the_no_gpu_reason_is_logged_at_info_once_then_at_debug(tmp_path, caplog):
    # the transcriber re-probes on every profile refresh (every few seconds)
    caplog.set_level(logging.DEBUG, logger="scribe_libs.devices")
    proc, cgroup = proc_dir(tmp_path)
    nvml = fake_nvml({})
    probe = SystemProbe(proc_root=proc, cgroup_root=cgroup, ctranslate2_module=fake_ct2(0), nvml_module=nvml)
    probe.probe()
    probe.probe()

    def no_gpu(level):
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("no GPU") and r.levelno == level]

    reason = "CTranslate2 reports 0 CUDA devices (NVML: driver present, 0 device(s) visible to NVML)"
    assert probe.no_gpu_reason == reason
    assert no_gpu(logging.INFO) == [f"no GPU: {reason}"]
    assert no_gpu(logging.DEBUG) == [f"no GPU: {reason}"]
    # a new reason is news again
    nvml.nvmlInit = fake_nvml({}, init_error="Driver Not Loaded").nvmlInit
    probe.probe()
    assert no_gpu(logging.INFO)[-1] == "no GPU: CTranslate2 reports 0 CUDA devices (NVML: Driver Not Loaded)"


def test_system_probe_without_nvidia_ml_py_treats_the_machine_as_cpu_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    proc, cgroup = proc_dir(tmp_path)
    probe = SystemProbe(proc_root=proc, cgroup_root=cgroup, ctranslate2_module=fake_ct2(1))
    assert [f.device for f in probe.probe()] == ["cpu"]
    assert "nvidia-ml-py (pynvml) is not installed" in probe.no_gpu_reason


def test_system_probe_honours_cgroup_cpu_and_memory_limits(tmp_path):
    proc, cgroup = proc_dir(tmp_path, total_kb=64_000_000, available_kb=60_000_000)
    (cgroup / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs -> 2 cores
    (cgroup / "memory.max").write_text(str(4 * GiB) + "\n")
    (cgroup / "memory.current").write_text(str(1 * GiB) + "\n")
    probe = SystemProbe(proc_root=proc, cgroup_root=cgroup, ctranslate2_module=fake_ct2(0), nvml_module=fake_nvml({}))
    (cpu,) = probe.probe()
    assert cpu.memory_total_bytes == 4 * GiB
    assert cpu.memory_free_bytes == 3 * GiB
    import os

    assert cpu.cpu_cores == min(2, len(os.sched_getaffinity(0)))
