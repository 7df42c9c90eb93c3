"""One job's text pass: pinned glossaries -> global rules -> redaction -> flags -> hallucination guard -> optional LLM.

The deterministic stages are :class:`scribe_libs.textproc.TextPipeline` (see its module for the
order and why); this module fetches the glossary versions ingest pinned in
``JobSpec.glossary_ids`` (``id@version``), builds the pipeline with the hallucination guard
(``settings.hallucination``), maps the result onto the ``scribe.v1.Transcript`` (leaving out the
segments the guard dropped; their ``hallucination:<id>`` corrections and a note say what went)
and runs the LLM pass in the job's post-correction mode (``spec.config.post_correction`` within
``settings.post_correction_allowed``, :func:`scribe_libs.textproc.postcorrection.resolve`). A
mode the deployment does not allow, or one asked for where no LLM endpoint is configured, is not
run: the job completes without the pass, with a warning in the log and a note in the transcript.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_libs.glossaries import GlossaryNotFound, GlossaryStore, parse_ref
from scribe_libs.textproc import (
    Glossary,
    Rule,
    TextPipeline,
    apply_processed,
    glossary_from_proto,
    segments_from_transcript,
)
from scribe_libs.textproc.hallucination import HallucinationGuard
from scribe_libs.textproc.postcorrection import resolve
from scribe_postprocess.config import Settings
from scribe_postprocess.llm import LlmClient, run_llm_pass

log = logging.getLogger(__name__)


def global_rules(settings: Settings) -> list[Rule]:
    """The configured global rules, checked.

    Raises:
        InvalidArgument: ``INVALID_RULE`` for a bad rule (the service refuses to start).
    """
    rules = [r.to_rule() for r in settings.rules]
    TextPipeline(rules=rules)
    return rules


async def pinned_glossaries(
    store: GlossaryStore, refs: Sequence[str]
) -> tuple[list[Glossary], list[str], list[str]]:
    """Fetch the glossaries a job pinned.

    Returns:
        ``(glossaries, applied refs "id@version", notes)``; a glossary deleted since the job was
        created is skipped with a note rather than failing the job.
    """
    glossaries, applied, notes = [], [], []
    for ref in refs:
        glossary_id, version = parse_ref(ref)
        try:
            message = await store.get(glossary_id, version)
        except GlossaryNotFound:
            log.warning("glossary %s is gone; transcript completed without it", ref)
            notes.append(f"glossary {ref} was deleted before post-processing; not applied")
            continue
        glossaries.append(glossary_from_proto(message))
        applied.append(f"{message.id}@{message.version}")
    return glossaries, applied, notes


async def postprocess_transcript(
    raw: transcript_pb2.Transcript,
    job: jobs_pb2.Job,
    store: GlossaryStore,
    settings: Settings,
    rules: Sequence[Rule],
    llm: LlmClient | None = None,
) -> transcript_pb2.Transcript:
    """The final transcript of ``job`` from its raw transcript.

    Args:
        raw: As decoded (already redacted by the transcriber when the job asked for it).
        job: The job record (``spec.glossary_ids`` pinned, ``spec.redact``).
        store: Glossaries.
        settings: Flag thresholds, hallucination guard, post-correction and LLM settings.
        rules: Global rules (:func:`global_rules`).
        llm: The LLM client when an endpoint is configured (``llm.enabled``).

    Returns:
        The transcript with corrected text, ``raw_text``, flags, corrections, flag summary,
        ``redacted``, ``glossaries``, ``notes`` and (LLM) ``summary``; without the segments the
        hallucination guard dropped.
    """
    glossaries, applied, notes = await pinned_glossaries(store, job.spec.glossary_ids)
    guard = HallucinationGuard(settings.hallucination)
    pipeline = TextPipeline(glossaries, rules, settings.flags, redact=job.spec.redact, hallucination=guard)
    processed = pipeline.process(segments_from_transcript(raw))
    transcript = apply_processed(_without(raw, set(processed.dropped)), processed)
    if processed.dropped:
        log.info("hallucination guard dropped %d segment(s)", len(processed.dropped),
                 extra={"dropped_segments": list(processed.dropped)})
        notes.append(
            f"hallucination guard: dropped {len(processed.dropped)} segment(s) of known Whisper stock phrases "
            "decoded from no speech (see the hallucination:* corrections)"
        )
    del transcript.glossaries[:]
    transcript.glossaries.extend(applied)
    transcript.notes.extend(notes)
    mode, refusal = resolve(
        job.spec.config.post_correction, settings.post_correction_default, settings.post_correction_allowed,
        llm_configured=llm is not None,
    )
    if refusal:
        log.warning("llm pass skipped: %s", refusal)
        transcript.notes.append(f"llm: {refusal}")
    if mode != "off" and llm is not None:
        terms = [t.term for g in glossaries for t in g.terms]
        await run_llm_pass(llm, transcript, terms, job.spec.redact, mode)
    return transcript


def _without(raw: transcript_pb2.Transcript, dropped: set[int]) -> transcript_pb2.Transcript:
    """``raw`` without the segments in ``dropped`` and the corrections already made to them."""
    if not dropped:
        return raw
    out = transcript_pb2.Transcript()
    out.CopyFrom(raw)
    del out.segments[:]
    out.segments.extend(s for s in raw.segments if s.id not in dropped)
    del out.corrections[:]
    out.corrections.extend(c for c in raw.corrections if c.segment_id not in dropped)
    return out
