"""The hallucination guard on crafted segments: drop vs flag by the signals, Korean and English."""

from __future__ import annotations

import unicodedata

import pytest

from scribe_libs.textproc import CorrectionKind, TextPipeline, TextSegment
from scribe_libs.textproc.hallucination import (
    PHRASES,
    HallucinationGuard,
    HallucinationSettings,
    phrase_key,
)

GUARD = HallucinationGuard()
SILENT = {"no_speech_prob": 0.93, "avg_logprob": -0.7}  # what tiny.en gave its " You" on silence
SPEECH = {"no_speech_prob": 0.05, "avg_logprob": -0.3}


def run(*segments: TextSegment, redact: bool = False, guard: HallucinationGuard | None = GUARD):
    return TextPipeline(redact=redact, hallucination=guard).process(segments)


@pytest.mark.parametrize(
    ("text", "phrase_id"),
    [
        (" Thank you for watching!", "thank-you-for-watching"),
        (" Thanks for watching! Thanks for watching!", "thank-you-for-watching"),
        (" THANK YOU SO MUCH FOR WATCHING.", "thank-you-for-watching"),
        (" Please subscribe.", "please-subscribe"),
        (" Subtitles by the Amara.org community", "subtitles-by"),
        (" Thank you.", "thank-you"),
        (" You", "you"),
        (" 시청해 주셔서 감사합니다.", "ko-thanks-for-watching"),
        ("시청해주셔서 감사합니다!", "ko-thanks-for-watching"),
        (" 끝까지 시청해 주셔서 감사합니다", "ko-thanks-for-watching"),
        (" 구독과 좋아요 부탁드립니다.", "ko-subscribe-like"),
        (" 구독과 좋아요", "ko-subscribe-like"),
        (" MBC 뉴스 이덕영입니다.", "ko-news-signoff"),
        (" KBS 뉴스 김철수 기자입니다", "ko-news-signoff"),
        (" 한글 자막 by 한효정", "ko-subtitle-credit"),
        (" 자막 제공", "ko-subtitle-credit"),
        (" 다음 영상에서 만나요!", "ko-next-video"),
        (" .", "no-text"),
        (" ♪", "no-text"),
    ],
)
def test_known_phrases_match_after_normalisation(text, phrase_id):
    assert GUARD.match(text) == phrase_id
    # NFD input (conjoining jamo, as macOS file names give) and fullwidth Latin match alike.
    assert GUARD.match(unicodedata.normalize("NFD", text)) == phrase_id


@pytest.mark.parametrize(
    "text",
    [
        " Thank you for watching the deployment logs with me, now let's open the Kubernetes dashboard.",
        " 오늘 회의는 여기까지고요, 시청해 주셔서 감사합니다 라는 말은 유튜브에서나 하는 말이죠.",
        " 어제 MBC 뉴스 보셨어요? 배포 일정이 나왔더라고요.",
        " 넷플릭스 자막 제공 여부는 설정 화면에서 계정마다 바꾸실 수 있어요.",
        " I want to unsubscribe from the newsletter.",
        " 네 감사합니다.",
        " Youtube",
        "",
    ],
)
def test_a_phrase_inside_a_longer_real_sentence_is_left_alone(text):
    assert GUARD.match(text) is None
    result = run(TextSegment(0, text, **SILENT))
    assert [s.text for s in result.segments] == [text] and not result.dropped
    assert "POSSIBLE_HALLUCINATION" not in result.segments[0].flags


def test_phrase_keys_ignore_case_punctuation_spacing_and_width():
    assert phrase_key(" Thanks for WATCHING!! ") == "thanksforwatching"
    assert phrase_key("ＭＢＣ 뉴스") == phrase_key("MBC뉴스") == "mbc뉴스"
    nfd = unicodedata.normalize("NFD", "시청해 주셔서")
    assert nfd != "시청해 주셔서" and phrase_key(nfd) == "시청해주셔서"
    assert len({p.id for p in PHRASES}) == len(PHRASES)


