"""``scribe export``: completed jobs as a training dataset, Lhotse recordings + supervisions manifests.

``scribe export JOB_ID... | --label KEY=VALUE... --out DIR [--audio-dir DIR] [--compare-model M --max-cer X]``

Jobs are named by id, or selected by their labels (``ListJobs`` with ``labels``, every page; the
jobs of every owner for an admin key, else the caller's). Each exported job becomes one Lhotse
*Recording* (id: the job id) and one *SupervisionSegment* per non-empty transcript segment:

- ``start``, ``duration``: seconds from the transcript (rounded to the millisecond, clipped to
  the recording);
- ``text``: the segment as post-processed (glossaries, rules, redaction); ``--raw`` takes the
  text as decoded;
- ``language``: the segment's detected language, else the transcript's;
- ``speaker``: the segment's channel role (``RecognitionConfig.channel_roles``), else ``ch<N>``;
- ``channel``: the segment's channel for a per-channel transcript; for a mixed-down transcript
  of a multi-channel recording every channel (a list), as Lhotse marks supervisions of mixed audio;
- ``custom``: ``avg_logprob``, ``no_speech_prob``, ``compression_ratio``, ``flags`` (the confidence
  flags of post-processing), ``job_id``, ``segment_id``, ``model``; with ``--compare-model`` also
  ``compare_model``, ``compare_text``, ``compare_cer``;
- ``alignment``: ``{"word": [[word, start, duration, probability], ...]}`` when the job had word
  timestamps.

Written to ``DIR/recordings.jsonl.gz`` and ``DIR/supervisions.jsonl.gz`` in Lhotse's manifest
format: one ``Recording.to_dict()`` / ``SupervisionSegment.to_dict()`` object a gzipped JSON line,
``None`` fields left out, as ``RecordingSet.to_file`` and ``SupervisionSet.to_file`` write them
(``lhotse.load_manifest`` reads them; so does ``scribe bench DIR``). The ``lhotse`` package is not
used to write them: lhotse (1.33.0) requires torch and imports it at ``import lhotse``, which the
CLI must not pull in. The rows are what lhotse 1.33.0's ``to_dict()`` gives; test_export.py reads
them back with ``lhotse.load_manifest`` and ``validate_recordings_and_supervisions`` where lhotse
is installed.

Where the audio comes from (no RPC serves a job's audio; its original is deleted after
transcription unless the job was created with ``retain_audio``), in this order:

1. the job retained its audio (``Job.audio_key`` set): the original is copied from the platform's
   object store (bucket ``scribe-audio``; the store settings ``scribe bench`` uses for s3://:
   ``SCRIBE_STORE__*``, else the running embedded stack's) to ``DIR/audio/<job_id><suffix>``.
   Reading the store takes the store's credentials, an operator's; the job itself was read
   through the API with the caller's key;
2. ``--audio-dir DIR``: the caller's copy of the original, ``DIR/<JobSpec.filename>`` (or the
   same path below DIR), referenced where it is (not copied); its duration must match the job's
   within 0.1 s, so that a different file of the same name is not paired with the transcript;
3. the job was created from ``source_uri`` and that object is still in the store: copied as in 1.

A job none of these covers, or one that is not COMPLETED, is refused: it is left out, named with
the reason on stderr, and the exit code is 1 (the others are still written). Recording sources
are absolute paths (Lhotse resolves relative ones against the working directory).

``--compare-model M`` (EchoHarvester-style validation): every exported job's audio is
transcribed again with model M through the platform (the job's own recognition config otherwise),
and a supervision is kept only if the character error rate between its text and M's text for
the same span is at most ``--max-cer`` (scribe_libs.scoring.cer: NFC, case-folded, punctuation
and spacing not counted). M's segments are matched by time: each goes to the exported segment
(same channel) it overlaps most; a segment that gets none scores 1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import sys
import uuid
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path, PurePosixPath

import grpc

from scribe.v1 import jobs_pb2, results_pb2, transcript_pb2
from scribe_cli import jobs
from scribe_cli.datasets import AUDIO_SUFFIXES, DatasetError

RECORDINGS = "recordings.jsonl.gz"
SUPERVISIONS = "supervisions.jsonl.gz"
DURATION_TOLERANCE = 0.1
"""Seconds an ``--audio-dir`` file's duration may differ from the job's ``audio_duration``."""


class Refused(Exception):
    """A job that cannot be exported; the message says why and what would make it exportable."""


@dataclass
class Audio:
    """A job's audio on this machine and what Lhotse's Recording needs of it."""

    path: Path
    sampling_rate: int
    num_samples: int
    channels: int

    @property
    def duration(self) -> float:
        """Seconds: num_samples / sampling_rate, as Lhotse computes it."""
        return self.num_samples / self.sampling_rate


@dataclass
class Exported:
    """One job's Recording and supervisions (Lhotse dicts)."""

    job: jobs_pb2.Job
    audio: Audio
    transcript: transcript_pb2.Transcript
    recording: dict
    supervisions: list[dict] = field(default_factory=list)
    dropped: int = 0


