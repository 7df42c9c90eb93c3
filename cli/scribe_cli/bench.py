"""``scribe bench DATASET``: run a dataset through the platform and score each model side by side.

Every file becomes a job on the running stack (``scribe up``, or the addresses in
``SCRIBE_<SERVICE>_ADDR``), submitted and followed with the same calls as ``scribe transcribe``
(scribe_cli.jobs);
the TXT transcript is scored against the dataset's reference with scribe_libs.scoring (its module
docstring gives the normalisation and its sources). Models run one after another, so each sees
the whole pool; within a model at most ``--concurrency`` jobs are in flight.

Figures per model (stdout, a Markdown table; ``--json FILE`` writes them as fractions):

- WER, CER: corpus-level, total errors / total reference words (characters, white space not
  counted) over all files; a failed job scores as an empty transcript;
- term retention: of the ``--glossary`` terms present in the references, the fraction the
  transcripts keep verbatim (case-sensitive), summed over files;
- RTF: total processing seconds / total audio seconds, from the job records (``end_time -
  start_time``: from RUNNING to COMPLETED, queueing excluded; ``audio_duration`` measured at
  ingest);
- wall: seconds from the first upload to the last transcript, as a user waits;
- worst files: highest CER (then WER).

Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format

from scribe.v1 import jobs_pb2, transcript_pb2
from scribe_cli import datasets, jobs
from scribe_libs.formats import FORMAT_NAMES
from scribe_libs.scoring import ErrorCounts, character_errors, term_counts, word_errors


@dataclass
class FileResult:
    """One file's job and score."""

    name: str
    reference: str
    hypothesis: str = ""
    words: ErrorCounts = field(default_factory=ErrorCounts)
    chars: ErrorCounts = field(default_factory=ErrorCounts)
    terms: tuple[int, int] = (0, 0)
    audio_seconds: float = 0.0
    processing_seconds: float = 0.0
    job_id: str = ""
    error: str = ""

    def as_json(self) -> dict:
        """The file's entry of ``--json`` (fractions)."""
        kept, expected = self.terms
        return {
            "path": self.name, "wer": self.words.rate, "cer": self.chars.rate,
            "term_retention": kept / expected if expected else None,
            "audio_seconds": self.audio_seconds, "processing_seconds": self.processing_seconds,
            "job_id": self.job_id, "error": self.error or None,
            "reference": self.reference, "hypothesis": self.hypothesis,
        }


@dataclass
class ModelResult:
    """A model's files and its corpus-level figures."""

    model: str
    files: list[FileResult]
    wall_seconds: float
    config: transcript_pb2.RecognitionConfig = field(default_factory=transcript_pb2.RecognitionConfig)

    @property
    def wer(self) -> float:
        """Corpus-level word error rate (a fraction)."""
        return sum((f.words for f in self.files), ErrorCounts()).rate

    @property
    def cer(self) -> float:
        """Corpus-level character error rate (a fraction), spacing not counted."""
        return sum((f.chars for f in self.files), ErrorCounts()).rate

    @property
    def term_retention(self) -> float | None:
        """Terms kept / terms expected over all files; None when no reference holds a term."""
        kept = sum(f.terms[0] for f in self.files)
        expected = sum(f.terms[1] for f in self.files)
        return kept / expected if expected else None

    @property
    def rtf(self) -> float | None:
        """Processing seconds / audio seconds over the completed jobs; None when there are none."""
        audio = sum(f.audio_seconds for f in self.files if not f.error)
        return sum(f.processing_seconds for f in self.files if not f.error) / audio if audio else None

    def worst(self, n: int) -> list[FileResult]:
        """The ``n`` files with the highest CER (then WER)."""
        return sorted(self.files, key=lambda f: (f.chars.rate, f.words.rate), reverse=True)[:n]

    def as_json(self) -> dict:
        """The model's entry of ``--json``."""
        return {
            "wer": self.wer, "cer": self.cer, "rtf": self.rtf, "term_retention": self.term_retention,
            "wall_seconds": self.wall_seconds, "failed": sum(1 for f in self.files if f.error),
            "config": json_format.MessageToDict(self.config, preserving_proto_field_name=True),
            "files": [f.as_json() for f in self.files],
        }


