"""Fuzzing CreateJob (issue 5): garbage, truncated files, wrong headers, absurd configs.

Every reply must be a created job or a clear status: a code other than INTERNAL/UNKNOWN with a
``google.rpc.ErrorInfo`` (domain ``scribe.dev``) naming the reason. Every job that was created
must end COMPLETED or FAILED with a reason (never stuck), and the services must still be
healthy and transcribe a normal job afterwards.
"""

from __future__ import annotations

import collections
import string
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scribe_harness import FIXTURES

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
from scribe_libs.errors import DOMAIN, error_info

S = jobs_pb2.JobState
CHUNK = 64 * 1024
TERMINAL = (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED, S.JOB_STATE_CANCELLED)
WAVS = sorted(FIXTURES.glob("*.wav"))
#: Examples per kind of input; together they run in about a minute on 2 cores (the created jobs
#: are real transcriptions of at most a few seconds of audio each).
EXAMPLES = {"garbage": 30, "truncated": 25, "headers": 30, "configs": 80}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(stack_factory):
    stack = stack_factory()
    for service in ("results", "ingest", "postprocess"):
        stack.start(service)
    stack.start("transcriber", batch_size=1)
    return stack


# --- Inputs -----------------------------------------------------------------------------------

junk_text = st.text(max_size=64)  # any unicode (no surrogates: proto strings are UTF-8)
short_wav = (FIXTURES / "terms_en.wav").read_bytes()


@st.composite
def truncated(draw) -> tuple[jobs_pb2.JobSpec, bytes]:
    path: Path = draw(st.sampled_from(WAVS))
    data = path.read_bytes()
    cut = draw(st.integers(0, len(data)))
    return jobs_pb2.JobSpec(filename=path.name), data[:cut]


@st.composite
def wrong_header(draw) -> tuple[jobs_pb2.JobSpec, bytes]:
    wav = (FIXTURES / "numbers_en.wav").read_bytes()
    garbage = draw(st.binary(min_size=0, max_size=8192))
    kind = draw(st.sampled_from(["wav-header+garbage", "mp3-name", "magic+garbage", "garbage+wav", "flipped"]))
    if kind == "wav-header+garbage":
        return jobs_pb2.JobSpec(filename="x.wav"), wav[:44] + garbage
    if kind == "mp3-name":  # wav bytes under a misleading name (possibly cut)
        name = draw(st.sampled_from(["call.mp3", "a.flac", "b.m4a", "c.ogg", "noext", "\u202e3pm.wav"]))
        return jobs_pb2.JobSpec(filename=name), wav[: draw(st.integers(45, len(wav)))]
    if kind == "magic+garbage":
        magic = draw(st.sampled_from([b"ID3\x04\x00\x00", b"\xff\xfb\x90\x00", b"fLaC", b"OggS\x00\x02",
                                      b"\x00\x00\x00\x20ftypM4A ", b"RIFF\xff\xff\xff\x7fWAVEfmt "]))
        return jobs_pb2.JobSpec(filename="y.bin"), magic + garbage
    if kind == "garbage+wav":
        return jobs_pb2.JobSpec(), garbage + wav
    # A real header whose fields are corrupted at random positions.
    data = bytearray(wav[:4096])
    for position in draw(st.lists(st.integers(0, 43), min_size=1, max_size=6)):
        data[position] = draw(st.integers(0, 255))
    return jobs_pb2.JobSpec(), bytes(data)


@st.composite
def absurd_config(draw) -> tuple[jobs_pb2.JobSpec, bytes]:
    def sometimes(absurd, usual):  # absurd one time in four, so later fields get reached too
        return draw(absurd) if draw(st.integers(0, 3)) == 0 else draw(usual)

    config = transcript_pb2.RecognitionConfig(
        language=sometimes(st.one_of(junk_text, st.sampled_from(["xx", "klingon", "zh-Hant"])),
                           st.sampled_from(["", "auto", "EN", " en "])),
        model=sometimes(st.one_of(junk_text, st.sampled_from(["huge-v99", "../../etc/passwd", "org/model", "a/b/c"])),
                        st.sampled_from(["", "tiny.en"])),
        beam_size=sometimes(st.sampled_from([17, 2**31 - 1, 2**32 - 1]), st.integers(0, 16)),
        initial_prompt=sometimes(st.integers(0, 5000).map(lambda n: "ä" * n), junk_text),
        word_timestamps=draw(st.booleans()),
    )
    hotwords = sometimes(st.integers(0, 10_000).map(lambda n: [f"term{i}" for i in range(n)]),
                         st.lists(junk_text, max_size=8))
    config.hotwords.extend(hotwords)
    if draw(st.booleans()):
        config.vad_filter = draw(st.booleans())
    spec = jobs_pb2.JobSpec(
        config=config,
        request_id=draw(st.one_of(st.just(""), junk_text, st.integers(1, 10_240).map(lambda n: "r" * n))),
        filename=draw(junk_text),
        retain_audio=draw(st.booleans()),
        redact=draw(st.booleans()),
        source_uri=sometimes(st.one_of(junk_text, st.sampled_from(["s3://", "s3://scribe-audio/x", "s3://nope/key",
                                                                   "http://x/y", "s3://a/../../b", "s3:///key"])),
                             st.just("")),
        glossary_ids=sometimes(st.lists(st.one_of(junk_text, st.sampled_from(["g1", "g1@3", "@", "a.b.c", "*", ">"])),
                                        min_size=1, max_size=3), st.just([])),
    )
    n_labels = draw(st.sampled_from([0, 3, 64, 65, 1000]))
    suffix = draw(st.text(alphabet=string.printable + "한국어😀\x00", max_size=8))
    for i in range(n_labels):
        spec.labels[f"k{i}{suffix}"] = suffix * 3
    audio = short_wav if draw(st.integers(0, 4)) else draw(st.binary(max_size=2048))
    return spec, audio


