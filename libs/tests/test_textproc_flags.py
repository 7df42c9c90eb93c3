import pytest
from pydantic import BaseModel, ValidationError

from scribe_libs.textproc import FlagThresholds, TextSegment, process


def flags_of(**kwargs):
    segment = TextSegment(0, " text", **kwargs)
    return process([segment]).segments[0]


def test_confident_segment_has_no_flags():
    assert flags_of(avg_logprob=-0.2, no_speech_prob=0.1, compression_ratio=1.3).flags == ()


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"avg_logprob": -1.01}, "LOW_AVG_LOGPROB"),
        ({"no_speech_prob": 0.61}, "HIGH_NO_SPEECH"),
        ({"compression_ratio": 2.41}, "HIGH_COMPRESSION_RATIO"),
    ],
)
def test_each_segment_reason_at_whisper_defaults(kwargs, reason):
    assert flags_of(**kwargs).flags == (reason,)


def test_at_threshold_is_not_flagged():
    assert flags_of(avg_logprob=-1.0, no_speech_prob=0.6, compression_ratio=2.4).flags == ()


def test_word_flags_and_low_word_share():
    words = [(" a", 0, 1, 0.9), (" b", 1, 2, 0.3), (" c", 2, 3, 0.95), (" d", 3, 4, 0.9), (" e", 4, 5, 0.9)]
    segment = TextSegment(0, " a b c d e", words=words)
    one_low = process([segment]).segments[0]
    assert [w.flags for w in one_low.words] == [(), ("LOW_WORD_PROBABILITY",), (), (), ()]
    assert one_low.flags == ()  # 1 of 5 = 20 %, not above the 20 % share
    two_low = TextSegment(0, " a b c d e", words=[*words[:3], (" d", 3, 4, 0.2), words[4]])
    assert process([two_low]).segments[0].flags == ("LOW_WORD_PROBABILITY",)


def test_thresholds_are_configurable_and_nestable():
    strict = FlagThresholds(min_avg_logprob=-0.5, max_compression_ratio=2.0)
    segment = TextSegment(0, "x", avg_logprob=-0.7, compression_ratio=2.2)
    assert process([segment], thresholds=strict).segments[0].flags == ("LOW_AVG_LOGPROB", "HIGH_COMPRESSION_RATIO")

    class ServiceConfig(BaseModel):
        flags: FlagThresholds = FlagThresholds()

    assert ServiceConfig.model_validate({"flags": {"min_word_probability": 0.3}}).flags.min_word_probability == 0.3
    with pytest.raises(ValidationError):
        FlagThresholds(max_no_speech_prob=1.5)
    with pytest.raises(ValidationError):
        FlagThresholds(unknown=1)


def test_flag_summary_counts_reasons_segments_and_seconds():
    segments = [
        TextSegment(0, "a", avg_logprob=-2.0, no_speech_prob=0.9, start=0.0, end=2.5),
        TextSegment(1, "b", start=2.5, end=4.0),
        TextSegment(2, "c", avg_logprob=-1.5, words=[("c", 4.0, 5.0, 0.1)], start=4.0, end=5.0),
    ]
    summary = process(segments).flag_summary
    assert summary.segments == 3
    assert summary.flagged_segments == 2
    assert summary.flagged_seconds == 3.5
    assert (summary.words, summary.flagged_words) == (1, 1)
    assert summary.by_reason == {"HIGH_NO_SPEECH": 1, "LOW_AVG_LOGPROB": 2, "LOW_WORD_PROBABILITY": 1}
