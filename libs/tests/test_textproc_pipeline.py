import subprocess
import sys
from pathlib import Path

import pytest

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc import (
    CorrectionKind,
    Glossary,
    GlossaryTerm,
    NumberOptions,
    Rule,
    RuleKind,
    TextPipeline,
    TextSegment,
    glossary_from_proto,
    glossary_to_proto,
    process,
    redact_text,
    validate_glossary,
)

ROOT = Path(__file__).resolve().parents[2]
ML = Glossary(
    id="ml",
    terms=(GlossaryTerm("vLLM", ("브이엘엘엠",)), GlossaryTerm("Kubernetes", ("쿠버네티스",))),
    rules=(Rule("spacing", RuleKind.HANGUL_LATIN_SPACING),),
)

WORDS = [
    (" 쿠버네티스에서", 0.0, 0.8, 0.9),
    (" 브이엘엘엠", 0.8, 1.3, 0.4),
    (" 을", 1.3, 1.4, 0.9),
    (" 띄웠고", 1.4, 1.9, 0.9),
    (" 제", 1.9, 2.0, 0.9),
    (" 번호는", 2.0, 2.4, 0.9),
    (" 010-", 2.4, 2.9, 0.8),
    ("1234-", 2.9, 3.3, 0.8),
    ("5678", 3.3, 3.7, 0.8),
    (" 이에요", 3.7, 4.0, 0.9),
]
SEGMENT = TextSegment(4, "".join(w[0] for w in WORDS), words=WORDS, start=0.0, end=4.0)


def test_glossary_then_rules_then_redaction_on_text_and_words():
    result = process([SEGMENT], [ML], redact=True)
    seg = result.segments[0]
    assert seg.text == " Kubernetes에서 vLLM을 띄웠고 제 번호는 [PHONE] 이에요"
    assert "".join(w.word for w in seg.words) == seg.text
    assert [w.word for w in seg.words][:3] == [" Kubernetes에서", " vLLM", "을"]
    assert [w.start for w in seg.words] == [w[1] for w in WORDS]
    assert result.redacted


def test_redacted_digits_appear_nowhere():
    result = process([SEGMENT], [ML], redact=True)
    seg = result.segments[0]
    dump = repr(result)
    for clear in ("1234", "5678", "010-"):
        assert clear not in dump
    assert seg.raw_text == " 쿠버네티스에서 브이엘엘엠 을 띄웠고 제 번호는 [PHONE] 이에요"


def test_correction_offsets_point_into_raw_text():
    result = process([SEGMENT], [ML], redact=True)
    raw = result.segments[0].raw_text
    kinds = [c.kind for c in result.corrections]
    assert kinds == [CorrectionKind.REDACTION, CorrectionKind.GLOSSARY, CorrectionKind.GLOSSARY, CorrectionKind.RULE]
    for c in result.corrections:
        assert c.segment_id == 4
        if c.kind is CorrectionKind.REDACTION:
            assert raw[c.start : c.end] == c.replacement and c.original == ""
        else:
            assert raw[c.start : c.end] == c.original


def test_without_redaction_raw_text_is_the_decoded_text():
    result = process([SEGMENT], [ML])
    seg = result.segments[0]
    assert seg.raw_text == SEGMENT.text
    assert "010-1234-5678" in seg.text and not result.redacted


def test_redaction_catches_numbers_a_rule_reassembled():
    # A rule joins spoken digit groups after the raw text was checked; the final pass catches it.
    join = Rule("join", RuleKind.REGEX, pattern=r"(\d{3}) 다시 (\d{4}) 다시 (\d{4})", replacement=r"\1-\2-\3")
    result = process([TextSegment(0, "번호 010 다시 1234 다시 5678 요")], rules=[join], redact=True)
    assert result.segments[0].text == "번호 [PHONE] 요"
    assert [c.kind for c in result.corrections] == [CorrectionKind.REDACTION]
    assert "1234" not in repr(result)
    assert result.segments[0].raw_text == "번호 [PHONE] 요"
    assert (result.corrections[0].start, result.corrections[0].end) == (3, 10)


def test_late_redaction_moves_other_offsets_in_raw_text():
    join = Rule("join", RuleKind.REGEX, pattern=r"(\d{3}) 다시 (\d{4}) 다시 (\d{4})", replacement=r"\1-\2-\3")
    text = "쿠버네티스 번호 010 다시 1234 다시 5678 브이엘엘엠"
    result = process([TextSegment(0, text)], [ML], rules=[join], redact=True)
    seg = result.segments[0]
    assert seg.text == "Kubernetes 번호 [PHONE] vLLM"
    assert seg.raw_text == "쿠버네티스 번호 [PHONE] 브이엘엘엠"
    spans = {c.replacement: seg.raw_text[c.start : c.end] for c in result.corrections}
    assert spans == {"Kubernetes": "쿠버네티스", "vLLM": "브이엘엘엠", "[PHONE]": "[PHONE]"}


