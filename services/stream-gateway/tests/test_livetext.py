"""Live results get batch's text features: glossary bias, glossary corrections, redaction.

The glossaries live in a real JetStream KV bucket (the root conftest's ``nats_url``: nats-server
on a free port, one per module).
"""

from __future__ import annotations

import statistics
import time

import grpc
import pytest
from google.rpc import error_details_pb2

from scribe.v1 import glossary_pb2, streaming_pb2
from scribe_libs import bus as busmod
from scribe_libs.config import NatsSettings
from scribe_libs.errors import InvalidArgument
from scribe_libs.glossaries import GlossaryStore
from scribe_libs.streaming import Word
from scribe_libs.textproc import MAX_PROMPT_BYTES
from scribe_stream_gateway.livetext import load_live_text

ML = glossary_pb2.Glossary(
    id="ml-infra",
    terms=[
        glossary_pb2.GlossaryTerm(term="vLLM", aliases=["브이엘엘엠"]),
        glossary_pb2.GlossaryTerm(term="Kubernetes", aliases=["쿠버네티스"]),
    ],
)


@pytest.fixture
async def store(nats_url):
    bus = await busmod.connect(
        NatsSettings(url=nats_url), "test-livetext", retention_seconds=busmod.DEFAULT_RETENTION_SECONDS
    )
    glossaries = GlossaryStore(bus.glossaries)
    await glossaries.put(ML)
    try:
        yield glossaries
    finally:
        await bus.close()


def config(**fields) -> streaming_pb2.StreamingConfig:
    return streaming_pb2.StreamingConfig(
        encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000, **fields
    )


def words(*texts: str, step: float = 0.5) -> list[Word]:
    return [Word(round(i * step, 3), round(i * step + 0.4, 3), t, 0.9) for i, t in enumerate(texts)]


def joined(ws: list[Word]) -> str:
    return " ".join(w.text for w in ws)


def bad_request(exc: InvalidArgument) -> tuple[grpc.StatusCode, str, str]:
    """(code, reason, field) as the caller sees them in the status details."""
    status = exc.to_status()
    info, fields = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            detail.Unpack(fields)
    return exc.code, info.reason, fields.field_violations[0].field


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("no-such-glossary", "GLOSSARY_NOT_FOUND"),
        ("ml-infra@99", "GLOSSARY_NOT_FOUND"),
        ("bad id!", "INVALID_GLOSSARY"),
        ("ml-infra@v2", "INVALID_GLOSSARY"),
    ],
)
async def test_unknown_or_malformed_glossary_refuses_the_session(store, ref, reason):
    with pytest.raises(InvalidArgument) as caught:
        await load_live_text(config(glossary_ids=[ref]), (), store)
    assert bad_request(caught.value) == (grpc.StatusCode.INVALID_ARGUMENT, reason, "config.glossary_ids")


async def test_one_unknown_glossary_among_known_ones_refuses_the_session(store):
    with pytest.raises(InvalidArgument) as caught:
        await load_live_text(config(glossary_ids=["ml-infra", "no-such-glossary"]), (), store)
    assert bad_request(caught.value)[1:] == ("GLOSSARY_NOT_FOUND", "config.glossary_ids")
    assert caught.value.metadata == {"glossary": "no-such-glossary"}


async def test_too_many_glossaries_are_refused(store):
    refs = [f"g{i}" for i in range(11)]
    with pytest.raises(InvalidArgument) as caught:
        await load_live_text(config(glossary_ids=refs), (), store)
    assert bad_request(caught.value)[1:] == ("TOO_MANY_GLOSSARIES", "config.glossary_ids")


async def test_glossary_terms_bias_decoding_after_the_callers_hotwords(store):
    live = await load_live_text(config(glossary_ids=["ml-infra"]), ("Triton",), store)
    assert live.hotwords == ("Triton", "vLLM", "Kubernetes")
    assert "브이엘엘엠" not in live.hotwords  # aliases are what the decoder must not write
    assert live.prompt == "vLLM, Kubernetes."
    latest = await store.get("ml-infra")
    assert live.glossary_ids == (f"ml-infra@{latest.version}",)