def _num_samples(duration: float, rate: int) -> int:
    # Lhotse's compute_num_samples: round half up on the 8-decimal product.
    return int(Decimal(round(duration * rate, 8)).quantize(0, rounding=ROUND_HALF_UP))


def _probe(path: Path) -> Audio:
    from scribe_libs.audio import probe
    from scribe_libs.errors import InvalidArgument

    try:
        info = probe(path)
    except InvalidArgument as exc:
        raise Refused(f"{path}: {exc}") from exc
    return Audio(path, info.sample_rate, _num_samples(info.duration, info.sample_rate), max(1, info.channels))


class AudioFinder:
    """Finds a job's audio: retained in the store, ``--audio-dir``, or its source object (module docstring)."""

    def __init__(self, out: Path, audio_dir: Path | None):
        """Copies go to ``out/audio``; ``audio_dir`` is the caller's folder of originals (or None)."""
        self.out = out / "audio"
        self.audio_dir = audio_dir
        self._store = None
        self._store_error = ""

    def _open_store(self):  # noqa: ANN202 - an ObjectStore or None
        if self._store is None and not self._store_error:
            from scribe_cli.datasets import _store_settings
            from scribe_libs.objectstore import open_store

            try:
                self._store = open_store(_store_settings())
            except DatasetError as exc:
                self._store_error = str(exc).replace("s3:// datasets need", "reading retained audio needs")
        return self._store

    def _copy(self, bucket: str, key: str, target: Path) -> bool:
        from scribe_libs.objectstore import ObjectNotFound

        store = self._open_store()
        if store is None:
            return False
        try:
            asyncio.run(store.get_file(bucket, key, target))
        except ObjectNotFound:
            return False
        return True

    def _suffix(self, job: jobs_pb2.Job) -> str:
        suffix = PurePosixPath(job.spec.filename or job.spec.source_uri).suffix.lower()
        return suffix if suffix in AUDIO_SUFFIXES else ""

    def _local(self, job: jobs_pb2.Job) -> Path | None:
        if self.audio_dir is None or not job.spec.filename:
            return None
        name = PurePosixPath(job.spec.filename).name
        direct = self.audio_dir / name
        if direct.is_file():
            return direct
        found = sorted(p for p in self.audio_dir.rglob(name) if p.is_file())
        return found[0] if len(found) == 1 else None

    def find(self, job: jobs_pb2.Job) -> Audio:
        """The job's audio (copied under ``out/audio`` when it came from the store).

        Raises:
            Refused: none of the three sources has it; the message lists what was tried.
        """
        from scribe_libs.jobs import AUDIO_BUCKET
        from scribe_libs.objectstore import parse_uri

        target = self.out / f"{job.job_id}{self._suffix(job)}"
        tried = []
        if job.audio_key:
            if self._copy(AUDIO_BUCKET, job.audio_key, target):
                return _probe(target.resolve())
            tried.append(self._store_error or f"the retained audio {AUDIO_BUCKET}/{job.audio_key} is gone")
        else:
            tried.append("its audio was not retained (create jobs with `scribe transcribe --retain-audio`)")
        local = self._local(job)
        if local is not None:
            audio = _probe(local.resolve())
            if abs(audio.duration - job.audio_duration) > DURATION_TOLERANCE:
                raise Refused(f"{local} is {audio.duration:.2f} s but the job's audio was {job.audio_duration:.2f} s: "
                              "not the file this job transcribed")
            return audio
        if self.audio_dir is not None:
            tried.append(f"no {job.spec.filename or '(unnamed file)'} under {self.audio_dir}")
        else:
            tried.append("no --audio-dir with the originals")
        if job.spec.source_uri:
            bucket, key = parse_uri(job.spec.source_uri)
            if self._copy(bucket, key, target):
                return _probe(target.resolve())
            tried.append(self._store_error or f"its source {job.spec.source_uri} is gone")
        raise Refused("no audio: " + "; ".join(dict.fromkeys(tried)))


def recording_dict(job_id: str, audio: Audio) -> dict:
    """``Recording.to_dict()`` of one file source holding every channel."""
    channels = list(range(audio.channels))
    return {
        "id": job_id,
        "sources": [{"type": "file", "channels": channels, "source": str(audio.path)}],
        "sampling_rate": audio.sampling_rate,
        "num_samples": audio.num_samples,
        "duration": audio.duration,
        "channel_ids": channels,
    }