def test_thousands_separator_rule_then_card_redaction():
    rule = Rule("num", RuleKind.NUMBER_NORMALIZATION, number_options=NumberOptions(True))
    result = process([TextSegment(0, "카드 4,111,111,111,111,111,111 이요 그리고 1,500원")], rules=[rule], redact=True)
    assert result.segments[0].text == "카드 [CARD] 이요 그리고 1,500원"


def test_unaligned_words_are_redacted_one_by_one():
    segment = TextSegment(0, " 번호는 010-1234-5678", words=[(" 번호가", 0, 1, 0.9), (" 010-1234-5678", 1, 2, 0.9)])
    words = process([segment], redact=True).segments[0].words
    assert [w.word for w in words] == [" 번호가", " [PHONE]"]


def test_pipeline_is_reusable_and_validates_upfront():
    pipeline = TextPipeline([ML])
    assert pipeline.process([TextSegment(0, "쿠버네티스")]).segments[0].text == "Kubernetes"
    assert pipeline.process([TextSegment(1, "브이엘엘엠")]).segments[0].text == "vLLM"
    with pytest.raises(InvalidArgument):
        TextPipeline(rules=[Rule("r", RuleKind.REGEX, pattern="(")])


def test_proto_round_trip_and_validation():
    pytest.importorskip("scribe.v1.glossary_pb2")
    from datetime import UTC, datetime

    glossary = Glossary(
        id="ml",
        version=3,
        description="ML infra",
        terms=(GlossaryTerm("vLLM", ("브이엘엘엠", "v l l m")), GlossaryTerm("Go", (), True)),
        rules=(
            Rule("acr", RuleKind.ACRONYM_CASE, acronyms=("API",)),
            Rule("num", RuleKind.NUMBER_NORMALIZATION, number_options=NumberOptions(True, False)),
        ),
    )
    when = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    message = glossary_to_proto(glossary, update_time=when)
    assert message.rules[0].kind == 3 and message.update_time.seconds == int(when.timestamp())
    assert glossary_from_proto(message) == glossary
    validate_glossary(glossary)
    with pytest.raises(InvalidArgument):
        validate_glossary(Glossary(id=" "))


def test_entity_retention_tool_meets_targets():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "entity_retention.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "false edits: 0 of" in proc.stdout
    assert "entity retention:" in proc.stdout


def test_entity_retention_tool_fails_when_targets_missed(tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"id": 1, "category": "none", "text": "vllm", "expected": "vllm", "note": ""}\n', encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "entity_retention.py"), "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "false edits: 1 of 1" in proc.stdout


ALPHABET = [
    *"쿠버네티스브이엘을에서 vlLMapi0123456789-,.@",
    *["쿠버네티스", "브이엘엘엠", "도커", "api", "Api", "v l l m", " 을", "010", "1234", "5678", "010-1234-5678"],
    *["4,111,111,111,111,111,111", "1,500", "원", "카드", "전화", " ", "  ", "a@b.com"],
]
ALL_RULES = [
    Rule("acr", RuleKind.ACRONYM_CASE, acronyms=("API",)),
    Rule("num", RuleKind.NUMBER_NORMALIZATION, number_options=NumberOptions(True)),
    Rule("sp", RuleKind.HANGUL_LATIN_SPACING),
]


def test_invariants_on_arbitrary_text():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    glossary = Glossary(id="g", terms=(*ML.terms, GlossaryTerm("Docker", ("도커",)), GlossaryTerm("API", ())))
    pipeline = TextPipeline([glossary], ALL_RULES, redact=True)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(ALPHABET), max_size=30), st.integers(1, 6))
    def check(pieces, cut):
        words = ["".join(pieces[i : i + cut]) for i in range(0, len(pieces), cut)]
        segment = TextSegment(0, "".join(words), words=[(w, 0.0, 0.0, 0.9) for w in words])
        seg = pipeline.process([segment]).segments[0]
        assert "".join(w.word for w in seg.words) == seg.text
        result = pipeline.process([segment])
        for c in result.corrections:
            assert 0 <= c.start <= c.end <= len(seg.raw_text)
            if c.kind is CorrectionKind.REDACTION:
                assert seg.raw_text[c.start : c.end] == c.replacement
            else:
                assert seg.raw_text[c.start : c.end] == c.original
        # Nothing redactable is left in either text.
        assert redact_text(seg.text)[0] == seg.text
        assert redact_text(seg.raw_text)[0] == seg.raw_text
        # Processing is deterministic.
        assert pipeline.process([segment]) == result

    check()
