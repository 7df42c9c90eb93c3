"""Transcript-level helpers added for the postprocess service: glued terms, raw redaction."""

from __future__ import annotations

from scribe.v1 import transcript_pb2 as t
from scribe_libs.textproc import Glossary, GlossaryTerm, correct_text, redact_text, redact_transcript

ML = Glossary("ml", (GlossaryTerm("vLLM", ("V-N-R-M",)), GlossaryTerm("Kubernetes")))


def test_two_terms_glued_by_a_biased_decoder_are_split():
    # tiny.en with both terms in its prompt wrote this for "...on Kubernetes with vLLM."
    text, corrections = correct_text("We deploy the model on KubernetesvLLM.", [ML])
    assert text == "We deploy the model on Kubernetes vLLM."
    assert [(c.original, c.replacement) for c in corrections] == [("KubernetesvLLM", "Kubernetes vLLM")]
    # Only a whole word that is exactly term + term.
    for untouched in ("Kubernetesx rocks", "the kubevllm tool", "KubernetesvLLMx"):
        assert correct_text(untouched, [ML]) == (untouched, [])


def test_six_spoken_digits_after_a_phone_cue_are_redacted():
    # tiny.en's rendering of "five five five, one two three four" (one digit dropped).
    assert redact_text("Call me Mac at 5 5 1 2 3 4 before noon tomorrow")[0] == (
        "Call me Mac at [PHONE] before noon tomorrow"
    )
    assert redact_text("We met in 2024 and ordered 123456 units")[0] == "We met in 2024 and ordered 123456 units"


def test_redact_transcript_redacts_text_and_words_and_records_placeholders():
    words = [" Call", " me", " at", " 010", "-1234", "-5678", " today."]
    segment = t.Segment(id=0, text="".join(words), words=[t.Word(word=w) for w in words])
    raw = t.Transcript(job_id="j", segments=[segment])
    out = redact_transcript(raw)
    assert out.redacted and out.segments[0].text == " Call me at [PHONE] today."
    assert "".join(w.word for w in out.segments[0].words) == out.segments[0].text
    assert [(c.replacement, c.original, c.kind) for c in out.corrections] == [
        ("[PHONE]", "", t.CORRECTION_KIND_REDACTION)
    ]
    assert "1234" not in str(out)
    assert raw.segments[0].text.endswith("-5678 today.")  # the input is not modified
