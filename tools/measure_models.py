"""Measure model memory and real-time factor on this machine, through the transcriber's code path.

For each model: probe the CPU, decide at the requested compute type with the model loaded for
real (``ModelLoader.measure``: resident-set-size delta on CPU, NVML on CUDA), then transcribe each
audio file with ``Engine.transcribe`` (the batch path: Silero VAD + BatchedInferencePipeline) and
print the memory and RTF (processing seconds / audio seconds; the first decode of a model
includes warm-up, so each file is decoded twice and the second run is reported).

Each model is measured in a fresh process (RSS deltas of a second model in the same process are
blurred by memory the first one freed).

Run: ``python tools/measure_models.py [--models tiny.en,base] [--compute-type int8] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = 2
FILES = [ROOT / "tests" / "fixtures" / "speech_en.wav", ROOT.parent / "shared" / "data" / "jfk.flac"]


def measure_one(model: str, compute_type: str, threads: int) -> dict:
    from scribe.v1 import transcript_pb2
    from scribe_libs.devices import SystemProbe, decide, select_device
    from scribe_libs.devices.loader import ModelLoader
    from scribe_libs.models import ModelRegistry, ModelSettings
    from scribe_transcriber.engine import Engine  # the batch path it measures

    registry = ModelRegistry(ModelSettings(allow_download=False))
    probe = SystemProbe()
    selection = select_device(probe.probe(), "cpu")
    loader = ModelLoader("cpu", 0, threads, lambda name: asyncio.run(registry.resolve(name)))
    decision = decide(selection.facts, [model], compute_type, measure=loader.measure)
    if not decision.ready:
        return {"model": model, "error": decision.not_ready_reason}
    engine = Engine(loader, decision, [model])
    out = {
        "model": model,
        "compute_type": engine.compute_type,
        "threads": threads,
        "memory_bytes": engine.memory_used_by_models(),
        "load_seconds": round(sum(m.load_seconds for m in engine.models.values()), 2),
        "files": [],
    }
    for path in FILES:
        if not path.is_file():
            continue
        config = transcript_pb2.RecognitionConfig(model=model, language="en")
        for _ in range(RUNS):
            transcript, _ = engine.transcribe(
                path, config, batch_size=8, on_progress=lambda done, total: None, cancelled=threading.Event()
            )
        out["files"].append({
            "file": path.name,
            "audio_seconds": round(transcript.duration, 2),
            "processing_seconds": round(transcript.processing_seconds, 3),
            "rtf": round(transcript.processing_seconds / transcript.duration, 4),
            "runs": RUNS,
            "text": " ".join(s.text for s in transcript.segments)[:80],
        })
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny.en,base")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one model, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one, args.compute_type, args.threads)))
        return 0
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        child = subprocess.run(
            [sys.executable, __file__, "--one", model, "--compute-type", args.compute_type, "--threads",
             str(args.threads)],
            capture_output=True, text=True, check=False,
        )
        if child.returncode != 0:
            print(f"{model}: failed: {child.stderr.strip()[-500:]}")
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        if "error" in result:
            print(f"{model}: not ready: {result['error']}")
            continue
        print(f"{model} {result['compute_type']} ({result['threads']} threads): memory "
              f"{result['memory_bytes']} bytes ({result['memory_bytes'] / 2**20:.0f} MiB), load "
              f"{result['load_seconds']} s")
        for f in result["files"]:
            print(f"  {f['file']}: {f['audio_seconds']} s audio, {f['processing_seconds']} s -> RTF {f['rtf']}"
                  f"  | {f['text']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
