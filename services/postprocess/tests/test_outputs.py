"""What post-processing stores for a job: every format, final and raw, under the keys and content
types GetTranscript serves (scribe_libs.jobs keys, scribe_libs.formats table).

The object store records each put; the job records are a dict instead of NATS.
"""

from __future__ import annotations

from types import SimpleNamespace

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs.formats import transcript_to_json
from scribe_postprocess.config import Settings
from scribe_postprocess.servicer import Postprocessor

S = jobs_pb2.JobState
JOB = "0123456789abcdef0123456789abcdef"
UTF8 = "; charset=utf-8"


class RecordingStore:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = dict(objects)
        self.puts: dict[str, str] = {}

    async def get_bytes(self, bucket: str, key: str) -> bytes:
        return self.objects[key]

    async def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str = "") -> None:
        self.objects[key] = data
        self.puts[key] = content_type


class DictJobs:
    def __init__(self, job: jobs_pb2.Job):
        self.job = job

    async def get(self, job_id: str) -> jobs_pb2.Job:
        return self.job

    async def transition(self, job_id, state, edit=None) -> jobs_pb2.Job:
        self.job.state = state
        if edit is not None:
            edit(self.job)
        return self.job


class Message:
    def __init__(self, task: jobs_pb2.PostprocessTask):
        self.data = task.SerializeToString()
        self.headers = None
        self.metadata = SimpleNamespace(num_delivered=1)
        self.acked = False

    async def ack(self) -> None:
        self.acked = True


async def test_every_format_is_stored_final_and_raw_with_a_utf8_content_type():
    raw = transcript_pb2.Transcript(
        job_id=JOB, duration=2.0, segments=[transcript_pb2.Segment(id=0, start=0.0, end=1.5, text=" hello world")]
    )
    store = RecordingStore({f"{JOB}/raw.json": transcript_to_json(raw)})
    processor = Postprocessor(Settings(), SimpleNamespace(jobs=None, glossaries=None), store, rules=[])
    processor.jobs = DictJobs(jobs_pb2.Job(job_id=JOB, state=S.JOB_STATE_POSTPROCESSING))
    msg = Message(jobs_pb2.PostprocessTask(job_id=JOB, raw_key=f"{JOB}/raw.json"))

    await processor.handle(msg)

    assert msg.acked and processor.jobs.job.state == S.JOB_STATE_COMPLETED
    assert store.puts == {
        f"{JOB}/transcript.json": "application/json" + UTF8,
        f"{JOB}/transcript.txt": "text/plain" + UTF8,
        f"{JOB}/raw.txt": "text/plain" + UTF8,
        f"{JOB}/transcript.srt": "application/x-subrip" + UTF8,
        f"{JOB}/raw.srt": "application/x-subrip" + UTF8,
        f"{JOB}/transcript.vtt": "text/vtt" + UTF8,
        f"{JOB}/raw.vtt": "text/vtt" + UTF8,
    }
    assert list(processor.jobs.job.result_keys) == [f"{JOB}/transcript.{ext}" for ext in ("json", "txt", "srt", "vtt")]
    assert store.objects[f"{JOB}/raw.txt"] == b"hello world\n"


async def test_an_unredacted_raw_transcript_of_a_redacted_job_is_rewritten_as_json():
    raw = transcript_pb2.Transcript(
        job_id=JOB, segments=[transcript_pb2.Segment(id=0, start=0.0, end=1.5, text="call 010-1234-5678")]
    )
    store = RecordingStore({f"{JOB}/raw.json": transcript_to_json(raw)})
    processor = Postprocessor(Settings(), SimpleNamespace(jobs=None, glossaries=None), store, rules=[])
    processor.jobs = DictJobs(
        jobs_pb2.Job(job_id=JOB, state=S.JOB_STATE_POSTPROCESSING, spec=jobs_pb2.JobSpec(redact=True))
    )

    await processor.handle(Message(jobs_pb2.PostprocessTask(job_id=JOB, raw_key=f"{JOB}/raw.json")))

    assert store.puts[f"{JOB}/raw.json"] == "application/json" + UTF8
    assert b'"text": "call [PHONE]"' in store.objects[f"{JOB}/raw.json"]
