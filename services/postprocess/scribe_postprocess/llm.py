"""The optional LLM pass: correct segments, write a summary (OpenAI chat-completions API).

Which segments a job sends is its post-correction mode (``RecognitionConfig.post_correction``,
resolved by :func:`scribe_libs.textproc.postcorrection.resolve`): ``flagged`` sends the segments
that carry a confidence flag, ``all`` every non-empty segment; ``off`` runs nothing (the caller
does not call :func:`run_llm_pass`). The summary (``llm.summary``) is written only for jobs
whose mode is not ``off``.

Egress rules (DESIGN.md, "Security"): off unless ``llm.enabled``; a call goes out only when the
configured endpoint is on ``llm.allowed_endpoints``; each call is logged on the ``scribe.audit``
logger with job id, endpoint, model, purpose, outcome and duration (never the text); each call
has a timeout. Any failure leaves the transcript as the deterministic stages left it and adds a
note to ``Transcript.notes`` saying what was not done.

Safeguards on answers: an empty answer, or a correction more than twice (plus 20 characters) as
long or less than half as long as the segment, is rejected (an LLM that starts chatting must not
replace a segment). With redaction on, answers are redacted again before they are used, so an
LLM cannot reintroduce a number.

API: ``POST <endpoint>/chat/completions`` with ``{"model", "messages", "temperature": 0}``; the
answer is ``choices[0].message.content`` (OpenAI's API, also served by Ollama, vLLM and llama.cpp).
"""

from __future__ import annotations

import logging
import time
from urllib.parse import urlsplit

import httpx

from scribe.v1 import transcript_pb2
from scribe_libs.textproc import redact_text
from scribe_postprocess.config import LlmSettings

log = logging.getLogger(__name__)
audit = logging.getLogger("scribe.audit")

CORRECTION_PROMPT = (
    "You correct speech recognition errors in one segment of a transcript. Fix misheard words, "
    "especially technical terms from this list: {terms}. Keep the language, meaning and wording "
    "otherwise; keep placeholders such as [PHONE] or [CARD] exactly. Answer with the corrected "
    "segment text only, no quotes, no explanation."
)
SUMMARY_PROMPT = (
    "Summarise this call or recording transcript in a few sentences, in the transcript's language. "
    "Keep placeholders such as [PHONE] exactly. Answer with the summary only."
)


class LlmError(Exception):
    """A call failed (not allowed, timeout, HTTP error, malformed answer); the message says which."""