async def test_bias_stays_within_batchs_prompt_budget(store):
    await store.put(glossary_pb2.Glossary(
        id="big", terms=[glossary_pb2.GlossaryTerm(term=f"Term{i:03d}") for i in range(200)]
    ))
    live = await load_live_text(config(glossary_ids=["big"]), ("Triton",), store)
    assert live.hotwords[:2] == ("Triton", "Term000")
    assert len(" ".join(live.hotwords).encode()) <= MAX_PROMPT_BYTES


async def test_without_glossaries_the_callers_hotwords_are_kept(store):
    live = await load_live_text(config(), ("Triton", "NATS"), store)
    assert live.hotwords == ("Triton", "NATS") and live.prompt == "" and live.glossary_ids == ()


async def test_glossary_correction_on_a_live_final(store):
    live = await load_live_text(config(glossary_ids=["ml-infra"]), (), store)
    final = words("쿠버네티스에서", "브이", "엘엘엠", "을", "띄웠어요")
    text, out = live.apply(joined(final), final)
    assert text == "Kubernetes에서 vLLM 을 띄웠어요"
    assert [w.text for w in out] == ["Kubernetes에서", "vLLM", "을", "띄웠어요"]
    # "브이 엘엘엠" became one word spanning both.
    assert (out[1].start, out[1].end) == (final[1].start, final[2].end)
    assert [(w.start, w.end) for w in out[2:]] == [(w.start, w.end) for w in final[3:]]
    assert not live.redacts


async def test_card_number_redacted_in_text_and_words_with_timings_kept(store):
    live = await load_live_text(config(redact=True), (), store)
    assert live.redacts
    result = words("my", "card", "is", "4111", "1111", "1111", "1111", "thanks")
    text, out = live.apply(joined(result), result)
    assert text == "my card is [CARD] thanks"
    assert [w.text for w in out] == ["my", "card", "is", "[CARD]", "thanks"]
    assert (out[3].start, out[3].end) == (result[3].start, result[6].end)
    assert (out[4].start, out[4].end) == (result[7].start, result[7].end)
    assert not any(ch.isdigit() for w in out for ch in w.text)


@pytest.mark.parametrize(
    "spoken",
    [
        ("제", "번호는", "010-1234-5678", "이에요"),
        ("제", "번호는", "010-", "1234-", "5678", "이에요"),
    ],
)
async def test_korean_phone_number_redacted(store, spoken):
    live = await load_live_text(config(redact=True, glossary_ids=["ml-infra"]), (), store)
    result = words(*spoken)
    text, out = live.apply(joined(result), result)
    assert text == "제 번호는 [PHONE] 이에요"
    assert [w.text for w in out] == ["제", "번호는", "[PHONE]", "이에요"]
    assert (out[2].start, out[2].end) == (result[2].start, result[-2].end)
    assert (out[-1].start, out[-1].end) == (result[-1].start, result[-1].end)


async def test_redaction_off_changes_nothing(store):
    live = await load_live_text(config(redact=False), (), store)
    result = words("my", "card", "is", "4111", "1111", "1111", "1111", "call", "010-1234-5678")
    assert live.apply(joined(result), result) == (joined(result), tuple(result))
    assert not live.redacts
    with_glossary = await load_live_text(config(glossary_ids=["ml-infra"]), (), store)
    assert with_glossary.apply(joined(result), result) == (joined(result), tuple(result))


async def test_empty_result_passes_through(store):
    live = await load_live_text(config(redact=True, glossary_ids=["ml-infra"]), (), store)
    assert live.apply("", []) == ("", ())


async def test_a_30_word_interim_costs_a_few_ms(store):
    live = await load_live_text(config(redact=True, glossary_ids=["ml-infra"]), (), store)
    result = words(*(
        "we deploy 브이엘엘엠 on 쿠버네티스 and my card is 4111 1111 1111 1111 so please call 010-1234-5678 "
        "tomorrow about the invoice for the new cluster and the GPU nodes we rented"
    ).split())
    assert len(result) >= 30
    text = joined(result)
    live.apply(text, result)
    runs = []
    for _ in range(20):
        started = time.perf_counter()
        live.apply(text, result)
        runs.append(time.perf_counter() - started)
    assert statistics.median(runs) < 0.005
