"""Fuzzing CreateJob (issue 5): garbage, truncated files, wrong headers, absurd configs; and every
request message with sizes up to and past each limit of :mod:`scribe_libs.limits`.

Every reply must be a created job or a clear status: a code other than INTERNAL/UNKNOWN with a
``google.rpc.ErrorInfo`` (domain ``scribe.dev``) naming the reason. Every job that was created
must end COMPLETED or FAILED with a reason (never stuck), and the services must still be
healthy and transcribe a normal job afterwards. A refused call writes nothing (no job record, no
object, no glossary).
"""

from __future__ import annotations

import collections
import random
import string
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scribe.v1 import (
    glossary_pb2,
    glossary_pb2_grpc,
    ingest_pb2,
    ingest_pb2_grpc,
    jobs_pb2,
    results_pb2,
    results_pb2_grpc,
    streaming_pb2,
    streaming_pb2_grpc,
    transcript_pb2,
)
from scribe_harness import FIXTURES
from scribe_libs import glossaries as glossary_limits
from scribe_libs import limits
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
    stack.start("stream_gateway", max_lead_seconds=-1)
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


# --- Every request message, sizes up to and past each limit ------------------------------------

#: Cases per RPC (10,200 in all; about 75 s on 2 cores: refused calls are cheap).
RPC_CASES = {
    "Ingest.CreateJob": 2700, "StreamGateway.StreamingRecognize": 1700,
    "Glossaries.PutGlossary": 1500, "Glossaries.GetGlossary": 500, "Glossaries.DeleteGlossary": 500,
    "Glossaries.ListGlossaries": 500,
    "Results.GetJob": 600, "Results.ListJobs": 600, "Results.WatchJob": 400, "Results.CancelJob": 400,
    "Results.DeleteJob": 400, "Results.GetTranscript": 400,
}
#: Pieces of text of 1, 2, 3 and 4 UTF-8 bytes, and ones NATS subjects and paths treat specially.
_PIECES = ["a", "Z", "0", "-", "_", ".", "*", ">", "/", " ", "\x00", "é", "한", "😀", "\u202e", "\n", "%", "@"]


