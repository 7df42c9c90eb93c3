"""``scribe transcribe DIR | 'calls/*.wav' | a.wav b.wav | s3://bucket/prefix``: many files, one command.

What is transcribed:

- a folder: every audio file below it (the suffixes of :data:`scribe_cli.datasets.AUDIO_SUFFIXES`),
  in sorted order;
- a glob (``'calls/**/*.wav'``, quoted so that scribe expands it, ``**`` recursive) or several
  paths (a glob the shell expanded, folders among them): the files named;
- ``s3://bucket/prefix``: the audio objects under the prefix, listed through the platform's
  object store (the settings ``scribe bench`` uses: ``SCRIBE_STORE__*``, else the running embedded
  stack's). Each job names its object (``JobSpec.source_uri``); nothing is downloaded.

A single file (or a glob matching one) is not a bulk run: ``scribe transcribe FILE`` prints its
transcript on stdout as before.

Where outputs go: ``x.wav`` -> ``x.<format>`` beside the input, or under ``--out DIR`` at the
input's path relative to the folder given (for a glob or several paths: relative to their
deepest common folder; for s3: relative to the prefix's last ``/``). ``--out`` is required for
s3 inputs. An output that exists is skipped (no job is submitted) unless ``--overwrite``; outputs
are written atomically, so an interrupted run leaves no partial file to be skipped next time.
Two inputs that would write the same output (``x.wav`` and ``x.mp3``) both fail.

At most ``--concurrency`` jobs (default 4) are in flight. One progress bar on stderr (drawn on a
terminal only); a failed file does not stop the others: the end of the run prints a summary and
a table of file -> reason on stderr, and the exit code is 1 if any file failed.
With ``--request-id``, each file's job gets an idempotency key derived from it and the file's
name, so a rerun after an interruption finds the jobs already created.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import os
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from scribe.v1 import jobs_pb2
from scribe_cli import jobs
from scribe_cli.datasets import AUDIO_SUFFIXES, DatasetError
from scribe_libs.formats import FORMAT_NAMES

_GLOB_CHARS = frozenset("*?[")


class BulkError(ValueError):
    """The arguments name no file, or name them in a way that cannot be run; the message says why."""


@dataclass(frozen=True)
class Item:
    """One input and where its output goes.

    Attributes:
        name: how the report names it (the path as given, or ``s3://bucket/key``).
        output: the output file.
        path: the local audio, or None for an object.
        source_uri: ``s3://bucket/key`` of the audio, or "".
    """

    name: str
    output: Path
    path: Path | None = None
    source_uri: str = ""


def is_glob(arg: str) -> bool:
    """Whether ``arg`` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in arg)


def is_bulk(args: list[str]) -> bool:
    """Whether ``scribe transcribe ARGS`` is a bulk run: a folder, several paths, s3://, a glob of several."""
    if len(args) != 1:
        return True
    arg = args[0]
    if arg.startswith("s3://") or Path(arg).expanduser().is_dir():
        return True
    return is_glob(arg) and not Path(arg).exists() and len(glob.glob(os.path.expanduser(arg), recursive=True)) > 1


def single_file(arg: str) -> Path:
    """The path of a one-file ``scribe transcribe ARG``: ARG itself, or the one match of a glob."""
    path = Path(arg).expanduser()
    if not path.exists() and is_glob(arg):
        matches = glob.glob(os.path.expanduser(arg), recursive=True)
        if len(matches) == 1:
            return Path(matches[0])
    return path


def _audio_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def _output(relative: PurePosixPath | Path, base: Path, fmt: str) -> Path:
    return base / Path(relative).with_suffix(f".{fmt}")


def local_items(args: list[str], fmt: str, out: Path | None) -> list[Item]:
    """The local files ``args`` name (folders, globs, paths) with their outputs.

    Raises:
        BulkError: an argument names nothing (a missing path, a glob without a match) or a
            folder holds no audio.
    """
    inputs: list[tuple[Path, Path]] = []  # (file, the folder its output path is relative to)
    loose: list[Path] = []
    for arg in args:
        path = Path(arg).expanduser()
        if path.is_dir():
            found = _audio_below(path)
            if not found:
                raise BulkError(f"{arg}: no audio files ({' '.join(sorted(AUDIO_SUFFIXES))}) below this folder")
            inputs += [(f, path) for f in found]
        elif path.is_file():
            loose.append(path)
        elif is_glob(arg):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(arg), recursive=True))
            files = [m for m in matches if m.is_file()]
            if not files:
                raise BulkError(f"{arg}: no file matches")
            loose += files
        else:
            raise BulkError(f"{arg}: no such file or folder")
    if loose:
        parents = [str(p.resolve().parent) for p in loose]
        common = Path(os.path.commonpath(parents))
        inputs += [(p, common) for p in loose]
    items, seen = [], set()
    for path, base in inputs:
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        relative = path.resolve().relative_to(base.resolve())
        output = _output(relative, out, fmt) if out else path.with_suffix(f".{fmt}")
        items.append(Item(str(path), output, path=path))
    return items


