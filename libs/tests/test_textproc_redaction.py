import pytest

from scribe_libs.textproc import CorrectionKind, luhn_valid, redact_text


def red(text):
    return redact_text(text)[0]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("제 번호는 010-1234-5678 이에요", "제 번호는 [PHONE] 이에요"),
        ("01012345678 로 주세요", "[PHONE] 로 주세요"),
        ("사무실은 02-123-4567, 집은 031 123 4567", "사무실은 [PHONE], 집은 [PHONE]"),
        ("+82 10 1234 5678 로 연락 주세요", "[PHONE] 로 연락 주세요"),
        ("고객센터 1588-1234", "고객센터 [PHONE]"),
        ("call +1 415 555 0132 or (415) 555-0132", "call [PHONE] or [PHONE]"),
        ("call me at 4550132 tomorrow", "call me at [PHONE] tomorrow"),
        ("연락처는 4550132 예요", "연락처는 [PHONE] 예요"),
        ("2024 010 1234 5678", "2024 [PHONE]"),
        ("카드 번호는 4,111,111,111,111,111,111 이에요", "카드 번호는 [CARD] 이에요"),
        ("card 4111 1111 1111 1111 expires", "card [CARD] expires"),
        ("number 4111-1111-1111-1111", "number [CARD]"),
        ("amex 3782 822463 10005", "amex [CARD]"),
        ("카드 41 11 11 11 11 11 11 11 이요", "카드 [CARD] 이요"),
        ("주민번호는 900101-1234567 입니다", "주민번호는 [RRN] 입니다"),
        ("9001011234567", "[RRN]"),
        ("메일은 john.doe+x@example.co.kr 로", "메일은 [EMAIL] 로"),
        ("write to john at example dot com", "write to [EMAIL]"),
        ("hong 골뱅이 naver 닷컴 으로 보내 주세요", "[EMAIL] 으로 보내 주세요"),
        # digits spoken one at a time, as a live final wrote them (CI, tests/integration/test_streaming_capacity)
        ("Call me, Mac at 5 .5, 1, 2, 3, 4 before noon", "Call me, Mac at [PHONE] before noon"),
        ("0, 1, 0, 1, 2, 3, 4, 5, 6, 7, 8 로 주세요", "[PHONE] 로 주세요"),
        ("call me at 555, 1234 tomorrow", "call me at [PHONE] tomorrow"),
        ("카드 4111, 1111, 1111, 1111 이요", "카드 [CARD] 이요"),
    ],
)
def test_true_positives(raw, want):
    assert red(raw) == want


@pytest.mark.parametrize(
    "text",
    [
        "2024년에 시작했어요",
        "in 1999 and 2000",
        "회의는 10:30 에, 끝나는 건 3시 15분",
        "order 58213 shipped",
        "주문번호 58213 이요",
        "version v1.2.3 and 1.2.3",
        "1,500원 이고 1,500,000원, $1,500, 2,000 dollars",
        "₩4,111,111,111,111,111 결제",
        "2024-03-15 또는 2024.03.15",
        "A100 H100 GPU 8장",
        "rooms 101 102 103 104 105",
        "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13",
        "매출이 12% 올랐고 3.14159 는 파이",
        "제 번호 끝자리는 4567 이에요",
        "1, 2, 3, 4, 5, 6, 7, 8, 9",
        "in 2024, 2025, 2026, 2027 and 2028",
        "1000, 2000, 3000, 4000",
        "It was 5. 5 people came",
    ],
)
def test_must_not_redact(text):
    assert red(text) == text


def test_corrections_never_keep_clear_text_and_carry_luhn():
    text, corrections = redact_text("card 4111 1111 1111 1111 and 4111 1111 1111 1112", segment_id=3)
    assert text == "card [CARD] and [CARD]"
    assert [c.original for c in corrections] == ["", ""]
    assert [c.detail["luhn"] for c in corrections] == ["valid", "invalid"]
    assert all(c.kind is CorrectionKind.REDACTION and c.rule_id == "redaction:card" for c in corrections)
    assert (corrections[0].start, corrections[0].end) == (5, 24)


def test_whisper_comma_card_is_redacted_even_when_luhn_fails():
    _, corrections = redact_text("4,111,111,111,111,111,111")
    assert corrections[0].replacement == "[CARD]" and corrections[0].detail["luhn"] == "invalid"


def test_luhn():
    assert luhn_valid("4111111111111111")
    assert luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112")