def test_no_speech_signals_drop_the_segment_and_the_drop_is_recorded():
    result = run(
        TextSegment(0, " We deploy on Kubernetes.", start=0.0, end=2.0, **SPEECH),
        TextSegment(1, " Thank you for watching!", start=8.6, end=10.0, no_speech_prob=0.94, avg_logprob=-0.5),
        TextSegment(2, " 시청해 주셔서 감사합니다.", start=10.0, end=12.0, no_speech_prob=0.1, avg_logprob=-1.4),
    )
    assert [s.id for s in result.segments] == [0]
    assert result.dropped == (1, 2)
    drops = [c for c in result.corrections if c.rule_id.startswith("hallucination:")]
    assert [(c.segment_id, c.start, c.end, c.original, c.replacement, c.rule_id, c.kind) for c in drops] == [
        (1, 0, 24, " Thank you for watching!", "", "hallucination:thank-you-for-watching", CorrectionKind.RULE),
        (2, 0, 15, " 시청해 주셔서 감사합니다.", "", "hallucination:ko-thanks-for-watching", CorrectionKind.RULE),
    ]
    assert drops[0].detail == {"reason": "no_speech_prob 0.94 > 0.6"}
    assert drops[1].detail == {"reason": "avg_logprob -1.40 < -1"}
    assert result.flag_summary.segments == 1


def test_confident_segments_are_kept_and_flagged():
    result = run(
        TextSegment(0, " Thank you.", **SPEECH),
        TextSegment(1, " 구독과 좋아요 부탁드립니다", no_speech_prob=0.5, avg_logprob=-0.9),
    )
    assert [s.text for s in result.segments] == [" Thank you.", " 구독과 좋아요 부탁드립니다"]
    assert [s.flags for s in result.segments] == [("POSSIBLE_HALLUCINATION",), ("POSSIBLE_HALLUCINATION",)]
    assert not result.dropped and not result.corrections
    assert result.flag_summary.by_reason == {"POSSIBLE_HALLUCINATION": 2}


def test_the_flag_follows_the_score_flags():
    # Low word probabilities but speech-like no_speech/logprob: kept, both reasons, score flag first.
    segment = TextSegment(
        0,
        " Thanks for watching",
        words=[(" Thanks", 0, 1, 0.2), (" for", 1, 2, 0.3), (" watching", 2, 3, 0.9)],
        **SPEECH,
    )
    (processed,) = run(segment).segments
    assert processed.flags == ("LOW_WORD_PROBABILITY", "POSSIBLE_HALLUCINATION")


def test_thresholds_are_settings_and_the_guard_can_be_off():
    strict = HallucinationGuard(HallucinationSettings(drop_no_speech_prob=0.95, drop_avg_logprob=-2.0))
    assert run(TextSegment(0, " Thank you.", **SILENT), guard=strict).segments[0].flags == (
        "HIGH_NO_SPEECH",
        "POSSIBLE_HALLUCINATION",
    )
    off = HallucinationGuard(HallucinationSettings(enabled=False))
    result = run(TextSegment(0, " Thank you.", **SILENT), guard=off)
    assert result.segments[0].flags == ("HIGH_NO_SPEECH",) and not result.dropped
    # No guard at all (the transcriber's redaction pass, the stream gateway): nothing is dropped.
    assert not run(TextSegment(0, " Thank you.", **SILENT), guard=None).dropped


def test_a_dropped_segment_of_a_redacted_job_records_only_redacted_text():
    result = run(TextSegment(0, " 자막 제공 010-1234-5678", **SILENT), redact=True)
    # The credit with a phone number in it: redacted before the record, so no digits survive.
    for c in result.corrections:
        assert "1234" not in c.original
    if result.dropped:
        (record,) = [c for c in result.corrections if c.rule_id.startswith("hallucination:")]
        assert "[PHONE]" in record.original
