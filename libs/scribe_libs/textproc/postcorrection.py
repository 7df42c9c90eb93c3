"""Per-job choice of the optional LLM post-correction pass (``RecognitionConfig.post_correction``).

Modes, by name (the settings' spelling) and ``scribe.v1.PostCorrection`` value:

- ``off`` (1): no LLM call for the job at all (no correction, no summary).
- ``flagged`` (2): only segments that carry a confidence flag are sent for correction.
- ``all`` (3): every non-empty segment is sent.
- unspecified (0): the deployment's default (postprocess ``post_correction_default``, ``off``
  unless the operator says otherwise).

A deployment allows a set of modes (``post_correction_allowed``, ingest and postprocess alike);
``off`` and unspecified are always accepted. Ingest refuses a job asking for another mode at
``CreateJob`` (:func:`check_allowed`); postprocess checks again (:func:`resolve`) and skips the pass,
with a note, if the mode is not allowed there or no LLM endpoint is configured.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from scribe_libs.errors import FailedPrecondition, InvalidArgument

#: The mode names, in ``scribe.v1.PostCorrection`` value order (1, 2, 3).
MODES: tuple[str, ...] = ("off", "flagged", "all")

#: A mode name as settings spell it.
ModeName = Literal["off", "flagged", "all"]

#: Reason of the refusal at CreateJob.
NOT_ALLOWED = "POST_CORRECTION_NOT_ALLOWED"


def mode_name(value: int) -> str:
    """``scribe.v1.PostCorrection`` value -> mode name; "" for UNSPECIFIED.

    Raises:
        InvalidArgument: ``INVALID_POST_CORRECTION`` for a value this version does not know.
    """
    if value == 0:
        return ""
    if 1 <= value <= len(MODES):
        return MODES[value - 1]
    raise InvalidArgument(
        "INVALID_POST_CORRECTION", f"unknown post_correction value {value}", field="spec.config.post_correction"
    )


def effective_allowed(allowed: Sequence[str]) -> list[str]:
    """The allowed modes with ``off`` always among them, in :data:`MODES` order."""
    return [m for m in MODES if m == "off" or m in allowed]


def check_allowed(value: int, allowed: Sequence[str]) -> None:
    """Refuse a job whose ``post_correction`` the deployment does not allow (ingest, at CreateJob).

    Args:
        value: ``RecognitionConfig.post_correction``.
        allowed: The deployment's allowed mode names.

    Raises:
        FailedPrecondition: ``POST_CORRECTION_NOT_ALLOWED`` with metadata ``post_correction`` (the
            asked mode) and ``allowed`` (comma-separated allowed modes).
        InvalidArgument: ``INVALID_POST_CORRECTION`` for an unknown value.
    """
    name = mode_name(value)
    modes = effective_allowed(allowed)
    if name and name not in modes:
        raise FailedPrecondition(
            NOT_ALLOWED,
            f"post_correction {name!r} is not allowed by this deployment (allowed: {', '.join(modes)})",
            metadata={"post_correction": name, "allowed": ",".join(modes)},
        )


def resolve(value: int, default: str, allowed: Sequence[str], llm_configured: bool) -> tuple[str, str]:
    """The mode postprocess runs for a job, and why it is ``off`` when the job asked otherwise.

    Args:
        value: ``RecognitionConfig.post_correction`` of the job.
        default: The deployment's default mode name (for UNSPECIFIED).
        allowed: The deployment's allowed mode names.
        llm_configured: Whether an LLM client exists (``llm.enabled``).

    Returns:
        ``(mode, refusal)``: ``refusal`` is "" when the mode runs as asked (or is ``off``), else a
        sentence for the log and the transcript's notes; the mode is then ``off``.
    """
    try:
        name = mode_name(value)
    except InvalidArgument:
        return "off", f"post-correction value {value} is unknown; not run"
    asked = name or default
    if asked == "off":
        return "off", ""
    modes = effective_allowed(allowed)
    if asked not in modes:
        allowed_text = ", ".join(modes)
        return "off", f"post-correction {asked!r} is not allowed by this deployment (allowed: {allowed_text}); not run"
    if not llm_configured:
        return "off", f"post-correction {asked!r} asked but no LLM endpoint is configured; not run"
    return asked, ""


__all__ = ["MODES", "NOT_ALLOWED", "ModeName", "check_allowed", "effective_allowed", "mode_name", "resolve"]
