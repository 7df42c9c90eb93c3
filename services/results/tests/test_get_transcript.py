"""GetTranscript: what a client downloads, and the content type it is told (the one format table).

The servicer runs over a local-directory object store holding what postprocess writes; the job
records come from a dict instead of NATS (the KV is not what is under test here).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from scribe.v1 import jobs_pb2, results_pb2, transcript_pb2
from scribe_libs.errors import FailedPrecondition, InvalidArgument
from scribe_libs.formats import FORMAT_NAMES, render
from scribe_libs.jobs import RESULTS_BUCKET, JobNotFound, raw_transcript_key, transcript_key
from scribe_libs.objectstore import LocalStore
from scribe_results.config import Settings
from scribe_results.servicer import ResultsServicer

S = jobs_pb2.JobState
F = transcript_pb2
JOB = "0123456789abcdef0123456789abcdef"
CONTENT_TYPES = {
    F.TRANSCRIPT_FORMAT_JSON: "application/json; charset=utf-8",
    F.TRANSCRIPT_FORMAT_TXT: "text/plain; charset=utf-8",
    F.TRANSCRIPT_FORMAT_SRT: "application/x-subrip; charset=utf-8",
    F.TRANSCRIPT_FORMAT_VTT: "text/vtt; charset=utf-8",
}


class DictJobs:
    """The part of JobStore GetTranscript reads."""

    def __init__(self, *jobs: jobs_pb2.Job):
        self.jobs = {j.job_id: j for j in jobs}

    async def get(self, job_id: str) -> jobs_pb2.Job:
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]


def transcript(text: str) -> transcript_pb2.Transcript:
    return transcript_pb2.Transcript(
        job_id=JOB, duration=2.0, segments=[transcript_pb2.Segment(id=0, start=0.0, end=1.5, text=text)]
    )


@pytest.fixture
async def servicer(tmp_path):
    store = LocalStore(tmp_path)
    await store.ensure_bucket(RESULTS_BUCKET)
    final, raw = transcript("Ünïcode final text"), transcript("unicode raw text")
    for name, fmt in FORMAT_NAMES.items():  # as postprocess writes them
        await store.put_bytes(RESULTS_BUCKET, transcript_key(JOB, name), *render(final, fmt))
        await store.put_bytes(RESULTS_BUCKET, raw_transcript_key(JOB, name), *render(raw, fmt))
    servicer = ResultsServicer(Settings(), SimpleNamespace(jobs=None, workers=None), store)
    servicer.jobs = DictJobs(
        jobs_pb2.Job(job_id=JOB, state=S.JOB_STATE_COMPLETED),
        jobs_pb2.Job(job_id="running", state=S.JOB_STATE_RUNNING),
    )
    return servicer


async def get(servicer, **request) -> results_pb2.GetTranscriptResponse:
    return await servicer.GetTranscript(results_pb2.GetTranscriptRequest(**request), None)


@pytest.mark.parametrize("raw", [False, True])
@pytest.mark.parametrize("fmt", list(CONTENT_TYPES))
async def test_each_format_is_served_with_its_utf8_content_type(servicer, fmt, raw):
    response = await get(servicer, job_id=JOB, format=fmt, raw=raw)
    assert response.format == fmt
    assert response.content_type == CONTENT_TYPES[fmt]
    text = response.content.decode("utf-8")
    assert ("unicode raw text" if raw else "Ünïcode final text") in text


async def test_unspecified_format_is_json(servicer):
    response = await get(servicer, job_id=JOB)
    assert response.format == F.TRANSCRIPT_FORMAT_JSON
    assert response.content_type == "application/json; charset=utf-8"
    assert b'"job_id": "0123456789abcdef0123456789abcdef"' in response.content


@pytest.mark.parametrize("fmt", [F.TRANSCRIPT_FORMAT_UNSPECIFIED, F.TRANSCRIPT_FORMAT_JSON])
@pytest.mark.parametrize("raw", [False, True])
async def test_json_comes_with_the_typed_transcript(servicer, fmt, raw):
    response = await get(servicer, job_id=JOB, format=fmt, raw=raw)
    typed = response.transcript
    assert typed.job_id == JOB and len(typed.segments) == 1
    assert typed.segments[0].text == ("unicode raw text" if raw else "Ünïcode final text")
    assert typed.segments[0].end == 1.5


async def test_other_formats_carry_only_their_rendering(servicer):
    response = await get(servicer, job_id=JOB, format=F.TRANSCRIPT_FORMAT_SRT)
    assert not response.HasField("transcript") and b"-->" in response.content


async def test_unknown_format_is_invalid_argument_even_before_completion(servicer):
    for job_id in (JOB, "running"):
        with pytest.raises(InvalidArgument) as err:
            await get(servicer, job_id=job_id, format=99)
        assert (err.value.reason, err.value.field) == ("UNKNOWN_FORMAT", "format")


async def test_a_job_not_completed_has_no_transcript_yet(servicer):
    with pytest.raises(FailedPrecondition) as err:
        await get(servicer, job_id="running", format=F.TRANSCRIPT_FORMAT_TXT)
    assert err.value.reason == "JOB_NOT_COMPLETED"
