"""Ingest's post-correction allow-list: which RecognitionConfig.post_correction values CreateJob accepts."""

from __future__ import annotations

import grpc
import pytest

from scribe.v1 import transcript_pb2
from scribe_ingest.config import Settings
from scribe_libs.errors import FailedPrecondition, InvalidArgument

PC = transcript_pb2.PostCorrection


def test_off_and_unspecified_are_always_accepted():
    settings = Settings(post_correction_allowed=[])
    settings.check_post_correction(PC.POST_CORRECTION_UNSPECIFIED)
    settings.check_post_correction(PC.POST_CORRECTION_OFF)
    assert Settings().post_correction_allowed == ["off"]


@pytest.mark.parametrize(("allowed", "asked", "name"), [
    (["off"], PC.POST_CORRECTION_FLAGGED, "flagged"),
    (["off", "flagged"], PC.POST_CORRECTION_ALL, "all"),
])
def test_a_mode_not_allowed_is_a_failed_precondition_naming_the_modes(allowed, asked, name):
    with pytest.raises(FailedPrecondition) as caught:
        Settings(post_correction_allowed=allowed).check_post_correction(asked)
    error = caught.value
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION and error.reason == "POST_CORRECTION_NOT_ALLOWED"
    assert error.metadata == {"post_correction": name, "allowed": ",".join(allowed)}


def test_allowed_modes_pass_and_unknown_values_are_invalid():
    settings = Settings(post_correction_allowed=["flagged", "all"])
    settings.check_post_correction(PC.POST_CORRECTION_FLAGGED)
    settings.check_post_correction(PC.POST_CORRECTION_ALL)
    with pytest.raises(InvalidArgument) as caught:
        settings.check_post_correction(9)
    assert caught.value.reason == "INVALID_POST_CORRECTION"
    with pytest.raises(ValueError):
        Settings(post_correction_allowed=["sometimes"])
