"""``scribe``: run the embedded stack and talk to scribe's gRPC APIs.

Commands:
    scribe up [--models base,tiny.en] [--workers N] [--port 50051]
                                                      start the embedded stack, endpoints on stderr
    scribe down                                       stop it
    scribe status                                     gRPC address, HTTP URL, metrics, API key file
    scribe transcribe FILE [--format txt|srt|vtt|json] [--language ko] [--model base]
                      [--hotwords "vLLM,Kubernetes"] [--prompt TEXT] [--word-timestamps] [--no-vad]
                      [--glossary ID] [--redact] [--retain-audio] [--label KEY=VALUE]
    scribe transcribe DIR | 'calls/*.wav' | FILE FILE... | s3://bucket/prefix [--out DIR]
                      [--concurrency 4] [--overwrite]   many files, each output beside its input or under --out
    scribe jobs list|get ID|watch ID|cancel ID|delete ID
    scribe glossaries list|get ID|put FILE|delete ID
    scribe workers
    scribe keys create --id acme-2026-11 --owner acme --scopes jobs:write,jobs:read [--file api-keys.json]
    scribe detect [--models base,tiny.en] [--compute-type auto] [--measure] [--facts t4]
    scribe bench DATASET [--models base,tiny.en] [--config key=value ...] [--json FILE] [--glossary terms.txt]
    scribe export JOB_ID... | --label KEY=VALUE --out DIR [--audio-dir DIR] [--compare-model M --max-cer 0.1]
                                                      Lhotse recordings + supervisions manifests

Exit codes: 0 success, 1 the job failed or was cancelled, 2 a gRPC error or bad usage.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import uuid
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

# Only what every command needs is imported here (stack: the state file, channels; it imports
# grpc). A command's own modules (protobuf messages, bulk, formats, and the subcommand modules
# below, some of which import numpy and PyAV) are imported when it runs, so that `scribe down`
# starts in a fraction of a second (cli/tests/test_cli_imports.py checks it).
from scribe_cli import stack

if TYPE_CHECKING:
    from scribe.v1 import ingest_pb2, jobs_pb2, results_pb2_grpc

CHUNK_BYTES = 1024 * 1024
#: Commands registered inline by :func:`build_parser`.
CORE_COMMANDS = ("up", "down", "status", "transcribe", "jobs", "keys", "workers")
#: Commands whose module ``scribe_cli.<name>`` registers them (``add_parser(sub)``), in help order.
MODULE_COMMANDS = ("glossaries", "stream", "detect", "bench", "export")


def _state(job: jobs_pb2.Job) -> str:
    from scribe.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(job.state).removeprefix("JOB_STATE_")


def _results() -> results_pb2_grpc.ResultsStub:
    from scribe.v1 import results_pb2_grpc

    return results_pb2_grpc.ResultsStub(stack.channel("results"))


def _requests(path: Path, spec: jobs_pb2.JobSpec) -> Iterator[ingest_pb2.CreateJobRequest]:
    from scribe_cli import jobs

    return jobs.create_requests(path, spec)


def cmd_up(args: argparse.Namespace) -> int:
    """Start the embedded stack."""
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    print(f"starting scribe (models {', '.join(models)}, {args.workers} transcriber(s)); "
          "the first start may take a minute while models load...", file=sys.stderr)
    state = stack.up(stack.UpOptions(models=models, workers=args.workers, compute_type=args.compute_type,
                                     port=args.port, metrics_port=args.metrics_port, http_port=args.http_port))
    # stderr: stdout carries only what a command is for (`make run ... > x.srt` gets the transcript).
    _print_endpoints(state, sys.stderr)
    return 0


def _print_endpoints(state: dict, file) -> None:  # noqa: ANN001 - a text stream
    for label, value in stack.endpoints(state):
        print(f"{label:<28}{value}", file=file)


def cmd_status(args: argparse.Namespace) -> int:
    """Print the running stack's endpoints: gRPC address, HTTP URL, metrics, API key file."""
    state = stack.load_state()
    if state is None:
        print(f"no scribe stack is running (no {stack.state_file()}); start one with `scribe up`", file=sys.stderr)
        return 1
    _print_endpoints(state, sys.stdout)
    processes = {**state["services"], "frontdoor": state.get("frontdoor"), "http_gateway": state.get("http_gateway")}
    down = [name for name, info in processes.items() if info and "pid" in info and not stack.alive(info["pid"])]
    if down:
        print(f"warning: not running: {', '.join(down)} (see their logs)", file=sys.stderr)
        return 1
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """Stop the embedded stack."""
    print("scribe stopped" if stack.down() else "no scribe stack was running", file=sys.stderr)
    return 0