def normalize_endpoint(url: str) -> str:
    """``"HTTP://Host:80/v1/"`` -> ``"http://host:80/v1"`` (default port explicit, no trailing slash)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{parts.hostname.lower()}:{port}{parts.path.rstrip('/')}"


def endpoint_allowed(settings: LlmSettings) -> bool:
    """True when ``settings.endpoint`` is a valid URL on the allow-list."""
    endpoint = normalize_endpoint(settings.endpoint)
    return bool(endpoint) and endpoint in {normalize_endpoint(u) for u in settings.allowed_endpoints}


class LlmClient:
    """Chat-completions calls with allow-list, timeout and audit log.

    Args:
        settings: The ``llm`` settings.
        transport: httpx transport override (tests); None uses the network.
    """

    def __init__(self, settings: LlmSettings, transport: httpx.AsyncBaseTransport | None = None):
        self.settings = settings
        headers = {"Content-Type": "application/json"}
        if settings.api_key.get_secret_value():
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds), headers=headers, transport=transport,
            follow_redirects=False,  # a redirect could leave the allow-list
        )

    async def close(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def chat(self, job_id: str, purpose: str, system: str, user: str) -> str:
        """One chat completion; returns the answer text.

        Raises:
            LlmError: endpoint not allowed, timeout, HTTP status >= 400, or no answer text.
        """
        endpoint = self.settings.endpoint.rstrip("/")
        allowed = endpoint_allowed(self.settings)
        started = time.monotonic()
        outcome = "ok"
        try:
            if not allowed:
                outcome = "refused"
                raise LlmError(f"endpoint {endpoint} is not on the allow-list")
            try:
                reply = await self._client.post(
                    f"{endpoint}/chat/completions",
                    json={
                        "model": self.settings.model,
                        "temperature": 0,
                        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                    },
                )
            except httpx.TimeoutException as exc:
                outcome = "timeout"
                raise LlmError(f"timed out after {self.settings.timeout_seconds:g} s") from exc
            except httpx.HTTPError as exc:
                outcome = "error"
                raise LlmError(f"{type(exc).__name__}: {exc}") from exc
            if reply.status_code >= 400:
                outcome = f"http_{reply.status_code}"
                raise LlmError(f"HTTP {reply.status_code}")
            try:
                content = reply.json()["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                outcome = "malformed"
                raise LlmError("malformed chat-completions answer") from exc
            if not isinstance(content, str) or not content.strip():
                outcome = "empty"
                raise LlmError("empty answer")
            return content.strip()
        finally:
            audit.info(
                "llm call",
                extra={
                    "audit": "llm_call",
                    "job_id": job_id,
                    "endpoint": endpoint,
                    "model": self.settings.model,
                    "purpose": purpose,
                    "outcome": outcome,
                    "duration_seconds": round(time.monotonic() - started, 3),
                },
            )


def _plausible(before: str, after: str) -> bool:
    return bool(after) and len(before) / 2 <= len(after) <= 2 * len(before) + 20


async def run_llm_pass(
    client: LlmClient, transcript: transcript_pb2.Transcript, terms: list[str], redact: bool, mode: str = "flagged"
) -> None:
    """Correct the job's segments (``mode`` "flagged" or "all") and/or summarise, in place; failures become notes.

    A corrected segment gets a ``CORRECTION_KIND_LLM`` correction spanning its whole
    ``raw_text`` with ``original`` = the text before the LLM pass and ``rule_id`` =
    ``llm:<model>``. Its words keep their timings and pre-LLM text. The first failed call stops
    the pass (an endpoint that is down or refused would fail every call).
    """
    settings = client.settings
    model = settings.model
    job_id = transcript.job_id
    if mode not in ("flagged", "all"):
        raise ValueError(f"unknown post-correction mode {mode!r}")
    # Correction, then the summary.
    chosen = [s for s in transcript.segments if (mode == "all" or s.flags) and s.text.strip()]
    system = CORRECTION_PROMPT.format(terms=", ".join(terms) or "(none)")
    for segment in chosen[: settings.max_segments]:
        try:
            answer = await client.chat(job_id, "correct_segment", system, segment.text.strip())
        except LlmError as exc:
            log.warning("llm correction failed; segments left as post-processed: %s", exc)
            which = "flagged segments" if mode == "flagged" else "segments"
            transcript.notes.append(f"llm: correction failed ({exc}); {which} left uncorrected")
            if settings.summary:
                transcript.notes.append("llm: summary not attempted after the failure")
            return
        if redact:
            answer, _ = redact_text(answer)
        leading = segment.text[: len(segment.text) - len(segment.text.lstrip())]
        before = segment.text.strip()
        if answer == before:
            continue
        if not _plausible(before, answer):
            transcript.notes.append(f"llm: answer for segment {segment.id} rejected as implausible; left as is")
            continue
        transcript.corrections.append(
            transcript_pb2.Correction(
                segment_id=segment.id, start=0, end=len(segment.raw_text), original=segment.text,
                replacement=leading + answer, rule_id=f"llm:{model}", kind=transcript_pb2.CORRECTION_KIND_LLM,
            )
        )
        segment.text = leading + answer
    if len(chosen) > settings.max_segments:
        transcript.notes.append(
            f"llm: only the first {settings.max_segments} of {len(chosen)} "
            f"{'flagged ' if mode == 'flagged' else ''}segments were sent"
        )
    if settings.summary:
        text = "\n".join(s.text.strip() for s in transcript.segments if s.text.strip())[: settings.max_summary_chars]
        if not text:
            return
        try:
            summary = await client.chat(job_id, "summary", SUMMARY_PROMPT, text)
        except LlmError as exc:
            log.warning("llm summary failed: %s", exc)
            transcript.notes.append(f"llm: summary failed ({exc})")
            return
        transcript.summary = redact_text(summary)[0] if redact else summary
