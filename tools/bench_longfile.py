"""Long files in flat memory: peak RSS of the transcriber's batch path for 10 min, 1 h, 2 h (4 h).

For each length, a file is generated with sox into a temporary directory (16 kHz mono FLAC): one
minute made of a speech fixture (tests/fixtures, a different one each minute) and low white noise
(-60 dBFS, so Silero VAD has a floor to reject), repeated. Each file is transcribed in a fresh
subprocess through the transcriber's real path (``Engine.transcribe``: streamed decode, pieces,
Silero VAD, ``BatchedInferencePipeline``) with tiny.en int8 on the CPU, and the child's peak
resident set size is read from ``os.wait4`` (``ru_maxrss``, the kernel's high-water mark of that
process alone; the child also reports ``VmHWM`` and its RSS after loading the model).

Printed: audio hours, wall seconds of the transcription, RTF, peak RSS MB, RSS after the model
load, ratio of the peak to the 10-minute file's. Target (issue 11): 2 h within 1.2x of 10 min.
Decoding the whole file first, as the transcriber did before, held at least 64,000 bytes per audio
second on top of that (4 bytes x 16,000 Hz: 38 MB for 10 min, 461 MB for 2 h, 922 MB for 4 h),
plus Silero's batched copy of it (~1.1x again).

Run: ``python tools/bench_longfile.py [--include-4h] [--piece-seconds 600] [--threads 2]``
(minutes: mostly noise, which VAD skips; about 8 s of speech per minute).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CLIPS = ["speech_en.wav", "numbers_en.wav", "terms_en.wav"]
LENGTHS = [("10 min", 600), ("1 h", 3600), ("2 h", 7200)]
FOUR_HOURS = ("4 h", 14400)
MODEL = "tiny.en"


def make_audio(tmp: Path, seconds: int) -> Path:
    """``seconds`` of audio (a whole number of minutes): each minute a speech clip then noise."""
    minutes = []
    for i, clip in enumerate(CLIPS):
        unit = tmp / f"minute-{i}.wav"
        if not unit.exists():
            noise = tmp / f"noise-{i}.wav"
            pad = 60.0 - float(subprocess.run(["soxi", "-D", str(FIXTURES / clip)], check=True, capture_output=True,
                                              text=True).stdout)
            subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(noise), "synth", f"{pad:.6f}",
                            "whitenoise", "vol", "0.001"], check=True)
            subprocess.run(["sox", str(FIXTURES / clip), str(noise), str(unit)], check=True)
        minutes.append(unit)
    block = tmp / "three-minutes.wav"
    if not block.exists():
        subprocess.run(["sox", *map(str, minutes), str(block)], check=True)
    out = tmp / f"audio-{seconds}s.flac"
    blocks, rest = divmod(seconds // 60, 3)
    parts = [str(block)] * blocks + [str(m) for m in minutes[:rest]]
    subprocess.run(["sox", *parts, str(out)], check=True)  # one sox call (a few hundred inputs at most)
    return out


def vm_hwm_kb() -> int:
    """This process's peak resident set size (``VmHWM`` of /proc/self/status), kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def vm_rss_kb() -> int:
    """This process's resident set size now (``VmRSS``), kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def child(path: Path, threads: int, piece_seconds: float) -> dict:
    """Load tiny.en int8 on the CPU and transcribe ``path`` once through ``Engine.transcribe``."""
    import asyncio

    from scribe.v1 import transcript_pb2
    from scribe_libs.devices import SystemProbe, decide, select_device
    from scribe_libs.devices.loader import ModelLoader
    from scribe_libs.models import ModelRegistry, ModelSettings
    from scribe_transcriber.engine import Engine

    registry = ModelRegistry(ModelSettings(allow_download=False))
    loader = ModelLoader("cpu", 0, threads, lambda name: asyncio.run(registry.resolve(name)))
    decision = decide(select_device(SystemProbe().probe(), "cpu").facts, [MODEL], "int8", measure=loader.measure)
    if not decision.ready:
        return {"error": decision.not_ready_reason}
    engine = Engine(loader, decision, [MODEL], piece_seconds=piece_seconds)
    loaded_kb = vm_rss_kb()
    progress: list[tuple[float, float]] = []
    started = time.monotonic()
    transcript, cancelled = engine.transcribe(
        path, transcript_pb2.RecognitionConfig(model=MODEL, language="en"), batch_size=8,
        on_progress=lambda done, total: progress.append((done, total)), cancelled=threading.Event(),
    )
    wall = time.monotonic() - started
    return {
        "audio_seconds": transcript.duration,
        "wall_seconds": wall,
        "segments": len(transcript.segments),
        "words": sum(len(s.text.split()) for s in transcript.segments),
        "last_end": transcript.segments[-1].end if transcript.segments else 0.0,
        "progress_end": progress[-1] if progress else None,
        "loaded_rss_kb": loaded_kb,
        "vm_hwm_kb": vm_hwm_kb(),
        "cancelled": cancelled,
    }


def run_child(path: Path, threads: int, piece_seconds: float) -> dict:
    """Run :func:`child` in a fresh interpreter; add its peak RSS from ``wait4``."""
    with tempfile.TemporaryFile("w+") as errors:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(path), "--threads", str(threads), "--piece-seconds",
             str(piece_seconds)],
            stdout=subprocess.PIPE, stderr=errors, text=True,
        )
        out = proc.stdout.read()  # type: ignore[union-attr]
        # wait4 reaps the child and gives its own rusage (RUSAGE_CHILDREN would be the max of all).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors.seek(0)
        err = errors.read()
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {err.strip()[-800:]}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["maxrss_kb"] = usage.ru_maxrss  # kB on Linux
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--include-4h", action="store_true", help="also 4 h of audio")
    parser.add_argument("--piece-seconds", type=float, default=600.0, help="Engine piece length (the default)")
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 threads")
    parser.add_argument("--only", help="comma-separated minutes to run (e.g. 10,60), instead of the set")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child), args.threads, args.piece_seconds)))
        return 0
    lengths = LENGTHS + ([FOUR_HOURS] if args.include_4h else [])
    if args.only:
        wanted = sorted({int(m) * 60 for m in args.only.split(",")})
        names = dict((s, n) for n, s in [*LENGTHS, FOUR_HOURS])
        lengths = [(names.get(s, f"{s // 60} min"), s) for s in wanted]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-longfile-") as tmp_name:
        tmp = Path(tmp_name)
        for name, seconds in lengths:
            made = time.monotonic()
            path = make_audio(tmp, seconds)
            print(f"{name}: generated {path.stat().st_size / 2**20:.0f} MiB FLAC in {time.monotonic() - made:.0f} s; "
                  "transcribing...", file=sys.stderr, flush=True)
            result = run_child(path, args.threads, args.piece_seconds)
            path.unlink()
            if "error" in result:
                print(f"{name}: failed: {result['error']}", file=sys.stderr)
                continue
            rows.append((name, result))
            print(f"{name}: {json.dumps(result)}", file=sys.stderr, flush=True)
    if not rows:
        return 1
    base = rows[0][1]["maxrss_kb"]
    print(f"\ntiny.en int8, {args.threads} CPU threads, pieces of {args.piece_seconds:g} s, batch 8")
    print(f"{'audio':>7} {'hours':>6} {'wall s':>8} {'RTF':>7} {'peak RSS MB':>12} {'after load MB':>14} "
          f"{'vs ' + rows[0][0]:>10} {'segments':>9} {'whole-file array MB':>20}")
    for name, r in rows:
        hours = r["audio_seconds"] / 3600
        print(f"{name:>7} {hours:6.2f} {r['wall_seconds']:8.1f} {r['wall_seconds'] / r['audio_seconds']:7.4f} "
              f"{r['maxrss_kb'] / 1024:12.0f} {r['loaded_rss_kb'] / 1024:14.0f} {r['maxrss_kb'] / base:9.2f}x "
              f"{r['segments']:9d} {4 * 16000 * r['audio_seconds'] / 1e6:20.0f}")
    print("(whole-file array MB: what decoding the whole file first held on top, 4 B x 16 kHz x seconds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
