"""Postprocess settings (environment prefix ``SCRIBE_POSTPROCESS_``).

Nested values use ``__``: ``SCRIBE_POSTPROCESS_FLAGS__MIN_AVG_LOGPROB=-0.8``,
``SCRIBE_POSTPROCESS_LLM__ENABLED=true``, ``SCRIBE_POSTPROCESS_LLM__ALLOWED_ENDPOINTS='["http://ollama:11434/v1"]'``,
``SCRIBE_POSTPROCESS_RULES='[{"id": "api", "kind": "ACRONYM_CASE", "acronyms": ["API"]}]'``,
``SCRIBE_POSTPROCESS_POST_CORRECTION_ALLOWED='["off", "flagged"]'``,
``SCRIBE_POSTPROCESS_HALLUCINATION__DROP_NO_SPEECH_PROB=0.5``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from scribe_libs.config import ServiceSettings, service_config
from scribe_libs.textproc import FlagThresholds, NumberOptions, Rule, RuleKind
from scribe_libs.textproc.hallucination import HallucinationSettings
from scribe_libs.textproc.postcorrection import ModeName


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

    Off by default. ``enabled`` makes the endpoint available; which segments a job sends is the
    job's ``post_correction`` within ``Settings.post_correction_allowed`` (see
    :mod:`scribe_libs.textproc.postcorrection`).
    Calls go only to an ``endpoint`` that is listed in ``allowed_endpoints``
    (compared after normalisation: scheme and host lower-cased, default port made explicit, no
    trailing slash); every call is audit-logged (logger ``scribe.audit``) with the job id and
    endpoint, never with transcript text. Redacted jobs send only redacted text.
    """

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(
        False,
        description="An LLM endpoint is configured: jobs may use the pass (per job, within post_correction_allowed).",
    )
    endpoint: str = Field("", description="Base URL of the API, e.g. http://127.0.0.1:11434/v1 (Ollama).")
    allowed_endpoints: list[str] = Field(default_factory=list, description="Egress allow-list of base URLs.")
    api_key: SecretStr = Field(SecretStr(""), description="Bearer token sent as Authorization; empty sends none.")
    model: str = Field("llama3.1", description="Model name passed to the API.")
    timeout_seconds: float = Field(30.0, gt=0, description="Timeout of each HTTP call (connect, read, write).")
    max_segments: int = Field(50, ge=0, description="At most this many segments are sent for correction per job.")
    summary: bool = Field(
        False, description="Also ask for a summary of the whole transcript, for jobs whose post-correction is not off."
    )
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
    post_correction_allowed: list[ModeName] = Field(
        default_factory=lambda: ["off"],
        description="Post-correction modes a job may use (off, flagged, all); off is always allowed. Ingest's "
        "SCRIBE_INGEST_POST_CORRECTION_ALLOWED must list the same. A mode is only run when llm.enabled; otherwise, or "
        "for a mode not listed here, the job completes without the pass and a note says why.",
    )
    post_correction_default: ModeName = Field(
        "off", description="Mode of a job that leaves post_correction UNSPECIFIED; must be allowed."
    )
    hallucination: HallucinationSettings = Field(
        default_factory=HallucinationSettings,
        description="Hallucination guard: drop or flag known Whisper stock phrases (thresholds).",
    )

    @model_validator(mode="after")
    def _default_is_allowed(self) -> Settings:
        if self.post_correction_default != "off" and self.post_correction_default not in self.post_correction_allowed:
            raise ValueError(
                f"post_correction_default {self.post_correction_default!r} is not in post_correction_allowed "
                f"{self.post_correction_allowed}"
            )
        return self
