"""Hallucination guards end to end: non-speech fixtures through the real pipeline with VAD off.

Real nats-server, the four services on port 0, the local object store, tiny.en and (Korean)
base. tests/fixtures/{silence,noise,hold_music}_10s.wav hold no speech (tools/make_fixtures.sh);
with ``vad_filter=False`` Whisper decodes them whole and may write stock phrases into them.
Whatever it writes, no known phrase may survive in the final transcript unflagged, and every
segment that went must be recorded as a ``hallucination:<id>`` correction.

What the platform decoded here (faster-whisper 1.2.1, int8 on CPU, VAD off; ``pytest -s`` prints
it for each job):

- tiny.en: silence_10s "Thank you." 8.6-10.0 s (no_speech_prob 0.94, avg_logprob -1.13),
  noise_10s ". ." 0.0-2.5 s (0.93, -1.75), hold_music_10s "Thank you" 0.0-6.0 s (0.93, -1.69):
  all three dropped (``hallucination:thank-you``, ``hallucination:no-text``).
- base, language=ko: "네." on silence, "고마워요" on noise, "1 2 3" on hold music, each with
  no_speech_prob 0.75-0.87 and avg_logprob about -2: none is a listed phrase (a bare "네" or
  "고마워요" is everyday speech in a call), so all are kept, carrying the score flags
  LOW_AVG_LOGPROB, HIGH_NO_SPEECH and LOW_WORD_PROBABILITY.

(faster-whisper alone on the same files, one 30 s window: tiny.en " You" on silence, nothing on
noise, " ." on the music; base nothing on any.)
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from scribe.v1 import jobs_pb2, results_pb2, transcript_pb2
from scribe_harness import FIXTURES
from scribe_harness import submit as harness_submit
from scribe_libs.errors import error_info
from scribe_libs.textproc.hallucination import HallucinationGuard

S = jobs_pb2.JobState
F = transcript_pb2
GUARD = HallucinationGuard()
FIXTURE_NAMES = ("silence_10s.wav", "noise_10s.wav", "hold_music_10s.wav")


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    stack.start("results")
    stack.start("ingest", pools={"cpu": ["tiny.en", "base"]}, post_correction_allowed=["off", "flagged"])
    stack.start("postprocess")
    stack.start("transcriber", models=["tiny.en", "base"])
    return stack


def transcript(results, job_id: str, raw: bool = False) -> transcript_pb2.Transcript:
    request = results_pb2.GetTranscriptRequest(job_id=job_id, format=F.TRANSCRIPT_FORMAT_JSON, raw=raw)
    return json_format.Parse(results.GetTranscript(request, timeout=30).content, transcript_pb2.Transcript())


def decode(ingest, results, name: str, **config) -> tuple[transcript_pb2.Transcript, transcript_pb2.Transcript]:
    job = harness_submit(ingest, FIXTURES / name, vad_filter=False, word_timestamps=True, **config)
    updates = [u.job for u in results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), timeout=300)]
    assert updates[-1].state == S.JOB_STATE_COMPLETED, updates[-1]
    return transcript(results, job.job_id, raw=True), transcript(results, job.job_id)


def check_guarded(raw: transcript_pb2.Transcript, final: transcript_pb2.Transcript) -> None:
    """No known phrase unflagged in ``final``; every raw segment missing from it recorded as a drop."""
    for segment in final.segments:
        if GUARD.match(segment.raw_text or segment.text) is not None:
            assert "POSSIBLE_HALLUCINATION" in segment.flags, segment
    kept = {s.id for s in final.segments}
    drops = {c.segment_id: c for c in final.corrections if c.rule_id.startswith("hallucination:")}
    for segment in raw.segments:
        if segment.id in kept:
            continue
        record = drops[segment.id]
        assert (record.original, record.replacement, record.kind) == (segment.text, "", F.CORRECTION_KIND_RULE)
        assert record.detail["reason"]
    assert set(drops) == {s.id for s in raw.segments} - kept
    if drops:
        assert any(n.startswith("hallucination guard: dropped") for n in final.notes), final.notes


def show(label: str, raw: transcript_pb2.Transcript, final: transcript_pb2.Transcript) -> None:
    decoded = [(round(s.start, 1), round(s.end, 1), s.text, round(s.no_speech_prob, 2), round(s.avg_logprob, 2))
               for s in raw.segments]
    kept = [(s.text, list(s.flags)) for s in final.segments]
    print(f"\n{label}: decoded {decoded} -> kept {kept}, dropped "
          f"{[c.rule_id for c in final.corrections if c.rule_id.startswith('hallucination:')]}")


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_tiny_en_on_non_speech_leaves_no_unflagged_stock_phrase(ingest, results, name):
    raw, final = decode(ingest, results, name, model="tiny.en", post_correction=F.POST_CORRECTION_OFF)
    show(f"tiny.en {name}", raw, final)
    check_guarded(raw, final)
    # Nothing here is speech: whatever tiny.en wrote is either gone or flagged.
    for segment in final.segments:
        assert segment.flags, segment


@pytest.mark.slow
@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_base_korean_on_non_speech_leaves_no_unflagged_stock_phrase(ingest, results, name):
    raw, final = decode(ingest, results, name, model="base", language="ko")
    show(f"base/ko {name}", raw, final)
    check_guarded(raw, final)


def test_a_post_correction_mode_the_deployment_does_not_allow_is_refused_at_create_job(ingest, results):
    before = len(results.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs)
    with pytest.raises(grpc.RpcError) as caught:
        harness_submit(ingest, FIXTURES / "silence_10s.wav", model="tiny.en", post_correction=F.POST_CORRECTION_ALL)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert info is not None and info.reason == "POST_CORRECTION_NOT_ALLOWED"
    assert dict(info.metadata) == {"post_correction": "all", "allowed": "off,flagged"}
    assert len(results.ListJobs(results_pb2.ListJobsRequest(page_size=1000)).jobs) == before


def test_postprocess_skips_a_mode_it_does_not_allow_and_the_job_completes(ingest, results):
    # Ingest allows "flagged" here, postprocess (defaults: only "off", no LLM) does not: defence in depth.
    raw, final = decode(ingest, results, "silence_10s.wav", model="tiny.en", post_correction=F.POST_CORRECTION_FLAGGED)
    assert any("'flagged' is not allowed" in n for n in final.notes), final.notes
    assert not [c for c in final.corrections if c.kind == F.CORRECTION_KIND_LLM]
