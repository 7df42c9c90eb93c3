"""Scoring rules (scribe_libs.scoring) on Korean, mixed Korean/English and English text."""

from __future__ import annotations

import unicodedata

import pytest

jiwer = pytest.importorskip("jiwer")

from scribe_libs.scoring import (  # noqa: E402 - after the skip
    ErrorCounts,
    cer,
    character_errors,
    normalize,
    term_counts,
    term_retention,
    wer,
    word_errors,
)

KO = "쿠버네티스 클러스터에 모델을 배포합니다"


def test_nfd_hangul_equals_precomposed():
    nfd = unicodedata.normalize("NFD", KO)
    assert nfd != KO and len(nfd) > len(KO)
    assert normalize(nfd) == normalize(KO)
    assert wer(KO, nfd) == 0.0
    assert cer(nfd, KO) == 0.0


def test_spacing_is_not_a_cer_error_but_is_a_wer_error():
    reference = "회의는 내일 오후 세 시에 시작합니다"
    hypothesis = "회의는 내일오후 세시에 시작 합니다"
    assert cer(reference, hypothesis) == 0.0
    assert wer(reference, hypothesis) > 0


def test_punctuation_and_symbols_are_removed():
    assert normalize("네, 알겠습니다! (확인)…") == "네 알겠습니다 확인"
    assert normalize("“따옴표”와 『괄호』·가운뎃점 ~ ₩") == "따옴표와 괄호가운뎃점"
    assert cer("네, 알겠습니다.", "네 알겠습니다") == 0.0
    assert wer("네, 알겠습니다.", "네 알겠습니다") == 0.0


def test_english_terms_in_korean_compare_case_insensitively():
    reference = "vLLM 서버를 Kubernetes 위에 올리고 API 를 엽니다"
    hypothesis = "VLLM 서버를 kubernetes 위에 올리고 api 를 엽니다"
    assert wer(reference, hypothesis) == 0.0
    assert cer(reference, hypothesis) == 0.0


def test_fullwidth_latin_and_digits_fold_to_ascii():
    assert normalize("ＡＰＩ　３개") == "api 3개"


def test_numerals_are_kept_as_written():
    # Documented: no Korean numeral reading; "3개" and "세 개" differ.
    assert normalize("3개") == "3개"
    assert cer("사과 세 개", "사과 3개") > 0


def test_a_known_korean_substitution_count():
    # 배포 -> 배후 (one syllable substituted), 합니다 -> 함니다 (one), one syllable deleted (를).
    counts = character_errors("모델을 배포합니다 서버를", "모델을 배후함니다 서버")
    assert (counts.substitutions, counts.deletions, counts.insertions) == (2, 1, 0)
    assert counts.reference_length == len("모델을배포합니다서버를")
    assert cer("모델을 배포합니다 서버를", "모델을 배후함니다 서버") == pytest.approx(3 / 11)
    words = word_errors("모델을 배포합니다 서버를", "모델을 배포합니다 서버를 지금")
    assert (words.substitutions, words.deletions, words.insertions, words.hits) == (0, 0, 1, 3)


def test_english_wer_matches_the_harness_numbers():
    # The pair and the transform the harness used before this module (jiwer's standard transforms).
    reference = ("And so my fellow Americans, ask not what your country can do for you,\n"
                 "ask what you can do for your country.")
    hypothesis = ("and so my fellow americans ask not what your country can do for you "
                  "ask what you can do for the country")
    old = jiwer.Compose([jiwer.SubstituteRegexes({r"\s+": " "}), jiwer.ToLowerCase(), jiwer.RemovePunctuation(),
                         jiwer.RemoveMultipleSpaces(), jiwer.Strip(), jiwer.ReduceToListOfListOfWords()])
    expected = jiwer.wer(reference, hypothesis, reference_transform=old, hypothesis_transform=old)
    assert expected == pytest.approx(1 / 22)
    assert wer(reference, hypothesis) == pytest.approx(expected)
    from scribe_harness import wer as harness_wer

    assert harness_wer(reference, hypothesis) == pytest.approx(expected)


def test_counts_sum_to_corpus_level_rates():
    pairs = [("하나 둘 셋", "하나 둘 넷"), ("a b c d e f g h i j", "a b c d e f g h i j")]
    total = sum(word_errors(r, h) for r, h in pairs)
    assert isinstance(total, ErrorCounts)
    assert total.rate == pytest.approx(1 / 13)  # not the mean of 1/3 and 0
    assert ErrorCounts().rate == 0.0
    assert word_errors("", "군더더기").rate == 1.0
    assert word_errors("내용", "").deletions == 1


def test_turkish_case_folding_is_the_one_language_rule():
    assert normalize("İSTANBUL", language="tr") == "istanbul"
    assert normalize("ISPARTA", language="tr") == "ısparta"
    assert normalize("ISPARTA", language="ko") == normalize("ISPARTA") == "isparta"


def test_term_retention_is_verbatim_and_case_sensitive():
    terms = ["vLLM", "Kubernetes", "API", "GPU 노드", "쿠다"]
    reference = "vLLM 을 Kubernetes에서 돌리고 API 를 GPU 노드에 붙입니다"
    assert term_counts(terms, reference, reference) == (4, 4)  # 쿠다 is not in the reference
    hypothesis = "VLLM 을 Kubernetes에서 돌리고 APIs 를 GPU  노드에 붙입니다"
    # VLLM: wrong case; APIs: inside a longer word; GPU  노드: any white space inside a term.
    assert term_counts(terms, reference, hypothesis) == (2, 4)
    assert term_retention(terms, reference, hypothesis) == 0.5
    assert term_retention(terms, "용어 없는 문장", "용어 없는 문장") is None
    assert term_counts(["API"], "RAPID 배포", "RAPID") == (0, 0)
    nfd = unicodedata.normalize("NFD", "쿠다 커널")
    assert term_counts(["쿠다"], "쿠다 커널", nfd) == (1, 1)
