"""BCP-47 language tags in a RecognitionConfig (scribe_libs.recognition): accepted, canonicalised,
echoed, and mapped to the decoder's code."""

from __future__ import annotations

import pytest

from scribe.v1 import transcript_pb2
from scribe_libs.errors import InvalidArgument
from scribe_libs.recognition import canonical_language, language_code, validate_config


@pytest.mark.parametrize(
    ("tag", "canonical", "code"),
    [
        ("en-US", "en-US", "en"),
        ("ko-KR", "ko-KR", "ko"),
        ("ko", "ko", "ko"),
        ("EN_us", "en-US", "en"),  # case and underscore as some SDKs write it
        ("kor", "ko", "ko"),  # ISO 639-2 -> the shortest tag (BCP 47 section 2.2.1)
        ("iw", "he", "he"),  # deprecated code -> preferred value (IANA registry)
        ("jv", "jv", "jw"),  # Whisper's own code for Javanese
        ("zh-Hant-TW", "zh-Hant-TW", "zh"),
        ("auto", "", ""),
        ("", "", ""),
    ],
)
def test_tags_are_canonicalised_and_mapped_to_whisper_codes(tag, canonical, code):
    assert canonical_language(tag) == canonical
    assert language_code(tag) == code


@pytest.mark.parametrize("tag", ["xx", "x-klingon", "qqq", "und", "en--US", "k", "12", "../../x", "en-US-" + "a" * 40])
def test_malformed_or_undecodable_tags_are_unknown_language(tag):
    with pytest.raises(InvalidArgument) as err:
        validate_config(transcript_pb2.RecognitionConfig(language=tag), "base")
    assert err.value.reason == "UNKNOWN_LANGUAGE"
    assert err.value.field == "spec.config.language"


def test_the_config_keeps_the_callers_tag_and_english_models_check_the_language_subtag():
    checked = validate_config(transcript_pb2.RecognitionConfig(language="en-us", model="tiny.en"), "base")
    assert checked.language == "en-US"  # echoed in its canonical form
    with pytest.raises(InvalidArgument) as err:
        validate_config(transcript_pb2.RecognitionConfig(language="ko-KR", model="tiny.en"), "base")
    assert err.value.reason == "MODEL_LANGUAGE_MISMATCH"


def test_allowed_languages_are_canonical_deduplicated_and_bind_a_fixed_language():
    checked = validate_config(transcript_pb2.RecognitionConfig(allowed_languages=["ko-KR", "en", "EN"]), "base")
    assert list(checked.allowed_languages) == ["ko-KR", "en"]
    with pytest.raises(InvalidArgument) as err:
        validate_config(transcript_pb2.RecognitionConfig(language="de", allowed_languages=["ko", "en"]), "base")
    assert err.value.reason == "LANGUAGE_NOT_ALLOWED"
    with pytest.raises(InvalidArgument) as err:
        validate_config(transcript_pb2.RecognitionConfig(allowed_languages=["ko", "xx"]), "base")
    assert (err.value.reason, err.value.field) == ("UNKNOWN_LANGUAGE", "spec.config.allowed_languages[1]")
    with pytest.raises(InvalidArgument) as err:  # detection among ko/en is impossible on tiny.en
        validate_config(transcript_pb2.RecognitionConfig(model="tiny.en", allowed_languages=["ko", "en"]), "base")
    assert err.value.reason == "MODEL_LANGUAGE_MISMATCH"


@pytest.mark.parametrize("roles", [["agent", "agent"], ["agent", " "]])
def test_channel_roles_must_be_distinct_labels(roles):
    with pytest.raises(InvalidArgument) as err:
        validate_config(transcript_pb2.RecognitionConfig(channel_roles=roles), "base")
    assert err.value.reason == "INVALID_CHANNEL_ROLES"
