"""``scribe``: run the embedded stack and talk to scribe's gRPC APIs.

Commands:
    scribe up [--models base,tiny.en] [--workers N]   start the embedded stack, print endpoints
    scribe down                                       stop it
    scribe transcribe FILE [--format txt|srt|vtt|json] [--language ko] [--model base]
                      [--hotwords "vLLM,Kubernetes"] [--prompt TEXT] [--word-timestamps] [--no-vad]
                      [--glossary ID] [--redact]
    scribe jobs list|get ID|watch ID|cancel ID|delete ID
    scribe glossaries list|get ID|put FILE|delete ID
    scribe workers
    scribe keys create --id acme-2026-11 --owner acme --scopes jobs:write,jobs:read [--file api-keys.json]
    scribe detect [--models base,tiny.en] [--compute-type auto] [--measure] [--facts t4]
    scribe bench DATASET [--models base,tiny.en] [--config key=value ...] [--json FILE] [--glossary terms.txt]

Exit codes: 0 success, 1 the job failed or was cancelled, 2 a gRPC error or bad usage.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf import json_format

from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
from scribe_cli import bench, detect, glossaries, stack, stream
from scribe_libs.errors import error_info
from scribe_libs.formats import FORMAT_NAMES

CHUNK_BYTES = 1024 * 1024
S = jobs_pb2.JobState


def _state(job: jobs_pb2.Job) -> str:
    return S.Name(job.state).removeprefix("JOB_STATE_")


def _results() -> results_pb2_grpc.ResultsStub:
    return results_pb2_grpc.ResultsStub(stack.channel("results"))


def _requests(path: Path, spec: jobs_pb2.JobSpec) -> Iterator[ingest_pb2.CreateJobRequest]:
    yield ingest_pb2.CreateJobRequest(spec=spec)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield ingest_pb2.CreateJobRequest(audio=chunk)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded stack."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"starting scribe (models {', '.join(models)}, {args.workers} transcriber(s)); "
          "the first start may take a minute while models load...", file=sys.stderr)
    state = stack.up(stack.UpOptions(models=models, workers=args.workers, compute_type=args.compute_type))
    print(f"nats            {state['nats']['url']}")
    for name, info in state["services"].items():
        print(f"{name:<16}{info['address']}")
    print(f"logs            {state['log_dir']}")
    print(f"api key         {stack.home() / 'api-key'} (admin; the CLI uses it, or set SCRIBE_API_KEY)")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the embedded stack."""
    print("scribe stopped" if stack.down() else "no scribe stack was running", file=sys.stderr)
    return 0