CASES = {
    "garbage": st.tuples(st.builds(jobs_pb2.JobSpec), st.binary(min_size=0, max_size=16384)),
    "truncated": truncated(),
    "headers": wrong_header(),
    "configs": absurd_config(),
}


# --- The test ---------------------------------------------------------------------------------


def create(ingest, spec: jobs_pb2.JobSpec, audio: bytes):
    """CreateJob; returns ("created", CreateJobResponse) or (reason, status code)."""

    def gen():
        yield ingest_pb2.CreateJobRequest(spec=spec)
        for i in range(0, len(audio), CHUNK):
            yield ingest_pb2.CreateJobRequest(audio=audio[i : i + CHUNK])

    try:
        reply = ingest.CreateJob(gen(), timeout=60)
    except grpc.RpcError as exc:
        code = exc.code()
        info = error_info(exc)
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, exc.details(), spec, audio[:64])
        assert info is not None and info.reason and info.domain == DOMAIN, (code, exc.details())
        assert exc.details(), "a status without a message"
        return info.reason, code
    return "created", reply


def test_create_job_answers_every_input_clearly(stack):
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results"))
    outcomes: dict[str, collections.Counter] = {kind: collections.Counter() for kind in CASES}
    created: dict[str, str] = {}  # job id -> kind of input
    started = time.monotonic()

    def fuzzer(kind: str):
        @settings(max_examples=EXAMPLES[kind], deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(case=CASES[kind])
        def run(case):
            spec, audio = case
            outcome, detail = create(ingest, spec, audio)
            if outcome == "created":
                created.setdefault(detail.job.job_id, kind)
                outcome = "created (existing, same request_id)" if detail.existing else "created"
            else:
                outcome = f"{grpc.StatusCode(detail).name}/{outcome}"
            outcomes[kind][outcome] += 1

        return run

    for kind in CASES:
        fuzzer(kind)()

    # Every created job finishes: COMPLETED, or FAILED with a reason. None stays stuck.
    deadline = time.monotonic() + 240
    final: dict[str, jobs_pb2.Job] = {}
    while len(final) < len(created):
        for job_id in set(created) - set(final):
            job = results.GetJob(results_pb2.GetJobRequest(job_id=job_id), timeout=10).job
            if job.state in TERMINAL:
                final[job_id] = job
        assert time.monotonic() < deadline, f"{len(created) - len(final)} created jobs never finished"
        time.sleep(0.5)
    endings = collections.Counter()
    for job_id, job in final.items():
        assert job.state in (S.JOB_STATE_COMPLETED, S.JOB_STATE_FAILED), job
        if job.state == S.JOB_STATE_FAILED:
            assert job.error_reason and job.error_message, job
        endings[f"{created[job_id]}: {S.Name(job.state).removeprefix('JOB_STATE_')}"
                + (f"/{job.error_reason}" if job.error_reason else "")] += 1

    # Still healthy, and a normal job still completes.
    for name in ("results", "ingest", "postprocess", "transcriber"):
        with grpc.insecure_channel(stack.addresses[name]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
    outcome, reply = create(ingest, jobs_pb2.JobSpec(filename="n.wav"), (FIXTURES / "numbers_en.wav").read_bytes())
    assert outcome == "created"
    last = list(results.WatchJob(results_pb2.WatchJobRequest(job_id=reply.job.job_id), timeout=120))[-1].job
    assert last.state == S.JOB_STATE_COMPLETED

    total = sum(sum(c.values()) for c in outcomes.values())
    print(f"\nfuzzed CreateJob: {total} examples in {time.monotonic() - started:.0f} s")
    for kind, counter in outcomes.items():
        print(f"  {kind}: " + ", ".join(f"{k}={v}" for k, v in counter.most_common()))
    print("  created jobs ended: " + ", ".join(f"{k}={v}" for k, v in sorted(endings.items())))
