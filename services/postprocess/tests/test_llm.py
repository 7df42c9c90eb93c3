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