def _watch(results: results_pb2_grpc.ResultsStub, job_id: str, show_progress: bool) -> jobs_pb2.Job:
    from tqdm import tqdm

    # disable=None: tqdm draws only on a terminal, so logs and pipes get no control characters.
    bar = tqdm(total=100, unit="%", file=sys.stderr, disable=None if show_progress else True,
               bar_format="{desc} {bar} {n:.0f}%")
    job = jobs_pb2.Job()
    try:
        for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id)):
            job = update.job
            desc = _state(job)
            if job.state == S.JOB_STATE_QUEUED:
                desc += f" (position {job.queue_position}, eta {job.eta_seconds:.0f}s)"
            bar.set_description_str(f"{desc:<40}")
            bar.n = round(job.progress * 100, 1)
            bar.refresh()
    finally:
        bar.close()
    return job


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Upload FILE, follow the job, print the transcript."""
    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    config = transcript_pb2.RecognitionConfig(
        language=args.language or "",
        model=args.model or "",
        hotwords=[h.strip() for h in (args.hotwords or "").split(",") if h.strip()],
        initial_prompt=args.prompt or "",
        word_timestamps=args.word_timestamps,
        beam_size=args.beam_size,
    )
    if args.no_vad:
        config.vad_filter = False
    spec = jobs_pb2.JobSpec(
        config=config, filename=path.name, request_id=args.request_id or uuid.uuid4().hex,
        retain_audio=args.retain_audio, glossary_ids=args.glossary or [], redact=args.redact,
    )
    ingest = ingest_pb2_grpc.IngestStub(stack.channel("ingest"))
    reply = ingest.CreateJob(_requests(path, spec))
    job_id = reply.job.job_id
    print(f"job {job_id} {_state(reply.job)}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        return 0
    results = _results()
    job = _watch(results, job_id, show_progress=not args.quiet)
    if job.state != S.JOB_STATE_COMPLETED:
        print(f"job {job_id} {_state(job)}: {job.error_reason} {job.error_message}".rstrip(), file=sys.stderr)
        return 1
    request = results_pb2.GetTranscriptRequest(job_id=job_id, format=FORMAT_NAMES[args.format])
    transcript = results.GetTranscript(request)
    sys.stdout.write(transcript.content.decode("utf-8"))
    if not transcript.content.endswith(b"\n"):
        sys.stdout.write("\n")
    return 0


def _job_line(job: jobs_pb2.Job) -> str:
    created = datetime.fromtimestamp(job.create_time.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    extra = f"pos {job.queue_position}" if job.state == S.JOB_STATE_QUEUED else f"{job.progress * 100:.0f}%"
    return (f"{job.job_id}  {_state(job):<14} {extra:>8}  {job.audio_duration:8.1f}s  "
            f"{job.spec.config.model:<10} {created}  {job.spec.filename}")


def cmd_jobs(args: argparse.Namespace) -> int:
    """List, show, watch, cancel or delete jobs."""
    results = _results()
    if args.action == "list":
        reply = results.ListJobs(results_pb2.ListJobsRequest(page_size=args.limit))
        for job in reply.jobs:
            print(_job_line(job))
        return 0
    if not args.job_id:
        print(f"error: scribe jobs {args.action} needs a job id", file=sys.stderr)
        return 2
    if args.action == "get":
        job = results.GetJob(results_pb2.GetJobRequest(job_id=args.job_id)).job
        print(json_format.MessageToJson(job, preserving_proto_field_name=True))
    elif args.action == "watch":
        for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=args.job_id)):
            print(_job_line(update.job), flush=True)
    elif args.action == "cancel":
        job = results.CancelJob(results_pb2.CancelJobRequest(job_id=args.job_id)).job
        print(_job_line(job))
    elif args.action == "delete":
        results.DeleteJob(results_pb2.DeleteJobRequest(job_id=args.job_id))
        print(f"deleted {args.job_id}")
    return 0


def cmd_workers(args: argparse.Namespace) -> int:
    """Table of live worker profiles.

    LIVE: live streaming channels / measured realtime capacity; WINDOW: measured device seconds
    per streaming window.
    """
    reply = _results().ListWorkers(results_pb2.ListWorkersRequest(pool=args.pool or ""))
    now = datetime.now(UTC).timestamp()
    print(f"{'POOL':<10}{'WORKER':<28}{'DEVICE':<22}{'COMPUTE':<16}{'MODELS':<20}{'MEM(MB)':>9}"
          f"{'LOAD':>6}{'RTF':>7}{'LIVE':>9}{'WINDOW(s)':>10}{'AGE':>8}")
    for p in reply.workers:
        device = p.device + (f" {p.gpu_name}" if p.gpu_name else f" {p.cpu_cores} cores")
        downgraded = p.compute_type_requested not in ("auto", p.compute_type_effective)
        compute = p.compute_type_effective + ("*" if downgraded else "")
        age = now - p.start_time.seconds
        print(f"{p.pool:<10}{p.worker_id[:27]:<28}{device[:21]:<22}{compute:<16}{','.join(p.models_loaded)[:19]:<20}"
              f"{p.memory_used_by_models_bytes / 1e6:>9.0f}{p.current_load:>6}{p.real_time_factor:>7.3f}"
              f"{f'{p.realtime_sessions}/{p.realtime_capacity}':>9}{p.realtime_window_cost_seconds:>10.3f}{age:>7.0f}s")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Create a key (printed once; its hash appended to the key file) or list the file's keys."""
    import json

    from scribe_libs.auth import generate_key

    path = Path(args.file)
    data = json.loads(path.read_text()) if path.exists() else {"keys": []}
    if args.action == "list":
        for entry in data["keys"]:
            print(f"{entry['id']:<24} owner={entry.get('owner', entry['id']):<16} scopes={','.join(entry['scopes'])}")
        return 0
    if not args.id:
        print("error: scribe keys create needs --id", file=sys.stderr)
        return 2
    if any(e["id"] == args.id for e in data["keys"]):
        print(f"error: key id {args.id!r} already in {path}", file=sys.stderr)
        return 2
    try:
        key, entry = generate_key(args.id, args.owner or args.id, [s.strip() for s in args.scopes.split(",")],
                                  service=args.service)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    data["keys"].append(entry)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(key)
    print(f"added {args.id} (owner {entry['owner']}, scopes {','.join(entry['scopes'])}) to {path}; "
          "the key above is shown only now", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="scribe", description="scribe speech-to-text platform")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the embedded stack")
    p.add_argument("--models", default="base", help="comma-separated models to load (first is the default)")
    p.add_argument("--workers", type=int, default=1, help="transcriber processes in the pool")
    p.add_argument("--compute-type", default="auto")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the embedded stack")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("transcribe", help="transcribe an audio file")
    p.add_argument("file")
    p.add_argument("--format", choices=sorted(FORMAT_NAMES), default="txt")
    p.add_argument("--language", help="ISO 639-1 code, or auto (default)")
    p.add_argument("--model", help="model name (default: the pool's)")
    p.add_argument("--hotwords", help="comma-separated terms to bias decoding towards")
    p.add_argument("--prompt", help="initial prompt")
    p.add_argument("--word-timestamps", action="store_true")
    p.add_argument("--beam-size", type=int, default=0)
    p.add_argument("--no-vad", action="store_true", help="decode without voice activity detection")
    p.add_argument("--retain-audio", action="store_true", help="keep the original audio after transcription")
    p.add_argument("--request-id", help="idempotency key (default: a new one)")
    p.add_argument("--glossary", action="append", metavar="ID",
                   help="stored glossary to apply (repeatable; ID or ID@VERSION)")
    p.add_argument("--redact", action="store_true", help="replace phone, card, e-mail and RRN numbers in every output")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_transcribe)

    p = sub.add_parser("jobs", help="list, get, watch, cancel or delete jobs")
    p.add_argument("action", choices=["list", "get", "watch", "cancel", "delete"])
    p.add_argument("job_id", nargs="?")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("keys", help="create API keys (hashes go to the key file) or list them")
    p.add_argument("action", choices=["create", "list"])
    p.add_argument("--file", default="api-keys.json", help="key file (JSON, hashes only)")
    p.add_argument("--id", help="key id, e.g. acme-2026-11")
    p.add_argument("--owner", help="whose jobs the key sees (default: the id); keys of one owner share jobs")
    p.add_argument("--scopes", default="jobs:write,jobs:read",
                   help="comma-separated: jobs:write, jobs:read, stream, admin; internal with --service")
    p.add_argument("--service", action="store_true",
                   help="a service key (may hold scope internal, e.g. the stream gateway's worker key)")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("workers", help="live worker profiles")
    p.add_argument("--pool")
    p.set_defaults(func=cmd_workers)

    glossaries.add_parser(sub)
    stream.add_parser(sub)
    detect.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; gRPC errors print their code, reason and message."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        info = error_info(exc)
        reason = f" {info.reason}" if info else ""
        print(f"error: {exc.code().name}{reason}: {exc.details()}", file=sys.stderr)
        return 2
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