def _watch(results: results_pb2_grpc.ResultsStub, job_id: str, show_progress: bool) -> jobs_pb2.Job:
    from scribe.v1 import results_pb2

    updates = (u.job for u in results.WatchJob(results_pb2.WatchJobRequest(job_id=job_id)))
    return _progress(updates, show_progress)


def _progress(updates: Iterable[jobs_pb2.Job], show_progress: bool) -> jobs_pb2.Job:
    """Follow job records to the last, drawing a progress bar on stderr (a terminal only)."""
    from tqdm import tqdm

    from scribe.v1 import jobs_pb2

    S = jobs_pb2.JobState

    # disable=None: tqdm draws only on a terminal, so logs and pipes get no control characters.
    bar = tqdm(total=100, unit="%", file=sys.stderr, disable=None if show_progress else True,
               bar_format="{desc} {bar} {n:.0f}%")
    job = jobs_pb2.Job()
    try:
        for job in updates:
            desc = _state(job)
            if job.state == S.JOB_STATE_QUEUED:
                desc += f" (position {job.queue_position}, eta {job.eta_seconds:.0f}s)"
            bar.set_description_str(f"{desc:<40}")
            bar.n = round(job.progress * 100, 1)
            bar.refresh()
    finally:
        bar.close()
    return job


def _spec(args: argparse.Namespace, filename: str) -> jobs_pb2.JobSpec:
    """The JobSpec of ``scribe transcribe``'s options for one file (a new request id unless --request-id)."""
    from scribe.v1 import jobs_pb2, transcript_pb2

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
    labels = dict(item.partition("=")[::2] for item in args.label or [])
    return jobs_pb2.JobSpec(
        config=config, filename=filename, request_id=args.request_id or uuid.uuid4().hex,
        retain_audio=args.retain_audio, glossary_ids=args.glossary or [], redact=args.redact, labels=labels,
    )


def cmd_transcribe(args: argparse.Namespace) -> int:
    """Upload FILE, follow the job, print the transcript; many files (a folder, a glob, s3://) go to scribe_cli.bulk."""
    from scribe.v1 import jobs_pb2
    from scribe_cli import bulk
    from scribe_libs.formats import FORMAT_NAMES

    S = jobs_pb2.JobState
    if bulk.is_bulk(args.file):
        return bulk.run(args, lambda filename: _spec(args, filename))
    path = bulk.single_file(args.file[0])
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    spec = _spec(args, path.name)
    # One file: through the client library (scribe_client): its upload, retries (the spec's
    # request id makes CreateJob safe to resend), watch and transcript download.
    with stack.client() as client:
        created = client.submit(
            path, spec.config, filename=spec.filename, request_id=spec.request_id, retain_audio=spec.retain_audio,
            glossary_ids=list(spec.glossary_ids), redact=spec.redact, labels=dict(spec.labels),
        )
        job_id = created.job_id
        print(f"job {job_id} {_state(created)}", file=sys.stderr)
        if args.no_wait:
            print(job_id)
            return 0
        job = _progress(client.watch(job_id), show_progress=not args.quiet)
        if job.state != S.JOB_STATE_COMPLETED:
            print(f"job {job_id} {_state(job)}: {job.error_reason} {job.error_message}".rstrip(), file=sys.stderr)
            return 1
        text = client.get_transcript(job_id, format=FORMAT_NAMES[args.format])
    sys.stdout.write(text)
    if not text.endswith("\n"):
        sys.stdout.write("\n")
    return 0


