"""Device selection, the profile's live fields, and the package layout of scribe_libs.devices."""

import dataclasses

import pytest

import scribe_libs.devices as devices
from scribe_libs.devices import decide, load_recorded, profile_from, select_device
from scribe_libs.devices.decision import oom_downgrade
from scribe_libs.devices.memory import estimate_model_bytes
from scribe_libs.devices.probe import DeviceFacts
from scribe_libs.devices.profile import kubernetes_labels

T4 = load_recorded("t4")
CPU = load_recorded("cpu-only")


def test_every_public_name_is_importable_from_the_package():
    for name in devices.__all__:
        assert getattr(devices, name) is not None
    assert devices.DeviceFacts is DeviceFacts and devices.oom_downgrade is oom_downgrade
    assert devices.estimate_model_bytes is estimate_model_bytes and devices.kubernetes_labels is kubernetes_labels
    assert (devices.FACTS_DIR / "t4.json").is_file()


def test_auto_takes_the_gpu_with_the_cpu_as_fall_back():
    selection = select_device([T4, CPU], "auto", 0)
    assert selection.facts is T4 and selection.cpu_facts is CPU
    assert selection.reason.startswith("device cuda:0 (Tesla T4, cc 7.5): 1 CUDA device(s)")


def test_auto_without_a_gpu_says_why():
    selection = select_device([CPU], "auto", 0, no_gpu_reason="CTranslate2 reports 0 CUDA devices")
    assert selection.facts is CPU and selection.cpu_facts is None
    assert selection.reason == f"device {CPU.label}: CTranslate2 reports 0 CUDA devices"


def test_explicit_cuda_has_no_fall_back_and_a_missing_index_is_no_device():
    assert select_device([T4, CPU], "cuda", 0).cpu_facts is None
    missing = select_device([T4, CPU], "cuda", 1)
    assert missing.facts is None and "no CUDA device 1 (1 visible)" in missing.reason


def test_explicit_cpu_ignores_the_gpu():
    selection = select_device([T4, CPU], "cpu")
    assert selection.facts is CPU and selection.cpu_facts is None


def test_unknown_device_setting_is_an_error():
    with pytest.raises(ValueError, match="auto, cuda or cpu"):
        select_device([CPU], "tpu")


def test_profile_carries_load_rtf_measured_memory_and_warnings():
    decision = decide(load_recorded("gtx-1050"), ["large-v3-turbo"], "float16")
    profile = profile_from(
        decision, load_recorded("gtx-1050"), worker_id="w", pool="p", current_load=2, real_time_factor=0.125,
        memory_models_bytes=123,
    )
    assert (profile.current_load, profile.real_time_factor, profile.memory_used_by_models_bytes) == (2, 0.125, 123)
    assert profile.decisions[: len(decision.steps)] == decision.steps
    assert "warning: compute type requested float16, effective int8" in profile.decisions


def test_cpu_fall_back_uses_its_own_measure():
    gpu_calls, cpu_calls = [], []
    small = dataclasses.replace(T4, memory_free_bytes=256 << 20)  # not even the CUDA runtime fits
    decision = decide(
        small, ["base"], measure=lambda m, ct: gpu_calls.append((m, ct)),
        cpu_facts=CPU, cpu_measure=lambda m, ct: cpu_calls.append((m, ct)),
    )
    assert decision.device == "cpu" and decision.ready
    assert gpu_calls and {ct for _, ct in gpu_calls} <= {"float16", "int8_float16", "int8"}
    assert cpu_calls == [("base", "int8")]
