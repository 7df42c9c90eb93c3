"""Transcript formats: what a user downloads for each format."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scribe.v1 import transcript_pb2
from scribe.v1.transcript_pb2 import Segment, Transcript, Word
from scribe_libs.errors import InvalidArgument
from scribe_libs.formats import (
    CONTENT_TYPES,
    FORMAT_NAMES,
    content_type,
    format_name,
    parse_format,
    render,
    srt_timestamp,
    transcript_from_json,
    transcript_to_json,
    vtt_timestamp,
)

JSON = transcript_pb2.TRANSCRIPT_FORMAT_JSON
TXT = transcript_pb2.TRANSCRIPT_FORMAT_TXT
SRT = transcript_pb2.TRANSCRIPT_FORMAT_SRT
VTT = transcript_pb2.TRANSCRIPT_FORMAT_VTT


def small_transcript() -> Transcript:
    return Transcript(
        job_id="job-1",
        language="ko",
        duration=7.5,
        segments=[
            Segment(id=0, start=0.0, end=2.5, text=" 안녕하세요, 회의를 시작하겠습니다.",
                    words=[Word(start=0.0, end=1.0, word=" 안녕하세요,", probability=0.5)]),
            Segment(id=1, start=2.5, end=2.9, text="   "),  # silence: no cue
            Segment(id=2, start=3.0, end=5.25, text=" Kubernetes <pod> & vLLM "),
            Segment(id=3, start=5.25, end=7.4996, text=" 감사합니다.", channel=1),
        ],
    )


# --- exact output -----------------------------------------------------------------------------


def test_txt() -> None:
    content, content_type = render(small_transcript(), TXT)
    assert content_type == "text/plain; charset=utf-8"
    assert content.decode("utf-8") == (
        "안녕하세요, 회의를 시작하겠습니다.\n"
        "Kubernetes <pod> & vLLM\n"
        "감사합니다.\n"
    )


def test_srt() -> None:
    content, content_type = render(small_transcript(), SRT)
    assert content_type == "application/x-subrip; charset=utf-8"
    assert content.decode("utf-8") == (
        "1\n"
        "00:00:00,000 --> 00:00:02,500\n"
        "안녕하세요, 회의를 시작하겠습니다.\n"
        "\n"
        "2\n"
        "00:00:03,000 --> 00:00:05,250\n"
        "Kubernetes <pod> & vLLM\n"
        "\n"
        "3\n"
        "00:00:05,250 --> 00:00:07,500\n"
        "감사합니다.\n"
        "\n"
    )


def test_vtt() -> None:
    content, content_type = render(small_transcript(), VTT)
    assert content_type == "text/vtt; charset=utf-8"
    assert content.decode("utf-8") == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\n"
        "안녕하세요, 회의를 시작하겠습니다.\n"
        "\n"
        "00:00:03.000 --> 00:00:05.250\n"
        "Kubernetes &lt;pod&gt; &amp; vLLM\n"
        "\n"
        "00:00:05.250 --> 00:00:07.500\n"
        "감사합니다.\n"
        "\n"
    )


def test_json() -> None:
    transcript = Transcript(
        job_id="job-1", language="ko", language_probability=0.5, duration=2.5, model="base",
        segments=[Segment(id=0, start=0.0, end=2.5, text=" 안녕",
                          words=[Word(start=0.0, end=2.5, word=" 안녕", probability=0.75)])],
    )
    content, content_type = render(transcript, JSON)
    assert content_type == "application/json; charset=utf-8"
    text = content.decode("utf-8")
    assert text.endswith("}\n") and '\n  "job_id": "job-1",\n' in text  # indent 2
    assert '"text": " 안녕"' in text  # Korean written as is, not \\u-escaped
    data = json.loads(text)
    # Every scalar and repeated field is present (defaults included), all in .proto order; an unset
    # message field (e.g. flag_summary) is left out.
    for obj, descriptor in ((data, Transcript.DESCRIPTOR), (data["segments"][0], Segment.DESCRIPTOR)):
        order = [f.name for f in descriptor.fields]
        assert list(obj) == [name for name in order if name in obj]
        assert {f.name for f in descriptor.fields if f.message_type is None} <= set(obj)
    assert {k: data[k] for k in ("job_id", "language", "language_probability", "duration", "model")} == {
        "job_id": "job-1", "language": "ko", "language_probability": 0.5, "duration": 2.5, "model": "base"}
    segment = data["segments"][0]
    assert (segment["id"], segment["start"], segment["end"], segment["text"]) == (0, 0.0, 2.5, " 안녕")
    assert segment["words"][0] | {} == {**segment["words"][0], "start": 0.0, "end": 2.5, "word": " 안녕",
                                        "probability": 0.75}


def test_empty_transcript() -> None:
    assert render(Transcript(), TXT)[0] == b""
    assert render(Transcript(), SRT)[0] == b""
    assert render(Transcript(), VTT)[0] == b"WEBVTT\n\n"


def test_multiline_segment_text_keeps_cues_intact() -> None:
    transcript = Transcript(segments=[Segment(start=1, end=2, text=" first line\n\n  second line \n")])
    assert render(transcript, TXT)[0] == b"first line second line\n"
    assert render(transcript, SRT)[0] == b"1\n00:00:01,000 --> 00:00:02,000\nfirst line\nsecond line\n\n"
    assert render(transcript, VTT)[0] == b"WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nfirst line\nsecond line\n\n"


def test_vtt_text_cannot_forge_a_timing_line() -> None:
    transcript = Transcript(segments=[Segment(start=1, end=2, text="a --> b")])
    assert b"a --&gt; b" in render(transcript, VTT)[0]


def test_end_before_start_is_clamped() -> None:
    transcript = Transcript(segments=[Segment(start=5, end=4, text="x")])
    assert b"00:00:05,000 --> 00:00:05,000" in render(transcript, SRT)[0]


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "srt"),
    [
        (0.0, "00:00:00,000"),
        (0.0004, "00:00:00,000"),
        (0.0005, "00:00:00,001"),  # half a millisecond rounds up
        (1.0005, "00:00:01,001"),  # ...also where the binary float is just below the half
        (2.675, "00:00:02,675"),
        (59.9994, "00:00:59,999"),
        (59.9995, "00:01:00,000"),  # carry into minutes, not "00:00:59,1000"
        (3599.9995, "01:00:00,000"),  # carry into hours
        (3661.5, "01:01:01,500"),
        (7322.25, "02:02:02,250"),
        (86399.9999, "24:00:00,000"),
        (90061.001, "25:01:01,001"),  # past 24 h
        (360000.0, "100:00:00,000"),  # hours grow past two digits
        (-0.2, "00:00:00,000"),  # before the start clamps to 0
    ],
)
def test_timestamps(seconds: float, srt: str) -> None:
    assert srt_timestamp(seconds) == srt
    assert vtt_timestamp(seconds) == srt.replace(",", ".")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_time_is_invalid(bad: float) -> None:
    with pytest.raises(InvalidArgument) as err:
        srt_timestamp(bad)
    assert err.value.reason == "INVALID_TRANSCRIPT"
    with pytest.raises(InvalidArgument):
        render(Transcript(segments=[Segment(start=0, end=bad, text="x")]), SRT)


@given(st.floats(min_value=0, max_value=10 * 86400, allow_nan=False))
def test_timestamp_fields_stay_in_range(seconds: float) -> None:
    match = re.fullmatch(r"(\d{2,}):(\d{2}):(\d{2}),(\d{3})", srt_timestamp(seconds))
    assert match is not None
    h, m, s, ms = (int(g) for g in match.groups())
    assert m < 60 and s < 60 and ms < 1000
    assert abs((h * 3600 + m * 60 + s + ms / 1000) - seconds) <= 0.0005 + 1e-9


# --- parse back what we wrote -----------------------------------------------------------------

_TIMING = re.compile(r"^(\d{2,}):(\d{2}):(\d{2})[,.](\d{3}) --> (\d{2,}):(\d{2}):(\d{2})[,.](\d{3})$")


def parse_cues(text: str, vtt: bool) -> list[tuple[float, float, str]]:
    """A tiny SRT/VTT reader: blocks separated by blank lines; (start, end, text) per cue."""
    blocks = text.split("\n\n")
    assert blocks[-1] == ""  # the file ends with a blank line after the last cue
    blocks = blocks[:-1]
    if vtt:
        assert blocks[0] == "WEBVTT"
        blocks = blocks[1:]
    cues = []
    for number, block in enumerate(blocks, start=1):
        lines = block.split("\n")
        if not vtt:
            assert lines.pop(0) == str(number)
        match = _TIMING.match(lines[0])
        assert match is not None, lines[0]
        g = [int(x) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        assert lines[1:], "cue without text"
        cues.append((start, end, "\n".join(lines[1:])))
    return cues


def long_meeting() -> Transcript:
    """Three hours of 6.9-second segments, with some silent ones."""
    segments = []
    t = 0.0
    for i in range(1600):
        text = "" if i % 7 == 3 else f" 발화 {i}"
        segments.append(Segment(id=i, start=t, end=t + 6.8996, text=text))
        t += 6.9
    return Transcript(segments=segments)


@pytest.mark.parametrize("fmt", [SRT, VTT])
def test_srt_vtt_parse_back(fmt: int) -> None:
    transcript = long_meeting()
    cues = parse_cues(render(transcript, fmt)[0].decode("utf-8"), vtt=fmt == VTT)

    spoken = [s for s in transcript.segments if s.text.strip()]
    assert len(cues) == len(spoken)
    assert cues[-1][0] > 3 * 3600  # hours > 1 render and read back
    for (start, end, text), segment in zip(cues, spoken, strict=True):
        assert text == segment.text.strip()
        assert abs(start - segment.start) <= 0.0005 + 1e-6
        assert abs(end - segment.end) <= 0.0005 + 1e-6
    starts = [c[0] for c in cues]
    assert starts == sorted(starts)
    assert all(start <= end for start, end, _ in cues)
    assert all(prev_end <= start for (_, prev_end, _), (start, _, _) in zip(cues, cues[1:], strict=False))


def _words(text: str, start: float, seconds_per_word: float) -> list:
    from scribe.v1.transcript_pb2 import Word

    return [Word(start=start + i * seconds_per_word, end=start + (i + 1) * seconds_per_word, word=f" {w}")
            for i, w in enumerate(text.split())]


@pytest.mark.parametrize("fmt", [SRT, VTT])
@pytest.mark.parametrize("with_words", [True, False])
def test_long_segments_become_bounded_cues(fmt: int, with_words: bool) -> None:
    # The case seen: 105 characters over 10.9 s in one cue.
    text = ("Kubernetes 클러스터에서 vLLM 서버를 띄우고 API 게이트웨이를 연결한 다음 "
            "부하 테스트를 진행했는데 응답 지연이 예상보다 길어서 배치 크기를 줄였습니다")
    segment = Segment(start=10.0, end=20.9, text=" " + text)
    if with_words:
        segment.words.extend(_words(text, 10.0, 10.9 / len(text.split())))
    cues = parse_cues(render(Transcript(segments=[segment]), fmt)[0].decode("utf-8"), vtt=fmt == VTT)
    assert len(cues) >= 2
    for start, end, cue_text in cues:
        lines = cue_text.split("\n")
        assert len(lines) <= 2 and all(len(line) <= 42 for line in lines), lines
        assert end - start <= 7.0 + 1e-9
    assert " ".join(c[2].replace("\n", " ") for c in cues) == text  # nothing lost or reordered
    assert cues[0][0] == 10.0 and cues[-1][1] == pytest.approx(20.9)
    assert all(a[1] <= b[0] for a, b in zip(cues, cues[1:], strict=False))


def test_a_word_longer_than_a_line_is_broken_and_a_long_word_is_shown_seven_seconds() -> None:
    word = "가" * 100
    cues = parse_cues(render(Transcript(segments=[Segment(start=0, end=30, text=word)]), SRT)[0].decode(), vtt=False)
    assert "".join(c[2].replace("\n", "") for c in cues) == word
    assert all(len(line) <= 42 for c in cues for line in c[2].split("\n"))
    assert all(end - start <= 7.0 + 1e-9 for start, end, _ in cues)


# --- JSON round trip --------------------------------------------------------------------------


def test_korean_round_trips_through_json() -> None:
    transcript = small_transcript()
    transcript.processing_seconds = 1.25
    transcript.device = "cpu"

    data = transcript_to_json(transcript)

    assert "회의를 시작하겠습니다" in data.decode("utf-8")  # readable, not \\uXXXX escapes
    assert "\\u" not in data.decode("utf-8")
    assert json.loads(data)["segments"][3]["channel"] == 1
    assert transcript_from_json(data) == transcript


def test_json_reader_accepts_camel_case_and_ignores_unknown_fields() -> None:
    data = b'{"jobId": "j", "segments": [{"start": 1.5, "text": "hi", "speaker": "A"}], "newField": 1}'
    transcript = transcript_from_json(data)
    assert transcript.job_id == "j"
    assert (transcript.segments[0].start, transcript.segments[0].text) == (1.5, "hi")


@pytest.mark.parametrize(
    "data", [b"", b"not json", b"[]", b'{"segments": "nope"}', b'{"duration": "long"}', b"\xff\xfe{}"]
)
def test_bad_json_is_invalid_transcript(data: bytes) -> None:
    with pytest.raises(InvalidArgument) as err:
        transcript_from_json(data)
    assert err.value.reason == "INVALID_TRANSCRIPT"


# --- format names -----------------------------------------------------------------------------


def test_format_names() -> None:
    assert FORMAT_NAMES == {"json": JSON, "txt": TXT, "srt": SRT, "vtt": VTT}
    assert parse_format("SRT") == SRT
    assert parse_format(" vtt ") == VTT
    assert [format_name(f) for f in (JSON, TXT, SRT, VTT)] == ["json", "txt", "srt", "vtt"]


def test_the_one_format_table_gives_every_text_type_a_utf8_charset() -> None:
    # What postprocess stores each object with and what GetTranscript serves (the one table).
    assert CONTENT_TYPES == {
        JSON: "application/json; charset=utf-8",
        TXT: "text/plain; charset=utf-8",
        SRT: "application/x-subrip; charset=utf-8",
        VTT: "text/vtt; charset=utf-8",
    }
    for name, fmt in FORMAT_NAMES.items():
        assert content_type(fmt) == CONTENT_TYPES[fmt] == render(small_transcript(), fmt)[1]
        assert format_name(fmt) == name
    assert list(FORMAT_NAMES) == ["json", "txt", "srt", "vtt"]  # the order outputs are written in


@pytest.mark.parametrize("fmt", [transcript_pb2.TRANSCRIPT_FORMAT_UNSPECIFIED, 99])
def test_unknown_format_has_no_name_or_content_type(fmt: int) -> None:
    for lookup in (format_name, content_type):
        with pytest.raises(InvalidArgument) as err:
            lookup(fmt)
        assert (err.value.reason, err.value.field) == ("UNKNOWN_FORMAT", "format")


@pytest.mark.parametrize("name", ["", "docx", "TRANSCRIPT_FORMAT_SRT", "s rt"])
def test_unknown_format_name(name: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_format(name)
    assert (err.value.reason, err.value.field) == ("UNKNOWN_FORMAT", "format")


@pytest.mark.parametrize("fmt", [transcript_pb2.TRANSCRIPT_FORMAT_UNSPECIFIED, 99])
def test_render_unknown_format(fmt: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        render(small_transcript(), fmt)
    assert (err.value.reason, err.value.field) == ("UNKNOWN_FORMAT", "format")


def test_a_segment_with_a_role_is_labelled_in_every_format() -> None:
    transcript = Transcript(segments=[
        Segment(start=0, end=2, text=" Thank you for calling.", role="agent", channel=0),
        Segment(start=2.5, end=4, text=" My card was charged twice.", role="customer", channel=1),
        Segment(start=5, end=6, text=" no role here"),
    ])
    assert render(transcript, TXT)[0].decode() == (
        "agent: Thank you for calling.\ncustomer: My card was charged twice.\nno role here\n")
    srt = parse_cues(render(transcript, SRT)[0].decode(), vtt=False)
    assert [c[2] for c in srt] == ["agent: Thank you for calling.", "customer: My card was charged twice.",
                                   "no role here"]
    vtt = parse_cues(render(transcript, VTT)[0].decode(), vtt=True)
    assert vtt[0][2] == "<v agent>Thank you for calling.</v>" and vtt[2][2] == "no role here"


def test_every_cue_of_a_long_labelled_segment_carries_the_role_within_the_line_limit() -> None:
    text = " ".join(["word"] * 60)
    transcript = Transcript(segments=[Segment(start=0, end=20, text=text, role="customer")])
    cues = parse_cues(render(transcript, SRT)[0].decode(), vtt=False)
    assert len(cues) >= 3
    for _, _, cue in cues:
        lines = cue.split("\n")
        assert lines[0].startswith("customer: ") and all(len(line) <= 42 for line in lines)
