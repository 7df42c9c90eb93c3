"""Postprocess settings (environment prefix ``SCRIBE_POSTPROCESS_``).

Nested values use ``__``: ``SCRIBE_POSTPROCESS_FLAGS__MIN_AVG_LOGPROB=-0.8``,
``SCRIBE_POSTPROCESS_LLM__ENABLED=true``, ``SCRIBE_POSTPROCESS_LLM__ALLOWED_ENDPOINTS='["http://ollama:11434/v1"]'``,
``SCRIBE_POSTPROCESS_RULES='[{"id": "api", "kind": "ACRONYM_CASE", "acronyms": ["API"]}]'``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from scribe_libs.config import ServiceSettings, service_config
from scribe_libs.textproc import FlagThresholds, NumberOptions, Rule, RuleKind


class GlobalRule(BaseModel):
    """A rule applied to every job after the glossaries' rules (see glossary.proto ``Rule``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(description="Unique among the global rules; corrections record it as rule:<id>.")
    kind: str = Field(description="EXACT, REGEX, ACRONYM_CASE, HANGUL_LATIN_SPACING or NUMBER_NORMALIZATION.")
    pattern: str = Field("", description="EXACT: the literal text; REGEX: the Python regular expression.")
    replacement: str = Field("", description="EXACT and REGEX: the text written instead.")
    case_sensitive: bool = Field(False, description="EXACT: match only in the exact casing.")
    acronyms: list[str] = Field(default_factory=list, description="ACRONYM_CASE: acronyms in canonical casing.")
    strip_thousands_separators: bool = Field(False, description="NUMBER_NORMALIZATION: '4,111,111' -> '4111111'.")
    strip_currency_amounts: bool = Field(False, description="NUMBER_NORMALIZATION: also in amounts ('1,500원').")

    def to_rule(self) -> Rule:
        """The engine's Rule (an unknown kind becomes UNSPECIFIED, which the engine rejects)."""
        kind = RuleKind.__members__.get(self.kind.upper().removeprefix("RULE_KIND_"), RuleKind.UNSPECIFIED)
        return Rule(
            id=self.id,
            kind=kind,
            pattern=self.pattern,
            replacement=self.replacement,
            case_sensitive=self.case_sensitive,
            acronyms=tuple(self.acronyms),
            number_options=NumberOptions(self.strip_thousands_separators, self.strip_currency_amounts),
        )


class LlmSettings(BaseModel):
    """The optional LLM pass through an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    Off by default. Calls go only to an ``endpoint`` that is listed in ``allowed_endpoints``
    (compared after normalisation: scheme and host lower-cased, default port made explicit, no
    trailing slash); every call is audit-logged (logger ``scribe.audit``) with the job id and
    endpoint, never with transcript text. Redacted jobs send only redacted text.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="Run the LLM pass at all.")
    endpoint: str = Field("", description="Base URL of the API, e.g. http://127.0.0.1:11434/v1 (Ollama).")
    allowed_endpoints: list[str] = Field(default_factory=list, description="Egress allow-list of base URLs.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer token sent as Authorization; empty sends none.")
    model: str = Field("llama3.1", description="Model name passed to the API.")
    timeout_seconds: float = Field(30.0, gt=0, description="Timeout of each HTTP call (connect, read, write).")
    correct_flagged: bool = Field(True, description="Ask the LLM to correct segments that carry a confidence flag.")
    max_segments: int = Field(50, ge=0, description="At most this many flagged segments are sent per job.")
    summary: bool = Field(False, description="Ask the LLM for a summary of the whole transcript.")
    max_summary_chars: int = Field(20000, gt=0, description="Transcript characters sent for the summary (head).")


class Settings(ServiceSettings):
    """Postprocess configuration. Durations in seconds."""

    model_config = service_config("SCRIBE_POSTPROCESS_")

    port: int = Field(50054, description="gRPC port (health only); 0 picks a free one.")
    ack_wait_seconds: float = Field(60.0, description="JetStream ack wait for a post-processing message.")
    max_deliver: int = Field(5, description="Deliveries of a post-processing message before the job is FAILED.")
    flags: FlagThresholds = Field(default_factory=FlagThresholds, description="Confidence flag thresholds.")
    rules: list[GlobalRule] = Field(
        default_factory=list, description="Global rules, applied to every job after the glossaries' rules, in order."
    )
    llm: LlmSettings = Field(default_factory=LlmSettings, description="Optional LLM pass (off by default).")
