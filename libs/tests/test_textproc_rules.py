import pytest

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc import CorrectionKind, NumberOptions, Rule, RuleKind, apply_rules

SPACING = Rule("spacing", RuleKind.HANGUL_LATIN_SPACING)
ACRONYMS = Rule("acronyms", RuleKind.ACRONYM_CASE, acronyms=("API", "GPU", "CPU", "IT"))
NUMBERS = Rule("numbers", RuleKind.NUMBER_NORMALIZATION, number_options=NumberOptions(strip_thousands_separators=True))


def run(text, *rules):
    return apply_rules(text, list(rules))[0]


def test_exact_rule_respects_latin_word_boundaries_and_records_span():
    rule = Rule("k8s", RuleKind.EXACT, pattern="k8s", replacement="Kubernetes")
    text, corrections = apply_rules("k8s에서 돌리고 k8ss 는 그대로", [rule])
    assert text == "Kubernetes에서 돌리고 k8ss 는 그대로"
    assert [(c.start, c.end, c.original, c.replacement, c.rule_id, c.kind) for c in corrections] == [
        (0, 3, "k8s", "Kubernetes", "rule:k8s", CorrectionKind.RULE)
    ]


def test_regex_rule_with_groups():
    rule = Rule("pct", RuleKind.REGEX, pattern=r"(\d+) ?퍼센트", replacement=r"\1%")
    assert run("매출이 12 퍼센트, 이익은 3퍼센트", rule) == "매출이 12%, 이익은 3%"


def test_order_matters_and_is_deterministic():
    long_first = Rule("a", RuleKind.EXACT, pattern="open ai", replacement="OpenAI")
    short = Rule("b", RuleKind.EXACT, pattern="ai", replacement="AI")
    text = "open ai 와 ai"
    assert run(text, long_first, short) == "OpenAI 와 AI"
    assert run(text, short, long_first) == "open AI 와 AI"
    assert all(run(text, long_first, short) == "OpenAI 와 AI" for _ in range(5))


def test_rewrites_are_not_rewritten_by_later_rules():
    first = Rule("a", RuleKind.EXACT, pattern="colour", replacement="color")
    second = Rule("b", RuleKind.EXACT, pattern="color", replacement="hue")
    text, corrections = apply_rules("colour and color", [first, second])
    assert text == "color and hue"
    assert [(c.original, c.rule_id) for c in corrections] == [("colour", "rule:a"), ("color", "rule:b")]


def test_acronym_case_with_plurals_but_not_inside_words():
    assert run("api 랑 Gpu, apis and cpus; rapid gpuX", ACRONYMS) == "API 랑 GPU, APIs and CPUs; rapid gpuX"
    # A two-letter acronym gets no plural: "its" is not "ITs".
    assert run("it and its", ACRONYMS) == "IT and its"


def test_hangul_latin_spacing_policy():
    assert run("이번vLLM 을 써보니 API 를 바꿨어요", SPACING) == "이번 vLLM을 써보니 API를 바꿨어요"
    # "이" after a Latin word may be "this": never joined. Digits are not Latin words.
    assert run("API 이 부분이랑 3분 뒤 v2 로", SPACING) == "API 이 부분이랑 3분 뒤 v2 로"


def test_spacing_offsets_point_into_raw_text():
    text, corrections = apply_rules("그API 를", [SPACING])
    assert text == "그 API를"
    assert [(c.start, c.end, c.original, c.replacement) for c in corrections] == [(1, 1, "", " "), (4, 5, " ", "")]


def test_number_normalization_is_opt_in_and_keeps_amounts():
    text = "번호는 4,111,111 이고 금액은 1,500원, $2,500, 3,000 dollars, 버전 1.2.3"
    assert run(text, Rule("off", RuleKind.NUMBER_NORMALIZATION)) == text
    assert run(text, NUMBERS) == "번호는 4111111 이고 금액은 1,500원, $2,500, 3,000 dollars, 버전 1.2.3"
    strip_all = Rule(
        "all", RuleKind.NUMBER_NORMALIZATION, number_options=NumberOptions(True, strip_currency_amounts=True)
    )
    assert run("1,500원", strip_all) == "1500원"


@pytest.mark.parametrize(
    "rule",
    [
        Rule("bad", RuleKind.REGEX, pattern="(unclosed", replacement="x"),
        Rule("bad", RuleKind.REGEX, pattern="a", replacement=r"\2"),
        Rule("bad", RuleKind.EXACT),
        Rule("bad", RuleKind.ACRONYM_CASE),
        Rule("bad", RuleKind.UNSPECIFIED),
        Rule("", RuleKind.HANGUL_LATIN_SPACING),
    ],
)
def test_bad_rules_are_invalid_argument(rule):
    with pytest.raises(InvalidArgument) as err:
        apply_rules("a", [rule])
    assert err.value.reason == "INVALID_RULE"


def test_duplicate_rule_ids_are_invalid():
    with pytest.raises(InvalidArgument):
        apply_rules("a", [SPACING, SPACING])
