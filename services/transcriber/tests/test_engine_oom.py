"""Out of memory during a job: step down (precision, then model), retry, at most twice, then FAILED."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from scribe.v1 import transcript_pb2
from scribe_libs.devices import decide, load_recorded
from scribe_libs.errors import FailedPrecondition
from scribe_transcriber.engine import Engine, ModelLoader, OutOfMemory, is_out_of_memory

FIXTURES = Path(__file__).resolve().parents[3] / "tests" / "fixtures"
SPEECH = FIXTURES / "speech_en.wav"
RESIDENT = ["large-v3", "large-v3-turbo"]


def engine_on(fake, facts_name="t4", models=RESIDENT):
    loader = ModelLoader("cuda", 0, 2, fake.resolve, fake.factory, gauge=fake.gauge())
    decision = decide(load_recorded(facts_name), models, measure=loader.measure)
    assert decision.ready
    return Engine(loader, decision, models)


def run(engine, model="large-v3"):
    return engine.transcribe(
        SPEECH, transcript_pb2.RecognitionConfig(model=model), batch_size=4,
        on_progress=lambda done, total: None, cancelled=threading.Event(),
    )


def test_cuda_out_of_memory_is_recognised():
    assert is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("unsupported compute type"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_one_oom_steps_down_precision_and_the_job_completes(fake_device, caplog):
    engine = engine_on(fake_device)
    assert engine.compute_type == "float16"
    fake_device.oom_on_decode = {"float16"}
    caplog.set_level(logging.WARNING, logger="scribe_transcriber.engine")
    transcript, cancelled = run(engine)
    assert not cancelled
    assert transcript.compute_type == "int8_float16" and transcript.model == "large-v3"
    assert transcript.segments[0].text == "decoded by large-v3 at int8_float16"
    assert fake_device.decodes == [("large-v3", "float16"), ("large-v3", "int8_float16")]
    # the worker now runs (and advertises) the lower precision, and holds only those models
    assert engine.decision.compute_type_effective == "int8_float16" and engine.oom_downgrades == 1
    assert {key[1] for key in engine.loader.loaded} == {"int8_float16"}
    assert any("out of memory during a job (downgrade 1 of 2)" in step for step in engine.decision.steps)
    assert any("out of memory during a job" in r.getMessage() for r in caplog.records)


def test_two_ooms_step_down_twice_then_the_third_fails_the_job(fake_device):
    engine = engine_on(fake_device)
    fake_device.oom_on_decode = {"*"}
    with pytest.raises(OutOfMemory) as raised:
        run(engine)
    error = raised.value
    assert isinstance(error, FailedPrecondition) and error.reason == "OUT_OF_MEMORY"
    assert "after 2 downgrade(s)" in error.message
    # three decodes: the original and one per downgrade, never more
    assert len(fake_device.decodes) == 3
    assert engine.oom_downgrades == 2


def test_a_model_step_down_runs_the_job_on_the_replacement(fake_device):
    # A GTX 1050 has one precision for these models (int8): the next step is a smaller model.
    engine = engine_on(fake_device, "gtx-1050", ["large-v3-turbo"])
    assert engine.compute_type == "int8"
    fake_device.oom_on_decode = {("large-v3-turbo", "int8")}
    transcript, _ = run(engine, "large-v3-turbo")
    assert transcript.model != "large-v3-turbo"
    assert transcript.model in engine.models and engine.decision.resident_models == [transcript.model]
    assert transcript.segments[0].text == f"decoded by {transcript.model} at int8"


def test_other_errors_are_not_retried(fake_device):
    engine = engine_on(fake_device)

    def broken(audio, **options):
        raise RuntimeError("some other CTranslate2 failure")

    engine.models["large-v3"].pipeline.transcribe = broken
    with pytest.raises(RuntimeError, match="some other"):
        run(engine)
    assert engine.oom_downgrades == 0


def test_a_model_this_worker_does_not_serve_fails_the_job_at_once(fake_device):
    engine = engine_on(fake_device)
    with pytest.raises(FailedPrecondition) as raised:
        run(engine, "small")
    assert raised.value.reason == "MODEL_NOT_LOADED"
