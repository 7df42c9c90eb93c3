"""The ``scribe.v1`` message modules the client uses (scribe-libs' when installed, else bundled).

    from scribe_client.types import jobs_pb2, transcript_pb2, streaming_pb2
    config = transcript_pb2.RecognitionConfig(language="ko", model="base")

See :mod:`scribe_client._stubs` for which copy is used and why.
"""

from __future__ import annotations

from scribe_client._stubs import (
    SOURCE,
    ingest_pb2,
    jobs_pb2,
    results_pb2,
    streaming_pb2,
    transcriber_pb2,
    transcript_pb2,
)

#: Shorthands for the messages most code needs.
Job = jobs_pb2.Job
JobSpec = jobs_pb2.JobSpec
JobState = jobs_pb2.JobState
RecognitionConfig = transcript_pb2.RecognitionConfig
TranscriptMessage = transcript_pb2.Transcript
StreamingConfig = streaming_pb2.StreamingConfig
StreamingRecognizeRequest = streaming_pb2.StreamingRecognizeRequest
StreamingRecognizeResponse = streaming_pb2.StreamingRecognizeResponse
WorkerProfile = transcriber_pb2.WorkerProfile

__all__ = [
    "SOURCE",
    "Job",
    "JobSpec",
    "JobState",
    "RecognitionConfig",
    "StreamingConfig",
    "StreamingRecognizeRequest",
    "StreamingRecognizeResponse",
    "TranscriptMessage",
    "WorkerProfile",
    "ingest_pb2",
    "jobs_pb2",
    "results_pb2",
    "streaming_pb2",
    "transcriber_pb2",
    "transcript_pb2",
]