def parse_config(items: list[str]) -> transcript_pb2.RecognitionConfig:
    """``key=value`` pairs as a RecognitionConfig, e.g. ``language=ko``, ``beam_size=5``.

    ``vad_filter=false`` and ``hotwords=vLLM,Kubernetes`` work too. Values are read as JSON
    where they parse (numbers, true/false), else as text; a repeated field takes a
    comma-separated list.

    Raises:
        ValueError: not ``key=value``, or not a RecognitionConfig field or value.
    """
    fields = transcript_pb2.RecognitionConfig.DESCRIPTOR.fields_by_name
    data: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in fields:
            raise ValueError(f"--config {item!r}: expected key=value with key one of {', '.join(fields)}")
        if fields[key].is_repeated:
            data[key] = [v.strip() for v in raw.split(",") if v.strip()]
            continue
        try:
            data[key] = json.loads(raw)
        except json.JSONDecodeError:
            data[key] = raw
    try:
        return json_format.ParseDict(data, transcript_pb2.RecognitionConfig())
    except json_format.ParseError as exc:
        raise ValueError(f"--config: {exc}") from exc


def load_terms(path: Path) -> list[str]:
    """Glossary terms from a text file (one a line, ``#`` starts a comment) or a glossary file.

    A ``.yaml``/``.yml``/``.json`` file is read as ``scribe glossaries put`` reads it (its ``terms[].term``).
    """
    if path.suffix.lower() in (".yaml", ".yml", ".json"):
        from scribe_cli.glossaries import load_glossary

        return [t.term for t in load_glossary(path).terms]
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line]


def _seconds(job: jobs_pb2.Job) -> float:
    if not (job.HasField("start_time") and job.HasField("end_time")):
        return 0.0
    return (job.end_time.ToNanoseconds() - job.start_time.ToNanoseconds()) / 1e9


def run_model(dataset: datasets.Dataset, config: transcript_pb2.RecognitionConfig, terms: list[str],
              concurrency: int = 4, label: str = "") -> ModelResult:
    """Submit every utterance as a job with ``config``, wait, fetch and score the transcripts.

    Raises:
        grpc.RpcError: the stack cannot be reached (a refused file is recorded, not raised).
    """
    label = label or config.model or "default"
    total = len(dataset.utterances)
    results = [FileResult(utt.name, utt.reference) for utt in dataset.utterances]
    finished = 0
    started = time.perf_counter()

    def score(outcome: jobs.Outcome) -> None:
        nonlocal finished
        result = results[int(outcome.task.key)]
        if outcome.job is not None:
            result.job_id = outcome.job.job_id
            result.audio_seconds, result.processing_seconds = outcome.job.audio_duration, _seconds(outcome.job)
        if outcome.transcript is not None:
            result.hypothesis = outcome.transcript.content.decode("utf-8").strip()
        result.error = outcome.error
        result.words = word_errors(result.reference, result.hypothesis, config.language or None)
        result.chars = character_errors(result.reference, result.hypothesis, config.language or None)
        result.terms = term_counts(terms, result.reference, result.hypothesis)
        finished += 1
        note = f" FAILED {result.error}" if result.error else ""
        print(f"[{label}] {finished}/{total} {result.name}: WER {result.words.rate:.1%} "
              f"CER {result.chars.rate:.1%}{note}", file=sys.stderr, flush=True)

    tasks = []
    for i, utt in enumerate(dataset.utterances):
        spec = jobs_pb2.JobSpec(config=config, filename=utt.path.name if utt.path else utt.name.rsplit("/")[-1],
                                request_id=uuid.uuid4().hex, source_uri=utt.source_uri)
        tasks.append(jobs.Task(str(i), spec, utt.path))
    jobs.run_many(tasks, concurrency=concurrency, fmt=FORMAT_NAMES["txt"], on_done=score)
    return ModelResult(label, results, time.perf_counter() - started, config)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def markdown(runs: list[ModelResult], worst: int = 3) -> str:
    """The side-by-side tables: one row per model, then the worst files with every model's score."""
    lines = [
        "| model | WER | CER | term retention | RTF | wall (s) | files | worst files (CER) |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        failed = sum(1 for f in run.files if f.error)
        files = f"{len(run.files)}" + (f" ({failed} failed)" if failed else "")
        worst_names = ", ".join(f"{f.name} {_pct(f.chars.rate)}" for f in run.worst(worst))
        rtf = "—" if run.rtf is None else f"{run.rtf:.3f}"
        lines.append(f"| {run.model} | {_pct(run.wer)} | {_pct(run.cer)} | {_pct(run.term_retention)} | {rtf} | "
                     f"{run.wall_seconds:.1f} | {files} | {worst_names} |")
    names = list(dict.fromkeys(f.name for run in runs for f in run.worst(worst)))
    if names:
        lines += ["", "| file | " + " | ".join(f"{r.model} WER | {r.model} CER" for r in runs) + " |",
                  "|---|" + "---:|---:|" * len(runs)]
        for name in names:
            cells = []
            for run in runs:
                f = next((f for f in run.files if f.name == name), None)
                cells += ["—", "—"] if f is None else [_pct(f.words.rate), _pct(f.chars.rate)]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "WER and CER are corpus-level (total errors / total reference words or characters; "
              "CER ignores spacing); RTF = processing seconds / audio seconds from the job records."]
    return "\n".join(lines) + "\n"