def supervision_dicts(job: jobs_pb2.Job, transcript: transcript_pb2.Transcript, audio: Audio,
                      raw: bool = False) -> list[dict]:
    """``SupervisionSegment.to_dict()`` of every segment with text (fields: module docstring)."""
    per_channel = job.spec.config.enable_separate_recognition_per_channel
    out = []
    for index, seg in enumerate(transcript.segments):
        text = (seg.raw_text if raw and seg.raw_text else seg.text).strip()
        if not text:
            continue
        start = round(max(0.0, seg.start), 3)
        end = round(min(seg.end, audio.duration), 3)
        if end <= start:
            continue
        if per_channel or audio.channels == 1:
            channel: int | list[int] = seg.channel if per_channel else 0
        else:
            channel = list(range(audio.channels))
        sup = {
            "id": f"{job.job_id}-{index:05d}",
            "recording_id": job.job_id,
            "start": start,
            "duration": round(end - start, 3),
            "channel": channel,
            "text": text,
            "language": seg.language or transcript.language or job.language or None,
            "speaker": seg.role or f"ch{seg.channel}",
            "custom": {
                "job_id": job.job_id, "segment_id": seg.id, "model": transcript.model,
                "avg_logprob": round(seg.avg_logprob, 4), "no_speech_prob": round(seg.no_speech_prob, 4),
                "compression_ratio": round(seg.compression_ratio, 4), "flags": list(seg.flags),
            },
        }
        if seg.words:
            sup["alignment"] = {"word": [[w.word.strip(), round(w.start, 3), round(max(0.0, w.end - w.start), 3),
                                          round(w.probability, 4)] for w in seg.words]}
        out.append({k: v for k, v in sup.items() if v is not None})
    return out


def _overlap(a: dict, start: float, end: float) -> float:
    return min(a["start"] + a["duration"], end) - max(a["start"], start)


def _same_channel(sup: dict, channel: int, per_channel: bool) -> bool:
    return not per_channel or sup["channel"] == channel


