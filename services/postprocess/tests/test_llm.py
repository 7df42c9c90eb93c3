"""The LLM pass against a loopback HTTP server that speaks the chat-completions API (port 0)."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import SecretStr

from scribe.v1 import transcript_pb2
from scribe_postprocess.config import LlmSettings
from scribe_postprocess.llm import LlmClient, normalize_endpoint, run_llm_pass


class ChatServer:
    """Answers POST /v1/chat/completions; ``mode`` "ok", "error" (HTTP 500), "hang" or "chatty"."""

    def __init__(self):
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.mode = "ok"
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # noqa: ANN002 - quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions":
                    self.send_response(404)
                    self.end_headers()
                    return
                if outer.mode == "hang":
                    outer.release.wait(10)
                    return  # the client gave up long ago
                if outer.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    return
                user = body["messages"][-1]["content"]
                if "Summarise" in body["messages"][0]["content"]:
                    answer = "SUMMARY: " + user[:40] + " call 010-1234-5678"
                elif outer.mode == "chatty":
                    answer = "Sure! Here is the corrected text, with explanations of every change. " * 5
                else:
                    answer = user.replace("V-N-R-M", "vLLM").replace("[PHONE]", "010 9999 8888")
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data.encode())))
                self.end_headers()
                self.wfile.write(data.encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    server = ChatServer()
    yield server
    server.close()


def transcript() -> transcript_pb2.Transcript:
    return transcript_pb2.Transcript(
        job_id="job-1",
        segments=[
            transcript_pb2.Segment(id=0, text=" We serve it with V-N-R-M.", raw_text=" We serve it with V-N-R-M.",
                                   flags=["LOW_AVG_LOGPROB"]),
            transcript_pb2.Segment(id=1, text=" Call me at [PHONE].", raw_text=" Call me at [PHONE].",
                                   flags=["LOW_WORD_PROBABILITY"]),
            transcript_pb2.Segment(id=2, text=" Confident text.", raw_text=" Confident text."),
        ],
    )


def settings(url: str, **kw) -> LlmSettings:
    values = {"enabled": True, "endpoint": url, "allowed_endpoints": [url], "model": "test-model",
              "timeout_seconds": 2.0, "summary": True, "api_key": SecretStr("sk-test")}
    values.update(kw)
    return LlmSettings(**values)


async def run(server_settings: LlmSettings, redact: bool = True) -> transcript_pb2.Transcript:
    t = transcript()
    client = LlmClient(server_settings)
    try:
        await run_llm_pass(client, t, ["vLLM"], redact=redact)
    finally:
        await client.close()
    return t


async def test_allowed_endpoint_corrects_flagged_segments_only_and_summarises(server, caplog):
    caplog.set_level(logging.INFO, logger="scribe.audit")
    t = await run(settings(server.url))
    assert t.segments[0].text == " We serve it with vLLM."
    # The LLM tried to put a number back into a redacted segment: redacted again.
    assert t.segments[1].text == " Call me at [PHONE]."
    assert t.segments[2].text == " Confident text."  # not flagged: never sent
    sent = [r["messages"][-1]["content"] for r in server.requests]
    assert sent[:2] == ["We serve it with V-N-R-M.", "Call me at [PHONE]."]
    assert all("Confident" not in s for s in sent[:2])
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert server.requests[0]["model"] == "test-model" and "vLLM" in server.requests[0]["messages"][0]["content"]
    llm = [c for c in t.corrections if c.kind == transcript_pb2.CORRECTION_KIND_LLM]
    assert [(c.segment_id, c.original, c.replacement, c.rule_id) for c in llm] == [
        (0, " We serve it with V-N-R-M.", " We serve it with vLLM.", "llm:test-model")
    ]
    assert t.summary.startswith("SUMMARY:") and "[PHONE]" in t.summary and "1234" not in t.summary
    assert not t.notes
    audits = [r for r in caplog.records if getattr(r, "audit", "") == "llm_call"]
    assert len(audits) == 3
    assert all(r.job_id == "job-1" and r.endpoint == server.url and r.outcome == "ok" for r in audits)
    assert {r.purpose for r in audits} == {"correct_segment", "summary"}


async def test_endpoint_not_on_the_allow_list_is_never_called(server, caplog):
    caplog.set_level(logging.INFO, logger="scribe.audit")
    t = await run(settings(server.url, allowed_endpoints=["http://127.0.0.1:1/v1"]))
    assert server.requests == []
    assert [s.text for s in t.segments] == [s.text for s in transcript().segments]
    assert not t.summary and not [c for c in t.corrections]
    assert any("not on the allow-list" in n for n in t.notes), t.notes
    assert [r.outcome for r in caplog.records if getattr(r, "audit", "") == "llm_call"][:1] == ["refused"]


@pytest.mark.parametrize(("mode", "words"), [("error", "HTTP 500"), ("hang", "timed out")])
async def test_failure_leaves_the_uncorrected_transcript_and_says_so(server, mode, words):
    server.mode = mode
    t = await run(settings(server.url, timeout_seconds=0.5))
    server.release.set()
    assert [s.text for s in t.segments] == [s.text for s in transcript().segments]
    assert not t.corrections
    assert any(words in n and "uncorrected" in n for n in t.notes), t.notes
    assert any("summary not attempted" in n for n in t.notes), t.notes
    assert len(server.requests) == 1  # the first failure stops the pass


async def test_implausible_answer_is_rejected(server):
    server.mode = "chatty"
    t = await run(settings(server.url, summary=False))
    assert [s.text for s in t.segments] == [s.text for s in transcript().segments]
    assert sum("implausible" in n for n in t.notes) == 2


def test_endpoint_normalisation():
    assert normalize_endpoint("HTTP://LocalHost/v1/") == "http://localhost:80/v1"
    assert normalize_endpoint("https://api.example.com/v1") == "https://api.example.com:443/v1"
    assert normalize_endpoint("ftp://x/v1") == "" and normalize_endpoint("not a url") == ""


# --- Per-job post-correction mode (RecognitionConfig.post_correction) through postprocess_transcript ---

from scribe.v1 import jobs_pb2  # noqa: E402
from scribe_postprocess.config import Settings  # noqa: E402
from scribe_postprocess.transform import postprocess_transcript  # noqa: E402

PC = transcript_pb2.PostCorrection
ALL_MODES = ["off", "flagged", "all"]


def raw_transcript() -> transcript_pb2.Transcript:
    """A decoded transcript: one low-confidence segment, one confident, one stock phrase from silence."""
    return transcript_pb2.Transcript(
        job_id="job-2",
        segments=[
            transcript_pb2.Segment(id=0, start=0, end=2, text=" We serve it with V-N-R-M.", avg_logprob=-1.3),
            transcript_pb2.Segment(id=1, start=2, end=4, text=" V-N-R-M runs on Kubernetes.", avg_logprob=-0.2),
            transcript_pb2.Segment(id=2, start=8, end=10, text=" Thank you for watching!", no_speech_prob=0.95,
                                   avg_logprob=-0.6),
        ],
    )


async def postprocess(server_url: str | None, mode: int, **settings_kw) -> transcript_pb2.Transcript:
    values = {"post_correction_allowed": ALL_MODES}
    values.update(settings_kw)
    config = Settings(**values)
    config_message = transcript_pb2.RecognitionConfig(post_correction=mode)
    job = jobs_pb2.Job(job_id="job-2", spec=jobs_pb2.JobSpec(config=config_message))
    client = LlmClient(settings(server_url, summary=False)) if server_url else None
    try:
        return await postprocess_transcript(raw_transcript(), job, None, config, [], client)
    finally:
        if client is not None:
            await client.close()


def sent(server) -> list[str]:
    return [r["messages"][-1]["content"] for r in server.requests]


async def test_mode_off_sends_nothing(server):
    t = await postprocess(server.url, PC.POST_CORRECTION_OFF)
    assert server.requests == []
    assert [s.text for s in t.segments] == [" We serve it with V-N-R-M.", " V-N-R-M runs on Kubernetes."]
    assert not [n for n in t.notes if n.startswith("llm:")]


async def test_mode_flagged_sends_only_the_flagged_segments(server):
    t = await postprocess(server.url, PC.POST_CORRECTION_FLAGGED)
    assert sent(server) == ["We serve it with V-N-R-M."]
    assert [s.text for s in t.segments] == [" We serve it with vLLM.", " V-N-R-M runs on Kubernetes."]


async def test_mode_all_sends_every_kept_segment(server):
    t = await postprocess(server.url, PC.POST_CORRECTION_ALL)
    # The stock phrase decoded from silence was dropped before the pass: never sent.
    assert sent(server) == ["We serve it with V-N-R-M.", "V-N-R-M runs on Kubernetes."]
    assert [s.text for s in t.segments] == [" We serve it with vLLM.", " vLLM runs on Kubernetes."]
    assert [c.segment_id for c in t.corrections if c.kind == transcript_pb2.CORRECTION_KIND_LLM] == [0, 1]
    (drop,) = [c for c in t.corrections if c.rule_id.startswith("hallucination:")]
    assert (drop.segment_id, drop.original, drop.replacement, drop.kind) == (
        2, " Thank you for watching!", "", transcript_pb2.CORRECTION_KIND_RULE)


@pytest.mark.parametrize(
    ("default", "expected"),
    [("off", []), ("flagged", ["We serve it with V-N-R-M."]),
     ("all", ["We serve it with V-N-R-M.", "V-N-R-M runs on Kubernetes."])],
)
async def test_unspecified_takes_the_deployment_default(server, default, expected):
    await postprocess(server.url, PC.POST_CORRECTION_UNSPECIFIED, post_correction_default=default)
    assert sent(server) == expected


async def test_a_mode_the_deployment_does_not_allow_is_skipped_and_the_job_completes(server, caplog):
    caplog.set_level(logging.WARNING)
    t = await postprocess(server.url, PC.POST_CORRECTION_ALL, post_correction_allowed=["off", "flagged"])
    assert server.requests == []
    assert [s.text for s in t.segments] == [" We serve it with V-N-R-M.", " V-N-R-M runs on Kubernetes."]
    assert any("'all' is not allowed" in n and "off, flagged" in n for n in t.notes), t.notes
    assert any("llm pass skipped" in r.getMessage() for r in caplog.records)


async def test_a_mode_without_an_llm_endpoint_is_skipped_with_a_note():
    t = await postprocess(None, PC.POST_CORRECTION_FLAGGED)
    assert any("no LLM endpoint is configured" in n for n in t.notes), t.notes
    assert len(t.segments) == 2


def test_the_default_mode_must_be_allowed():
    with pytest.raises(ValueError, match="post_correction_default"):
        Settings(post_correction_default="all", post_correction_allowed=["off", "flagged"])
    assert Settings().post_correction_allowed == ["off"] and Settings().post_correction_default == "off"