def cmd_bench(args: argparse.Namespace) -> int:
    """Run DATASET through the platform once per model and print the table."""
    try:
        dataset = datasets.load(args.dataset)
        config = parse_config(args.config or [])
        terms = load_terms(Path(args.glossary)) if args.glossary else []
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if dataset.skipped:
        print(f"skipped {len(dataset.skipped)} audio file(s) without a transcript: {', '.join(dataset.skipped)}",
              file=sys.stderr)
    if not dataset.utterances:
        print(f"error: {args.dataset}: no audio with a transcript", file=sys.stderr)
        return 2
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else [""]
    names = ", ".join(m or "default" for m in models)
    print(f"bench: {len(dataset.utterances)} file(s) ({dataset.kind}), models {names}", file=sys.stderr)
    runs = []
    for model in models:
        model_config = transcript_pb2.RecognitionConfig()
        model_config.CopyFrom(config)
        model_config.model = model
        runs.append(run_model(dataset, model_config, terms, concurrency=max(1, args.concurrency)))
    sys.stdout.write(markdown(runs, worst=args.worst))
    if args.json:
        report = {run.model: run.as_json() for run in runs}
        Path(args.json).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``scribe bench``."""
    p = sub.add_parser("bench", help="score models on a dataset through the platform (WER, CER, RTF)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="folder (x.wav + x.txt), NeMo .jsonl, Lhotse manifests, or s3://bucket/prefix")
    p.add_argument("--models", help="comma-separated models, e.g. base,tiny.en (default: the pool's)")
    p.add_argument("--config", action="append", metavar="KEY=VALUE",
                   help="RecognitionConfig field for every job, e.g. language=ko, beam_size=5 (repeatable)")
    p.add_argument("--glossary", metavar="FILE", help="terms for term retention: one a line, or a glossary YAML/JSON")
    p.add_argument("--json", metavar="FILE", help="write every figure and file as JSON (fractions)")
    p.add_argument("--concurrency", type=int, default=4, help="jobs in flight per model (default 4)")
    p.add_argument("--worst", type=int, default=3, help="worst files to list (default 3)")
    p.set_defaults(func=cmd_bench)
