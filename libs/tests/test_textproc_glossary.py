import pytest

from scribe_libs.errors import InvalidArgument
from scribe_libs.textproc import (
    MAX_PROMPT_BYTES,
    CorrectionKind,
    Glossary,
    GlossaryTerm,
    Rule,
    RuleKind,
    TextSegment,
    bias_terms,
    correct_text,
    process,
)

ML = Glossary(
    id="ml",
    terms=(
        GlossaryTerm("vLLM", ("브이엘엘엠",)),
        GlossaryTerm("LLM", ("엘엘엠",)),
        GlossaryTerm("Kubernetes", ("쿠버네티스",)),
        GlossaryTerm("API", ("에이피아이",)),
        GlossaryTerm("FastAPI", ("패스트에이피아이",)),
        GlossaryTerm("Docker", ("도커",)),
        GlossaryTerm("TensorRT", ("텐서알티",)),
        GlossaryTerm("Hugging Face", ("허깅페이스",)),
        GlossaryTerm("Go", (), case_sensitive=True),
    ),
)


def fix(text: str) -> str:
    return correct_text(text, [ML])[0]


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("쿠버네티스에서 브이엘엘엠을 띄웠어요", "Kubernetes에서 vLLM을 띄웠어요"),
        ("그 에이피아이 서빙할 때 브이엘엘엠 쓰면 성능 대박이야", "그 API 서빙할 때 vLLM 쓰면 성능 대박이야"),
        ("도커라서 편해요", "Docker라서 편해요"),
        ("쿠버네티스클러스터", "Kubernetes클러스터"),
        ("vllm 이랑 VLLM 이랑 Vllm", "vLLM 이랑 vLLM 이랑 vLLM"),
        ("v l l m and V-L-L-M and v.l.l.m", "vLLM and vLLM and vLLM"),
        ("Kuber netes and tensor rt", "Kubernetes and TensorRT"),
        ("쿠버 네티스랑 에이 피 아이", "Kubernetes랑 API"),
        ("huggingface 와 Hugging-Face", "Hugging Face 와 Hugging Face"),
        ("Go 언어로 짰고 go 하자", "Go 언어로 짰고 go 하자"),
    ],
)
def test_terms_are_restored_with_particles_and_variants(raw, want):
    assert fix(raw) == want


@pytest.mark.parametrize(
    "text",
    [
        "The rapid growth surprised us",
        "api.example.com 으로 보내세요",
        "mail me@api please",
        "nvidia-smi 와 docker-compose",
        "크기도 커요",
        "레디 스테디 고",
        "apis and rapids",
        "Kubernetes 는 이미 맞아요",
    ],
)
def test_no_match_inside_words_addresses_or_across_words(text):
    assert fix(text) == text


def test_longest_match_wins_over_contained_term():
    assert fix("브이엘엘엠 그리고 엘엘엠") == "vLLM 그리고 LLM"
    assert fix("패스트에이피아이 와 에이피아이") == "FastAPI 와 API"
    assert fix("fast api") == "FastAPI"


def test_corrections_record_original_spans_and_rule_ids():
    text = "그 에이피아이로 브이엘엘엠을 써"
    fixed, corrections = correct_text(text, [ML], segment_id=7)
    assert fixed == "그 API로 vLLM을 써"
    assert [(c.start, c.end, c.original, c.replacement, c.rule_id) for c in corrections] == [
        (2, 7, "에이피아이", "API", "glossary:ml:API"),
        (9, 14, "브이엘엘엠", "vLLM", "glossary:ml:vLLM"),
    ]
    assert all(c.segment_id == 7 and c.kind is CorrectionKind.GLOSSARY for c in corrections)
    for c in corrections:
        assert text[c.start : c.end] == c.original


def test_unchanged_terms_record_nothing():
    assert correct_text("vLLM 과 Kubernetes", [ML])[1] == []


def test_no_double_application_written_terms_are_not_rewritten_by_rules():
    # An EXACT rule for "vllm" (any case) would rewrite the glossary's "vLLM"; it must not.
    rule = Rule("shout", RuleKind.EXACT, pattern="vllm", replacement="VLLM")
    result = process([TextSegment(0, "브이엘엘엠 과 vllm")], [ML], [rule])
    assert result.segments[0].text == "vLLM 과 vLLM"
    assert [c.rule_id for c in result.corrections] == ["glossary:ml:vLLM", "glossary:ml:vLLM"]


def test_one_pass_replacement_is_not_rematched_by_another_term():
    # The replacement "API" of one term is an alias of another term; it stays "API".
    g = Glossary(id="g", terms=(GlossaryTerm("API", ("에이피아이",)), GlossaryTerm("OpenAPI", ("API",), True)))
    assert correct_text("에이피아이", [g])[0] == "API"


def test_empty_term_is_invalid():
    with pytest.raises(InvalidArgument) as err:
        correct_text("x", [Glossary(id="bad", terms=(GlossaryTerm("  "),))])
    assert err.value.reason == "INVALID_GLOSSARY"


def test_bias_terms_lists_terms_not_aliases_and_caps_bytes():
    hotwords, prompt = bias_terms(ML)
    assert hotwords[:3] == ["vLLM", "LLM", "Kubernetes"]
    assert "브이엘엘엠" not in prompt and prompt.startswith("vLLM, LLM, Kubernetes")
    many = Glossary(id="big", terms=tuple(GlossaryTerm(f"term{i:03d}") for i in range(200)))
    hotwords, prompt = bias_terms([many, many])
    assert len(" ".join(hotwords).encode()) <= MAX_PROMPT_BYTES
    assert len(prompt.encode()) <= MAX_PROMPT_BYTES
    assert len(hotwords) == len(set(hotwords)) and 10 < len(hotwords) < 200
    assert bias_terms([]) == ([], "")
