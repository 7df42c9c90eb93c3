"""Object keys of a job (DESIGN.md, "Storage and messaging names"): one builder each."""

from __future__ import annotations

from scribe_libs.formats import FORMAT_NAMES
from scribe_libs.jobs import audio_key, raw_transcript_key, transcript_key

JOB = "0123456789abcdef0123456789abcdef"


def test_keys_of_a_job():
    assert audio_key(JOB) == f"{JOB}/original"
    assert raw_transcript_key(JOB) == f"{JOB}/raw.json"  # what the transcriber writes
    assert [raw_transcript_key(JOB, ext) for ext in FORMAT_NAMES] == [
        f"{JOB}/raw.json", f"{JOB}/raw.txt", f"{JOB}/raw.srt", f"{JOB}/raw.vtt"
    ]
    assert [transcript_key(JOB, ext) for ext in FORMAT_NAMES] == [
        f"{JOB}/transcript.json", f"{JOB}/transcript.txt", f"{JOB}/transcript.srt", f"{JOB}/transcript.vtt"
    ]