class Gen:
    """Seeded inputs: sizes near each limit (0, 1, limit-1, limit, limit+1, 2x, random)."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def size(self, limit: int) -> int:
        r = self.rng
        return r.choice([0, 1, max(limit - 1, 0), limit, limit, limit + 1, limit + 1, 2 * limit,
                         r.randint(0, 2 * limit)])

    def text(self, n_bytes: int) -> str:
        """A string of about ``n_bytes`` UTF-8 bytes (exactly that many when plain)."""
        r = self.rng
        kind = r.randrange(4)
        if kind == 0:
            return "a" * n_bytes
        if kind == 1:  # 3-byte characters, then ASCII to the exact size
            return "한" * (n_bytes // 3) + "a" * (n_bytes % 3)
        if kind == 2 and n_bytes <= 256:
            out, size = [], 0
            while size < n_bytes:
                piece = r.choice(_PIECES)
                out.append(piece)
                size += len(piece.encode())
            return "".join(out)
        return ("x" * max(n_bytes - 1, 0)) + r.choice(["", "😀", "\x00"])

    def field(self, limit: int) -> str:
        return self.text(self.size(limit))

    def strings(self, count_limit: int, size_limit: int) -> list[str]:
        r = self.rng
        count = r.choice([0, 1, count_limit, count_limit + 1, r.randint(0, count_limit)])
        if count > 3:  # many values: mostly small, one at its size
            values = [f"v{i}" for i in range(count)]
            values[r.randrange(count)] = self.field(size_limit)
            return values
        return [self.field(size_limit) for _ in range(count)]

    def labels(self) -> dict[str, str]:
        r = self.rng
        count = r.choice([0, 1, 3, limits.MAX_LABELS, limits.MAX_LABELS + 1])
        out = {f"k{i}": "v" for i in range(count)}
        if count:
            out[self.field(limits.MAX_LABEL_KEY_BYTES) or "k"] = self.field(limits.MAX_LABEL_VALUE_BYTES)
        return out

    def sometimes(self, make, usual):  # noqa: ANN001, ANN201 - the generated value or the usual one
        return make() if self.rng.random() < 0.35 else usual

    def recognition(self) -> transcript_pb2.RecognitionConfig:
        r = self.rng
        config = transcript_pb2.RecognitionConfig(
            language=self.sometimes(lambda: self.field(limits.MAX_LANGUAGE_BYTES), r.choice(["", "en", "auto"])),
            model=self.sometimes(lambda: self.field(limits.MAX_MODEL_BYTES), r.choice(["", "tiny.en"])),
            initial_prompt=self.sometimes(lambda: self.field(limits.MAX_PROMPT_BYTES), ""),
            beam_size=self.sometimes(lambda: r.choice([0, 1, 16, 17, 2**32 - 1]), 0),
            word_timestamps=r.random() < 0.5,
        )
        config.hotwords.extend(self.sometimes(lambda: self.strings(limits.MAX_HOTWORDS, limits.MAX_HOTWORD_BYTES), []))
        return config

    def job_spec(self) -> jobs_pb2.JobSpec:
        spec = jobs_pb2.JobSpec(
            filename=self.sometimes(lambda: self.field(limits.MAX_FILENAME_BYTES), "a.wav"),
            request_id=self.sometimes(lambda: self.field(limits.MAX_REQUEST_ID_BYTES), ""),
            source_uri=self.sometimes(lambda: self.rng.choice(["s3://", "s3://nope/"]) + self.field(
                limits.MAX_SOURCE_URI_BYTES), ""),
            config=self.recognition(),
        )
        spec.labels.update(self.sometimes(self.labels, {}))
        spec.glossary_ids.extend(self.sometimes(
            lambda: self.strings(limits.MAX_GLOSSARY_IDS, limits.MAX_GLOSSARY_ID_BYTES), []))
        return spec

    def streaming(self) -> streaming_pb2.StreamingConfig:
        r = self.rng
        config = streaming_pb2.StreamingConfig(
            encoding=self.sometimes(lambda: r.choice([0, 1, 2, 3, 4, 99]), streaming_pb2.AUDIO_ENCODING_LINEAR16),
            sample_rate_hertz=self.sometimes(lambda: r.choice([0, 1, 8000, 16000, 48000, 2**32 - 1]), 16000),
            audio_channel_count=self.sometimes(lambda: r.choice([0, 1, 2, limits.MAX_CHANNELS,
                                                                 limits.MAX_CHANNELS + 1, 2**32 - 1]), 1),
            language=self.sometimes(lambda: self.field(limits.MAX_LANGUAGE_BYTES), r.choice(["", "en"])),
            model=self.sometimes(lambda: self.field(limits.MAX_MODEL_BYTES), r.choice(["", "tiny.en"])),
            endpointing_ms=self.sometimes(lambda: r.choice([0, 1, 100, 10_000, 2**32 - 1]), 0),
            interim_results=r.random() < 0.5, retain_audio=r.random() < 0.3, redact=r.random() < 0.3,
        )
        config.hotwords.extend(self.sometimes(lambda: self.strings(limits.MAX_HOTWORDS, limits.MAX_HOTWORD_BYTES), []))
        config.channel_roles.extend(self.sometimes(
            lambda: self.strings(limits.MAX_CHANNEL_ROLES, limits.MAX_CHANNEL_ROLE_BYTES), []))
        config.glossary_ids.extend(self.sometimes(
            lambda: self.strings(limits.MAX_GLOSSARY_IDS, limits.MAX_GLOSSARY_ID_BYTES), []))
        config.labels.update(self.sometimes(self.labels, {}))
        if r.random() < 0.2:
            config.max_session_duration.seconds = r.choice([-1, 0, 1, 10**10])
        return config

    def glossary_id(self) -> str:
        return self.sometimes(lambda: self.field(64), f"fz{self.rng.randrange(40)}")

    def glossary(self) -> glossary_pb2.Glossary:
        r, g = self.rng, glossary_limits
        out = glossary_pb2.Glossary(id=self.glossary_id(), description=self.sometimes(lambda: self.field(4096), ""))
        n_terms = r.choice([0, 1, 5, g.MAX_TERMS, g.MAX_TERMS + 1]) if r.random() < 0.3 else r.randint(0, 5)
        for i in range(n_terms):
            term = out.terms.add(term=f"term{i}")
            if i == 0:
                term.term = self.sometimes(lambda: self.field(g.MAX_TERM_CHARS), "Kubernetes")
                term.aliases.extend(self.sometimes(lambda: self.strings(g.MAX_ALIASES_PER_TERM, g.MAX_TERM_CHARS), []))
        n_rules = r.choice([0, 1, g.MAX_RULES, g.MAX_RULES + 1]) if r.random() < 0.2 else r.randint(0, 3)
        for i in range(n_rules):
            rule = out.rules.add(id=f"r{i}", kind=r.choice([0, 1, 2, 3, 4, 5, 77]), replacement="x")
            rule.pattern = self.sometimes(lambda: self.field(g.MAX_PATTERN_CHARS), r.choice(["abc", "a+", "(", ""]))
            if rule.kind == glossary_pb2.RULE_KIND_ACRONYM_CASE:
                rule.acronyms.extend(self.strings(5, 16))
        if r.random() < 0.05:  # past the stored-size limit in one field
            out.description = "d" * (g.MAX_GLOSSARY_BYTES + r.choice([-10, 10, 1000]))
        return out

    def job_id(self, real: list[str]) -> str:
        r = self.rng
        if real and r.random() < 0.15:
            return r.choice(real)
        return self.sometimes(lambda: self.field(r.choice([16, 64, 256, 1024, 4096])),
                              r.choice(["", "j-0", "nope", "*", ">", "a.b", "../x", "job_" + "0" * 26]))

    def page_token(self) -> str:
        return self.sometimes(lambda: self.field(32), self.rng.choice(["", "0", "1", "5", "-5", "999999", "x"]))


def _outcome(call) -> str:  # noqa: ANN001 - a callable making the RPC
    """"OK" or "CODE/REASON"; asserts the status is clear (never INTERNAL/UNKNOWN, ErrorInfo set)."""
    try:
        call()
    except grpc.RpcError as exc:
        code = exc.code()
        assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (code, exc.details())
        info = error_info(exc)
        assert info is not None and info.reason and info.domain == DOMAIN, (code, exc.details())
        return f"{code.name}/{info.reason}"
    return "OK"


def _job_ids(results) -> set[str]:  # noqa: ANN001
    ids, token = set(), ""
    while True:
        reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000, page_token=token), timeout=30)
        ids |= {j.job_id for j in reply.jobs}
        token = reply.next_page_token
        if not token:
            return ids


def _objects(stack) -> set[str]:  # noqa: ANN001
    root = stack.workdir / "objects"
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def test_every_request_message_answers_clearly(stack):
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest", "alice"))
    gateway = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway", "alice"))
    gloss = glossary_pb2_grpc.GlossariesStub(stack.channel("results", "bob"))
    results = results_pb2_grpc.ResultsStub(stack.channel("results", "alice"))
    admin = results_pb2_grpc.ResultsStub(stack.channel("results"))
    gen = Gen(seed=20260512)
    # One completed job of the caller's own, so Get/Watch/GetTranscript reach past the look-up.
    outcome, reply = create(ingest, jobs_pb2.JobSpec(filename="n.wav"), (FIXTURES / "numbers_en.wav").read_bytes())
    assert outcome == "created"
    real = [reply.job.job_id]
    assert list(results.WatchJob(results_pb2.WatchJobRequest(job_id=real[0]), timeout=120))[-1].job.state == (
        S.JOB_STATE_COMPLETED)
    jobs_before, objects_before = _job_ids(admin), _objects(stack)
    stored_glossaries: set[str] = set()
    counts: dict[str, collections.Counter] = {rpc: collections.Counter() for rpc in RPC_CASES}
    started = time.monotonic()

    def create_job() -> None:
        spec = gen.job_spec()
        # No audio: a spec within every limit ends EMPTY_AUDIO (or SOURCE_NOT_FOUND) before anything
        # is stored, so every case is a refusal whose absence of writes is checked below.
        ingest.CreateJob(iter([ingest_pb2.CreateJobRequest(spec=spec)]), timeout=30)

    def stream() -> None:
        config = gen.streaming()
        # A valid config is admitted; the second config then ends the session (CONFIG_REPEATED)
        # before audio, so no call is stored.
        requests = [streaming_pb2.StreamingRecognizeRequest(config=config)] * 2
        list(gateway.StreamingRecognize(iter(requests), timeout=30))

    def put_glossary() -> None:
        glossary = gen.glossary()
        gloss.PutGlossary(glossary_pb2.PutGlossaryRequest(glossary=glossary), timeout=30)
        stored_glossaries.add(glossary.id)

    calls = {
        "Ingest.CreateJob": create_job,
        "StreamGateway.StreamingRecognize": stream,
        "Glossaries.PutGlossary": put_glossary,
        "Glossaries.GetGlossary": lambda: gloss.GetGlossary(glossary_pb2.GetGlossaryRequest(
            id=gen.glossary_id(), version=gen.rng.choice([0, 1, 2, 2**32 - 1])), timeout=10),
        "Glossaries.DeleteGlossary": lambda: gloss.DeleteGlossary(
            glossary_pb2.DeleteGlossaryRequest(id=gen.glossary_id()), timeout=10),
        "Glossaries.ListGlossaries": lambda: gloss.ListGlossaries(glossary_pb2.ListGlossariesRequest(
            page_size=gen.rng.choice([0, 1, 1000, 1001, 2**32 - 1]), page_token=gen.page_token()), timeout=10),
        "Results.GetJob": lambda: results.GetJob(results_pb2.GetJobRequest(job_id=gen.job_id(real)), timeout=10),
        "Results.ListJobs": lambda: results.ListJobs(results_pb2.ListJobsRequest(
            page_size=gen.rng.choice([0, 1, 1000, 1001, 2**32 - 1]), page_token=gen.page_token(),
            state=gen.rng.choice([0, 1, 3, 6, 99])), timeout=10),
        "Results.WatchJob": lambda: list(results.WatchJob(results_pb2.WatchJobRequest(job_id=gen.job_id(real)),
                                                          timeout=10)),
        "Results.CancelJob": lambda: results.CancelJob(results_pb2.CancelJobRequest(job_id=gen.job_id([])),
                                                       timeout=10),
        "Results.DeleteJob": lambda: results.DeleteJob(results_pb2.DeleteJobRequest(job_id=gen.job_id([])),
                                                       timeout=10),
        "Results.GetTranscript": lambda: results.GetTranscript(results_pb2.GetTranscriptRequest(
            job_id=gen.job_id(real), format=gen.rng.choice([0, 1, 2, 3, 4, 5, 99]), raw=gen.rng.random() < 0.5),
            timeout=10),
    }
    # Interleaved (a deleted glossary id comes back, a listed page follows a put), in a fixed order.
    schedule = [rpc for rpc, n in RPC_CASES.items() for _ in range(n)]
    gen.rng.shuffle(schedule)
    for rpc in schedule:
        counts[rpc][_outcome(calls[rpc])] += 1
    elapsed = time.monotonic() - started

    # Nothing written by the refusals: no job record, no object.
    assert counts["Ingest.CreateJob"]["OK"] == 0 and counts["StreamGateway.StreamingRecognize"]["OK"] == 0
    assert _job_ids(admin) == jobs_before
    assert _objects(stack) == objects_before
    # Only glossaries whose put succeeded exist (a refused put wrote nothing).
    listed = {g.id for g in gloss.ListGlossaries(glossary_pb2.ListGlossariesRequest(page_size=1000), timeout=10)
              .glossaries}
    assert listed <= stored_glossaries, listed - stored_glossaries
    for glossary_id in listed:
        gloss.DeleteGlossary(glossary_pb2.DeleteGlossaryRequest(id=glossary_id), timeout=10)
    for name in ("results", "ingest", "postprocess", "transcriber", "stream_gateway"):
        with grpc.insecure_channel(stack.addresses[name]) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

    total = sum(sum(c.values()) for c in counts.values())
    histogram = collections.Counter()
    for counter in counts.values():
        for outcome, n in counter.items():
            histogram[outcome.split("/")[0]] += n
    lines = [f"fuzzed {total} requests over {len(counts)} RPCs in {elapsed:.0f} s"]
    for rpc, counter in counts.items():
        lines.append(f"  {rpc} ({sum(counter.values())}): " + ", ".join(f"{k}={v}" for k, v in counter.most_common()))
    lines.append("  status codes: " + ", ".join(f"{k}={v}" for k, v in histogram.most_common()))
    print("\n".join(lines), file=sys.stderr)
    assert total >= 10_000