def _job_line(job: jobs_pb2.Job) -> str:
    from scribe.v1 import jobs_pb2

    S = jobs_pb2.JobState
    created = datetime.fromtimestamp(job.create_time.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")
    extra = f"pos {job.queue_position}" if job.state == S.JOB_STATE_QUEUED else f"{job.progress * 100:.0f}%"
    return (f"{job.job_id}  {_state(job):<14} {extra:>8}  {job.audio_duration:8.1f}s  "
            f"{job.spec.config.model:<10} {created}  {job.spec.filename}")


def cmd_jobs(args: argparse.Namespace) -> int:
    """List, show, watch, cancel or delete jobs."""
    from google.protobuf import json_format

    from scribe.v1 import results_pb2

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
    from scribe.v1 import results_pb2

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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of every command, or only of what ``command`` needs.

    Args:
        command: A command of :data:`CORE_COMMANDS` or :data:`MODULE_COMMANDS`: the modules of the
            other commands are not imported (``scribe transcribe``'s imports bulk and formats; a
            module command's, its module). None: every command (``scribe --help`` lists them).
    """
    parser = argparse.ArgumentParser(prog="scribe", description="scribe speech-to-text platform")
    parser.add_argument("--address", default="", metavar="HOST:PORT",
                        help="a scribe front door to call (default: $SCRIBE_ADDRESS, else the local stack's)")
    parser.add_argument("--api-key", default="",
                        help="API key to send (default: $SCRIBE_API_KEY, else the local stack's)")
    parser.add_argument("--tls", action="store_true", help="TLS to --address (system roots unless --ca-cert)")
    parser.add_argument("--ca-cert", default="", metavar="PEM", help="root certificate(s) for --tls (implies --tls)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the embedded stack")
    p.add_argument("--models", default="base", help="comma-separated models to load (first is the default)")
    p.add_argument("--workers", type=int, default=1, help="transcriber processes in the pool")
    p.add_argument("--compute-type", default="auto")
    p.add_argument("--port", type=int, default=stack.DEFAULT_PORT,
                   help="the one gRPC port (front door) of every public service (default %(default)s)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="first Prometheus port, one per instance from there (default: --port + 1; 0: none)")
    p.add_argument("--http-port", type=int, default=None,
                   help="port of the OpenAI-compatible HTTP gateway when installed (default: its own, 8080)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop the embedded stack")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="the running stack's gRPC address, HTTP URL, metrics and API key file")
    p.set_defaults(func=cmd_status)

    if command in (None, "transcribe"):
        from scribe_cli import bulk
        from scribe_libs.formats import FORMAT_NAMES

        p = sub.add_parser("transcribe", help="transcribe an audio file, or many (a folder, a glob, s3://bucket/prefix)")
        p.add_argument("file", nargs="+",
                       help="audio file (transcript on stdout); or folders, a quoted glob, several files, "
                            "s3://bucket/prefix (outputs beside the inputs or under --out)")
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
        p.add_argument("--redact", action="store_true",
                       help="replace phone, card, e-mail and RRN numbers in every output")
        p.add_argument("--no-wait", action="store_true", help="print the job id and return")
        p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
        p.add_argument("--label", action="append", metavar="KEY=VALUE",
                       help="job label (repeatable), e.g. batch=2026-12; `scribe export --label` selects by it")
        bulk.add_arguments(p)
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

    for name in MODULE_COMMANDS:
        if command in (None, name):
            importlib.import_module(f"scribe_cli.{name}").add_parser(sub)
    return parser


#: Global options before the command: those that take a value, and flags.
_GLOBAL_VALUE_OPTIONS = frozenset({"--address", "--api-key", "--ca-cert"})
_GLOBAL_FLAGS = frozenset({"--tls"})


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word after the global options.

    None: no command, another option first (``--help``), or an unknown word.
    """
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_VALUE_OPTIONS:
            next(words, None)
            continue
        if word in _GLOBAL_FLAGS or word.split("=", 1)[0] in _GLOBAL_VALUE_OPTIONS:
            continue
        if word.startswith("-"):
            return None
        return word if word in CORE_COMMANDS or word in MODULE_COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    """Run a command; gRPC errors print their code, reason and message."""
    args = build_parser(_command(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    stack.CONNECTION = stack.Connection(args.address.strip(), args.api_key.strip(), args.tls, args.ca_cert.strip())
    try:
        return args.func(args)
    except grpc.RpcError as exc:
        from scribe_libs.errors import error_info

        info = error_info(exc)
        reason = f" {info.reason}" if info else ""
        print(f"error: {exc.code().name}{reason}: {exc.details()}", file=sys.stderr)
        return 2
    except stack.StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the client library's errors (scribe_client.ScribeError): same line
        from scribe_client import ScribeError

        if not isinstance(exc, ScribeError):
            raise
        reason = f" {exc.reason}" if exc.reason else ""
        code = exc.code.name if exc.code is not None else "ERROR"
        print(f"error: {code}{reason}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
