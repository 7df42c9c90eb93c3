"""Input limits (scribe_libs.limits) as ingest applies them: pure functions, no network."""

from __future__ import annotations

import pytest

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs import limits
from scribe_libs.errors import InvalidArgument


def test_a_spec_at_every_limit_fits_a_nats_message_with_room():
    spec = jobs_pb2.JobSpec(
        filename="f" * limits.MAX_FILENAME_BYTES,
        labels={
            f"{i:0{limits.MAX_LABEL_KEY_BYTES}d}": "v" * limits.MAX_LABEL_VALUE_BYTES for i in range(limits.MAX_LABELS)
        },
        request_id="r" * limits.MAX_REQUEST_ID_BYTES,
        source_uri="s" * limits.MAX_SOURCE_URI_BYTES,
        glossary_ids=["g" * limits.MAX_GLOSSARY_ID_BYTES] * limits.MAX_GLOSSARY_IDS,
        config=transcript_pb2.RecognitionConfig(
            language="l" * limits.MAX_LANGUAGE_BYTES, model="m" * limits.MAX_MODEL_BYTES,
            hotwords=["h" * limits.MAX_HOTWORD_BYTES] * limits.MAX_HOTWORDS,
            initial_prompt="p" * limits.MAX_PROMPT_BYTES,
        ),
    )
    limits.check_job_spec(spec)  # at the limit: accepted
    assert spec.ByteSize() < 1.1 * limits.MAX_SPEC_BYTES
    assert spec.ByteSize() < 1024 * 1024 // 2  # half of NATS's default max payload


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (jobs_pb2.JobSpec(filename="é" * 513), "spec.filename"),  # 1026 UTF-8 bytes
        (jobs_pb2.JobSpec(labels={"k" * 129: ""}), "spec.labels.key"),
        (jobs_pb2.JobSpec(labels={str(i): "" for i in range(65)}), "spec.labels"),
        (jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig(hotwords=[""] * 101)), "spec.config.hotwords"),
    ],
)
def test_over_the_limit_names_the_field(spec, field):
    with pytest.raises(InvalidArgument) as caught:
        limits.check_job_spec(spec)
    assert caught.value.field == field
    assert caught.value.metadata["limit"] in caught.value.message


@pytest.mark.parametrize(
    ("decoded", "stated", "truncated"),
    [(10.0, 30.0, True), (29.5, 30.0, False), (0.0, 0.5, False), (1790.0, 1804.0, False), (601.0, 1804.0, True)],
)
def test_truncation_tolerance_is_one_second_or_two_percent(decoded, stated, truncated):
    assert limits.is_truncated(decoded, stated) is truncated