def apply_comparison(exported: Exported, other: transcript_pb2.Transcript, model: str, max_cer: float,
                     raw: bool = False) -> None:
    """Keep only supervisions whose text agrees with ``other``'s for the same span within ``max_cer``.

    Each of ``other``'s segments goes to the supervision (same channel) it overlaps most; the
    supervision's ``custom`` gets ``compare_model``, ``compare_text`` and ``compare_cer``.
    """
    from scribe_libs.scoring import cer

    per_channel = exported.job.spec.config.enable_separate_recognition_per_channel
    assigned: dict[int, list[transcript_pb2.Segment]] = {i: [] for i in range(len(exported.supervisions))}
    for seg in other.segments:
        best, best_overlap = None, 0.0
        for i, sup in enumerate(exported.supervisions):
            overlap = _overlap(sup, seg.start, seg.end)
            if overlap > best_overlap and _same_channel(sup, seg.channel, per_channel):
                best, best_overlap = i, overlap
        if best is not None:
            assigned[best].append(seg)
    kept = []
    for i, sup in enumerate(exported.supervisions):
        ordered = sorted(assigned[i], key=lambda s: s.start)
        texts = ((s.raw_text if raw and s.raw_text else s.text).strip() for s in ordered)
        text = " ".join(texts).strip()
        score = cer(sup["text"], text, sup.get("language")) if text else 1.0
        sup["custom"].update(compare_model=model, compare_text=text, compare_cer=round(score, 4))
        if score <= max_cer:
            kept.append(sup)
    exported.dropped = len(exported.supervisions) - len(kept)
    exported.supervisions = kept


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """Gzipped JSON lines (UTF-8, not ASCII-escaped, as Lhotse writes them), replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def select_jobs(results, job_ids: list[str], labels: dict[str, str]) -> tuple[list[jobs_pb2.Job], dict[str, str]]:  # noqa: ANN001
    """The jobs named, or those whose labels hold every pair (oldest first); unknown ids as refusals."""
    refused: dict[str, str] = {}
    found: list[jobs_pb2.Job] = []
    for job_id in dict.fromkeys(job_ids):
        try:
            found.append(results.GetJob(results_pb2.GetJobRequest(job_id=job_id)).job)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            refused[job_id] = "no such job (or not this key's)"
    if labels:
        token = ""
        while True:
            reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=1000, page_token=token, labels=labels))
            found += reply.jobs
            token = reply.next_page_token
            if not token:
                break
    unique = {job.job_id: job for job in found}
    return sorted(unique.values(), key=lambda j: (j.create_time.ToNanoseconds(), j.job_id)), refused


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def cmd_export(args: argparse.Namespace) -> int:
    """Export jobs as Lhotse manifests; see the module docstring."""
    try:
        labels = _parse_labels(args.label or [])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.job_ids and not labels:
        print("error: name jobs by id or select them with --label KEY=VALUE", file=sys.stderr)
        return 2
    out = Path(args.out).expanduser()
    results = jobs.results_stub()
    selected, refused = select_jobs(results, args.job_ids, labels)
    if not selected and not refused:
        print(f"error: no job has the labels {labels}", file=sys.stderr)
        return 1
    source = AudioFinder(out, Path(args.audio_dir).expanduser() if args.audio_dir else None)
    exported: list[Exported] = []
    for job in selected:
        if job.state != jobs.S.JOB_STATE_COMPLETED:
            refused[job.job_id] = f"job is {jobs.state_name(job)}, not COMPLETED"
            continue
        try:
            audio = source.find(job)
        except Refused as exc:
            refused[job.job_id] = str(exc)
            continue
        request = results_pb2.GetTranscriptRequest(job_id=job.job_id, format=transcript_pb2.TRANSCRIPT_FORMAT_JSON)
        transcript = results.GetTranscript(request).transcript
        item = Exported(job, audio, transcript, recording_dict(job.job_id, audio))
        item.supervisions = supervision_dicts(job, transcript, audio, raw=args.raw)
        exported.append(item)
        print(f"export: {job.job_id} {job.spec.filename}: {len(item.supervisions)} segment(s), "
              f"{audio.duration:.1f} s", file=sys.stderr)

    if args.compare_model and exported:
        refused.update(_compare(exported, args.compare_model, args.max_cer, args.concurrency, args.raw))
        exported = [e for e in exported if e.job.job_id not in refused]

    write_jsonl_gz(out / RECORDINGS, [e.recording for e in exported])
    write_jsonl_gz(out / SUPERVISIONS, [s for e in exported for s in e.supervisions])
    total = sum(len(e.supervisions) for e in exported)
    dropped = sum(e.dropped for e in exported)
    note = ""
    if args.compare_model:
        note = f", {dropped} dropped by --compare-model {args.compare_model} (CER > {args.max_cer})"
    print(f"export: {len(exported)} recording(s), {total} supervision(s){note} -> {out / RECORDINGS}, "
          f"{out / SUPERVISIONS}", file=sys.stderr)
    if refused:
        width = min(40, max(len(k) for k in refused))
        print(f"{len(refused)} job(s) not exported:", file=sys.stderr)
        print(f"{'JOB':<{width}}  REASON", file=sys.stderr)
        for job_id, reason in refused.items():
            print(f"{job_id:<{width}}  {reason}", file=sys.stderr)
        return 1
    return 0


def _compare(exported: list[Exported], model: str, max_cer: float, concurrency: int, raw: bool) -> dict[str, str]:
    """Transcribe each job's audio again with ``model`` and filter its supervisions; returns refusals."""
    tasks = []
    for e in exported:
        config = transcript_pb2.RecognitionConfig()
        config.CopyFrom(e.job.spec.config)
        config.model = model
        config.word_timestamps = False
        # The same glossaries and redaction, so both texts went through the same post-processing.
        spec = jobs_pb2.JobSpec(config=config, filename=e.job.spec.filename, request_id=uuid.uuid4().hex,
                                labels={"scribe-export-compare": e.job.job_id},
                                glossary_ids=e.job.spec.glossary_ids, redact=e.job.spec.redact)
        tasks.append(jobs.Task(e.job.job_id, spec, e.audio.path))
    refused = {}
    by_id = {e.job.job_id: e for e in exported}
    for outcome in jobs.run_many(tasks, concurrency=concurrency, fmt=transcript_pb2.TRANSCRIPT_FORMAT_JSON):
        if outcome.error:
            refused[outcome.task.key] = f"--compare-model {model}: {outcome.error}"
            continue
        apply_comparison(by_id[outcome.task.key], outcome.transcript.transcript, model, max_cer, raw)
    return refused


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``scribe export``."""
    p = sub.add_parser("export", help="export completed jobs as a Lhotse dataset (recordings + supervisions)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="jobs to export (or select them with --label)")
    p.add_argument("--label", action="append", metavar="KEY=VALUE",
                   help="export the jobs whose labels hold this pair (repeatable: all must match)")
    p.add_argument("--format", choices=["lhotse"], default="lhotse", help="manifest format (default lhotse)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="where recordings.jsonl.gz, supervisions.jsonl.gz and audio/ go")
    p.add_argument("--audio-dir", metavar="DIR",
                   help="the originals of jobs that did not retain their audio (matched by file name)")
    p.add_argument("--raw", action="store_true", help="the text as decoded, before glossaries, rules and redaction")
    p.add_argument("--compare-model", metavar="MODEL",
                   help="transcribe each job again with MODEL and keep segments that agree within --max-cer")
    p.add_argument("--max-cer", type=float, default=0.1,
                   help="with --compare-model: the largest CER (fraction) a kept segment may have (default 0.1)")
    p.add_argument("--concurrency", type=int, default=4, help="with --compare-model: jobs in flight (default 4)")
    p.set_defaults(func=cmd_export)
