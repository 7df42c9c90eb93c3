"""Pure parts of scribe_libs.glossaries: references, validation limits, decoding bias."""

from __future__ import annotations

import pytest

from scribe.v1 import glossary_pb2, transcript_pb2
from scribe_libs.errors import InvalidArgument
from scribe_libs.glossaries import MAX_PATTERN_CHARS, biased, parse_ref, validate_message
from scribe_libs.textproc import MAX_PROMPT_BYTES, Glossary, GlossaryTerm

ML = Glossary("ml", (GlossaryTerm("vLLM", ("브이엘엘엠",)), GlossaryTerm("Kubernetes", ("쿠버네티스",))))


def test_references():
    assert parse_ref("ml-infra") == ("ml-infra", 0)
    assert parse_ref(" ml_infra@12 ") == ("ml_infra", 12)
    for bad in ("", "a b", "-x", "x@0", "x@v2", "x" * 65):
        with pytest.raises(InvalidArgument) as caught:
            parse_ref(bad)
        assert caught.value.reason == "INVALID_GLOSSARY"


def test_bias_keeps_caller_terms_first_and_puts_the_glossary_prompt_last():
    config = transcript_pb2.RecognitionConfig(hotwords=["Triton"], initial_prompt="A call about serving.")
    out = biased(config, [ML])
    assert list(out.hotwords) == ["Triton", "vLLM", "Kubernetes"]
    assert out.initial_prompt == "A call about serving. vLLM, Kubernetes."
    assert "브이엘엘엠" not in out.initial_prompt  # aliases are what we do not want decoded
    assert biased(transcript_pb2.RecognitionConfig(), [ML]).initial_prompt == "vLLM, Kubernetes."
    assert biased(config, []) == config


def test_bias_stays_within_the_prompt_budget():
    many = Glossary("big", tuple(GlossaryTerm(f"Term{i:03d}") for i in range(200)))
    out = biased(transcript_pb2.RecognitionConfig(), [many])
    assert len(" ".join(out.hotwords).encode()) <= MAX_PROMPT_BYTES
    assert len(out.initial_prompt.encode()) <= MAX_PROMPT_BYTES
    assert out.hotwords[0] == "Term000"


def test_validation_limits():
    ok = glossary_pb2.Glossary(id="g", terms=[glossary_pb2.GlossaryTerm(term="vLLM")])
    validate_message(ok)
    rule = glossary_pb2.Rule(id="r", kind=glossary_pb2.RULE_KIND_REGEX, pattern="a" * (MAX_PATTERN_CHARS + 1))
    long_regex = glossary_pb2.Glossary(id="g", rules=[rule])
    with pytest.raises(InvalidArgument) as caught:
        validate_message(long_regex)
    assert caught.value.reason == "INVALID_RULE"
    with pytest.raises(InvalidArgument) as caught:
        validate_message(glossary_pb2.Glossary(id="g", terms=[glossary_pb2.GlossaryTerm(term="x" * 101)]))
    assert caught.value.reason == "INVALID_GLOSSARY"
