"""Validation of a RecognitionConfig, shared by ingest and the stream gateway.

Limits and their sources:

- languages: the codes Whisper knows (faster-whisper ``tokenizer._LANGUAGE_CODES``, from
  openai/whisper tokenizer.py);
- English-only models (``*.en``) decode English only (openai/whisper model card);
- beam size 1-16 (faster-whisper default 5; wider beams cost time with no gain reported);
- hotwords and initial prompt share Whisper's 224-token prompt budget (openai/whisper
  decoding.py, ``n_ctx // 2``); we cap characters conservatively at 1000.
"""

from __future__ import annotations

from faster_whisper.tokenizer import _LANGUAGE_CODES

from scribe.v1 import transcript_pb2
from scribe_libs.errors import InvalidArgument
from scribe_libs.models import validate_model_name

MAX_BEAM_SIZE = 16
MAX_PROMPT_CHARS = 1000
MAX_HOTWORDS = 100


def validate_config(
    config: transcript_pb2.RecognitionConfig, default_model: str, field: str = "spec.config"
) -> transcript_pb2.RecognitionConfig:
    """Check ``config`` and return a copy with defaults filled in (model, language "auto" -> "").

    Raises:
        InvalidArgument: reasons ``UNKNOWN_LANGUAGE``, ``UNKNOWN_MODEL``,
            ``MODEL_LANGUAGE_MISMATCH``, ``INVALID_BEAM_SIZE``, ``PROMPT_TOO_LONG``, with the
            offending field named.
    """
    out = transcript_pb2.RecognitionConfig()
    out.CopyFrom(config)
    language = out.language.strip().lower()
    if language == "auto":
        language = ""
    if language and language not in _LANGUAGE_CODES:
        raise InvalidArgument(
            "UNKNOWN_LANGUAGE", f"unknown language {config.language!r}; use an ISO 639-1 code or 'auto'",
            field=f"{field}.language",
        )
    out.language = language
    out.model = out.model.strip() or default_model
    validate_model_name(out.model)
    if out.model.endswith(".en") and language not in ("", "en"):
        raise InvalidArgument(
            "MODEL_LANGUAGE_MISMATCH", f"model {out.model} is English-only; language {language!r} needs a "
            "multilingual model", field=f"{field}.model",
        )
    if out.beam_size > MAX_BEAM_SIZE:
        raise InvalidArgument(
            "INVALID_BEAM_SIZE", f"beam_size must be 0 (default) to {MAX_BEAM_SIZE}", field=f"{field}.beam_size"
        )
    hotwords = [h.strip() for h in out.hotwords if h.strip()]
    if len(hotwords) > MAX_HOTWORDS or len(" ".join(hotwords)) + len(out.initial_prompt) > MAX_PROMPT_CHARS:
        raise InvalidArgument(
            "PROMPT_TOO_LONG", f"hotwords and initial_prompt together exceed {MAX_PROMPT_CHARS} characters "
            f"or {MAX_HOTWORDS} terms (Whisper's prompt budget is 224 tokens)", field=f"{field}.hotwords",
        )
    del out.hotwords[:]
    out.hotwords.extend(hotwords)
    return out
