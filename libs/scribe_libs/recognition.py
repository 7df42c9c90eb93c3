"""Validation of a RecognitionConfig, shared by ingest and the stream gateway.

Limits and their sources:

- languages: BCP-47 tags (RFC 5646) as Google Speech, Riva and Deepgram take them, parsed and
  canonicalised by ``langcodes`` ("en-us" -> "en-US", "kor" -> "ko", "iw" -> "he"); the tag's
  language subtag must be one Whisper knows (faster-whisper ``tokenizer._LANGUAGE_CODES``, from
  openai/whisper tokenizer.py). The config keeps the caller's tag (canonical form), so a job
  echoes what was asked; :func:`language_code` gives the decoder its code (``"en-US"`` -> ``"en"``);
- English-only models (``*.en``) decode English only (openai/whisper model card);
- beam size 1-16 (faster-whisper default 5; wider beams cost time with no gain reported);
- hotwords and initial prompt share Whisper's 224-token prompt budget (openai/whisper
  decoding.py, ``n_ctx // 2``); we cap characters conservatively at 1000.
"""

from __future__ import annotations

import langcodes
from faster_whisper.tokenizer import _LANGUAGE_CODES

from scribe.v1 import transcript_pb2
from scribe_libs.errors import InvalidArgument
from scribe_libs.models import validate_model_name

#: Whisper's codes where they differ from the ISO 639-1 code (openai/whisper tokenizer.py).
_WHISPER_CODES = {"jv": "jw"}
MAX_BEAM_SIZE = 16


def canonical_language(tag: str, field: str = "language") -> str:
    """The canonical BCP-47 form of ``tag`` (``"EN_us"`` -> ``"en-US"``); ``""`` for empty or ``"auto"``.

    Raises:
        InvalidArgument: ``UNKNOWN_LANGUAGE`` when ``tag`` is not a well-formed BCP-47 tag or its
            language is not one Whisper decodes (``field`` named).
    """
    raw = tag.strip()
    if raw.lower() in ("", "auto"):
        return ""
    unknown = InvalidArgument(
        "UNKNOWN_LANGUAGE",
        f"unknown language {tag[:35]!r}; use a BCP-47 tag such as 'ko', 'ko-KR', 'en-US', or 'auto'",
        field=field,
    )
    try:
        canonical = langcodes.standardize_tag(raw.replace("_", "-"))
    except (ValueError, langcodes.tag_parser.LanguageTagError):
        raise unknown from None
    language = langcodes.Language.get(canonical).language or ""
    if _WHISPER_CODES.get(language, language) not in _LANGUAGE_CODES:
        raise unknown
    return canonical


def language_code(tag: str) -> str:
    """Whisper's code for a (validated) BCP-47 tag: ``"en-US"`` -> ``"en"``, ``"jv"`` -> ``"jw"``; ``""`` for auto."""
    canonical = canonical_language(tag)
    if not canonical:
        return ""
    language = langcodes.Language.get(canonical).language or ""
    return _WHISPER_CODES.get(language, language)
MAX_PROMPT_CHARS = 1000
MAX_HOTWORDS = 100


def validate_config(
    config: transcript_pb2.RecognitionConfig, default_model: str, field: str = "spec.config"
) -> transcript_pb2.RecognitionConfig:
    """Check ``config`` and return a copy with defaults filled in (model, language).

    The language comes back as its canonical BCP-47 tag (``"auto"`` -> ``""``); decoders take
    :func:`language_code` of it.

    ``allowed_languages`` come back canonical and without duplicates; ``channel_roles`` stripped
    (their count is checked against the audio's channels where the audio is known).

    Raises:
        InvalidArgument: reasons ``UNKNOWN_LANGUAGE``, ``LANGUAGE_NOT_ALLOWED`` (a fixed language
            outside ``allowed_languages``), ``INVALID_CHANNEL_ROLES``, ``UNKNOWN_MODEL``,
            ``MODEL_LANGUAGE_MISMATCH`` (an English-only model asked for another language, fixed
            or allowed), ``INVALID_BEAM_SIZE``, ``PROMPT_TOO_LONG``, with the offending field named.
    """
    out = transcript_pb2.RecognitionConfig()
    out.CopyFrom(config)
    out.language = canonical_language(out.language, f"{field}.language")
    language = language_code(out.language)
    allowed: list[str] = []
    for i, tag in enumerate(out.allowed_languages):
        canonical = canonical_language(tag, f"{field}.allowed_languages[{i}]")
        if canonical and canonical not in allowed:
            allowed.append(canonical)
    del out.allowed_languages[:]
    out.allowed_languages.extend(allowed)
    allowed_codes = {language_code(tag) for tag in allowed}
    if language and allowed_codes and language not in allowed_codes:
        raise InvalidArgument(
            "LANGUAGE_NOT_ALLOWED", f"language {out.language!r} is not among allowed_languages {allowed}",
            field=f"{field}.language",
        )
    roles = [r.strip() for r in out.channel_roles]
    if any(not r for r in roles) or len(set(roles)) != len(roles):
        raise InvalidArgument(
            "INVALID_CHANNEL_ROLES", "channel_roles must be distinct non-empty labels, one per channel",
            field=f"{field}.channel_roles",
        )
    del out.channel_roles[:]
    out.channel_roles.extend(roles)
    out.model = out.model.strip() or default_model
    validate_model_name(out.model)
    if out.model.endswith(".en") and (language not in ("", "en") or allowed_codes - {"en"}):
        language = language or sorted(allowed_codes - {"en"})[0]
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
