"""Conventions integrators expect (issue 12): BCP-47 language tags accepted and echoed, an empty
job id is INVALID_ARGUMENT, every job says when it expires.

Real nats-server, ingest and results on port 0, no transcriber (jobs stay queued).
"""

from __future__ import annotations

import grpc
import pytest

from scribe.v1 import results_pb2
from scribe_harness import FIXTURES
from scribe_harness import submit as harness_submit
from scribe_libs.bus import DEFAULT_RETENTION_SECONDS
from scribe_libs.errors import error_info


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest"):
        stack.start(service)
    return stack


def test_a_bcp47_tag_is_accepted_echoed_and_the_job_says_when_it_expires(ingest, results):
    job = harness_submit(ingest, FIXTURES / "speech_en.wav", model="tiny.en", language="en-us")
    assert job.spec.config.language == "en-US"  # the caller's tag, canonical form
    stored = results.GetJob(results_pb2.GetJobRequest(job_id=job.job_id), timeout=10).job
    assert stored.spec.config.language == "en-US"
    lifetime = stored.expire_time.ToNanoseconds() - stored.create_time.ToNanoseconds()
    assert lifetime == int(DEFAULT_RETENTION_SECONDS * 1e9)
    results.CancelJob(results_pb2.CancelJobRequest(job_id=job.job_id), timeout=10)


def test_a_tag_whose_language_an_english_model_cannot_decode_is_refused(ingest):
    with pytest.raises(grpc.RpcError) as caught:
        harness_submit(ingest, FIXTURES / "speech_en.wav", model="tiny.en", language="ko-KR")
    assert error_info(caught.value).reason == "MODEL_LANGUAGE_MISMATCH"


@pytest.mark.parametrize(
    "call",
    [
        lambda r: r.GetJob(results_pb2.GetJobRequest(job_id=""), timeout=10),
        lambda r: r.CancelJob(results_pb2.CancelJobRequest(job_id=""), timeout=10),
        lambda r: r.GetTranscript(results_pb2.GetTranscriptRequest(job_id=""), timeout=10),
        lambda r: r.DeleteJob(results_pb2.DeleteJobRequest(job_id=""), timeout=10),
        lambda r: next(iter(r.WatchJob(results_pb2.WatchJobRequest(job_id=""), timeout=10))),
    ],
    ids=["GetJob", "CancelJob", "GetTranscript", "DeleteJob", "WatchJob"],
)
def test_an_empty_job_id_is_invalid_argument_naming_the_field(results, call):
    with pytest.raises(grpc.RpcError) as caught:
        call(results)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "JOB_ID_REQUIRED"