def s3_items(uri: str, fmt: str, out: Path | None) -> list[Item]:
    """The audio objects under ``s3://bucket/prefix`` with their outputs under ``out``.

    Raises:
        BulkError: no ``--out``, no audio object under the prefix.
        DatasetError: the platform's object store is not configured (see scribe_cli.datasets).
    """
    import asyncio

    from scribe_cli.datasets import _store_settings
    from scribe_libs.objectstore import open_store

    if out is None:
        raise BulkError(f"{uri}: outputs of s3:// inputs need --out DIR (nothing is written into the bucket)")
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise BulkError(f"{uri}: expected s3://bucket/prefix")
    store = open_store(_store_settings())
    keys = asyncio.run(store.list_keys(bucket, prefix))
    audio = [k for k in keys if PurePosixPath(k).suffix.lower() in AUDIO_SUFFIXES]
    if not audio:
        raise BulkError(f"{uri}: no audio objects ({' '.join(sorted(AUDIO_SUFFIXES))}) under this prefix")
    root = prefix.rpartition("/")[0]
    items = []
    for key in audio:
        relative = PurePosixPath(key).relative_to(root) if root else PurePosixPath(key)
        items.append(Item(f"s3://{bucket}/{key}", _output(relative, out, fmt), source_uri=f"s3://{bucket}/{key}"))
    return items


def _write(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically (a temporary file beside it, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(content if content.endswith(b"\n") or not content else content + b"\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _request_id(base: str, name: str) -> str:
    return f"{base}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:16]}"


def run(args: argparse.Namespace, make_spec: Callable[[str], jobs_pb2.JobSpec]) -> int:
    """Transcribe every input ``args.file`` names; outputs and the report as the module docstring says.

    Args:
        args: the ``scribe transcribe`` arguments (``file`` a list; ``format``, ``out``,
            ``overwrite``, ``concurrency``, ``quiet``, ``no_wait``, ``request_id``).
        make_spec: the JobSpec ``scribe transcribe`` sends for a file name (every option applied).

    Returns:
        0 when every file was transcribed or skipped, 1 when any failed, 2 for bad arguments.

    Raises:
        grpc.RpcError: the stack cannot be reached or the key is refused (see scribe_cli.jobs).
    """
    out = Path(args.out).expanduser() if args.out else None
    try:
        s3 = [a for a in args.file if a.startswith("s3://")]
        local = [a for a in args.file if not a.startswith("s3://")]
        items = [i for uri in s3 for i in s3_items(uri, args.format, out)]
        if local:
            items += local_items(local, args.format, out)
    except (BulkError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    failures: dict[str, str] = {}
    by_output: dict[Path, list[Item]] = {}
    for item in items:
        by_output.setdefault(item.output.resolve(), []).append(item)
    for group in (g for g in by_output.values() if len(g) > 1):
        for item in group:
            others = ", ".join(i.name for i in group if i is not item)
            failures[item.name] = f"output {item.output} would also be written for {others}"
    todo, skipped = [], 0
    for item in items:
        if item.name in failures:
            continue
        if item.output.exists() and not args.overwrite and not args.no_wait:
            skipped += 1
            continue
        spec = make_spec(item.path.name if item.path else PurePosixPath(item.source_uri).name)
        spec.request_id = _request_id(args.request_id, item.name) if args.request_id else uuid.uuid4().hex
        spec.source_uri = item.source_uri
        todo.append(jobs.Task(item.name, spec, item.path))
    outputs = {item.name: item.output for item in items}

    from tqdm import tqdm

    print(f"transcribe: {len(items)} file(s), {len(todo)} to submit, {skipped} skipped (output exists"
          f"{'' if args.overwrite else '; --overwrite to redo'}), {len(failures)} refused", file=sys.stderr)
    # disable=None: tqdm draws only on a terminal, so logs and pipes get no control characters.
    bar = tqdm(total=len(todo), unit="file", file=sys.stderr, disable=True if args.quiet else None)
    written = 0

    def done(outcome: jobs.Outcome) -> None:
        nonlocal written
        name = outcome.task.key
        if outcome.error:
            failures[name] = outcome.error
        elif args.no_wait:
            print(f"{outcome.job.job_id}\t{name}", flush=True)
        else:
            try:
                _write(outputs[name], outcome.transcript.content)
                written += 1
            except OSError as exc:
                failures[name] = f"cannot write {outputs[name]}: {exc.strerror or exc}"
        bar.set_postfix_str(f"{len(failures)} failed", refresh=False)
        bar.update(1)

    try:
        jobs.run_many(todo, concurrency=args.concurrency, fmt=FORMAT_NAMES[args.format], on_done=done,
                      wait_for_result=not args.no_wait)
    finally:
        bar.close()
    verb = "submitted" if args.no_wait else "written"
    print(f"transcribe: {len(todo) - len([t for t in todo if t.key in failures])} {verb}, {skipped} skipped, "
          f"{len(failures)} failed", file=sys.stderr)
    if failures:
        width = min(60, max(len(n) for n in failures))
        print(f"{'FILE':<{width}}  REASON", file=sys.stderr)
        for name in [i.name for i in items if i.name in failures]:
            print(f"{name:<{width}}  {failures[name]}", file=sys.stderr)
        return 1
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The bulk options of ``scribe transcribe`` (ignored for a single FILE)."""
    p.add_argument("--out", metavar="DIR",
                   help="with several files: write outputs under DIR, mirroring the inputs' relative paths "
                        "(default: beside each input; required for s3://)")
    p.add_argument("--concurrency", type=int, default=4, help="with several files: jobs in flight (default 4)")
    p.add_argument("--overwrite", action="store_true",
                   help="with several files: transcribe again files whose output exists (default: skip them)")
