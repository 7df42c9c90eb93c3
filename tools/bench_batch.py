"""Batch benchmark: raw faster-whisper vs the whole platform, same audio, same model, one run.

(a) raw: faster-whisper's BatchedInferencePipeline in this process (model already loaded);
(b) platform: the embedded stack (nats-server + every service as its own process, as `scribe up`
    runs it), timed from the first CreateJob byte to the transcript being available through
    Results.GetTranscript.

Prints both wall times (median of --repeats), the ratio raw/platform (target >= 0.9: the platform
costs at most ~10% over the library), the WER of both against each other (scribe_libs.scoring),
and the transcriber process's peak RSS (VmHWM).

    python tools/bench_batch.py [--model tiny.en] [--audio FILE] [--repeats 3]

With no --audio, ../shared/data/jfk.flac is repeated six times (66 s of real speech); without
../shared/data the committed espeak fixtures are used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from scribe_libs.scoring import wer

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"


def make_audio(out: Path) -> Path:
    """>= 60 s of real speech as one wav (sox-free: PyAV concatenation)."""
    import av
    import numpy as np

    sources = [SHARED / "jfk.flac"] * 6 if (SHARED / "jfk.flac").exists() else [
        ROOT / "tests" / "fixtures" / "speech_en.wav",
        ROOT / "tests" / "fixtures" / "numbers_en.wav",
    ] * 5
    from faster_whisper.audio import decode_audio

    audio = np.concatenate([decode_audio(str(s), sampling_rate=16000) for s in sources])
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    with av.open(str(out), "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out


def raw_runner(model_name: str, audio: Path, batch_size: int):  # noqa: ANN201 - a callable
    """A function that runs one raw transcription and returns (seconds, text)."""
    import asyncio

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from scribe_libs.models import ModelRegistry, ModelSettings

    path = asyncio.run(ModelRegistry(ModelSettings(allow_download=False)).resolve(model_name))
    model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=os.cpu_count() or 0)
    pipeline = BatchedInferencePipeline(model)

    def run() -> tuple[float, str]:
        started = time.perf_counter()
        segments, _ = pipeline.transcribe(str(audio), batch_size=batch_size, beam_size=5)
        text = " ".join(s.text.strip() for s in segments)
        return time.perf_counter() - started, text

    return run


def run_both(model_name: str, audio: Path, repeats: int, batch_size: int):  # noqa: ANN201
    """Interleaved runs (raw, platform, raw, platform, ...) so both see the same machine load."""
    from scribe.v1 import ingest_pb2, ingest_pb2_grpc, jobs_pb2, results_pb2, results_pb2_grpc, transcript_pb2
    from scribe_cli import stack

    os.environ["SCRIBE_HOME"] = tempfile.mkdtemp(prefix="scribe-bench-")
    # Free ports only: the bench runs beside a user's `scribe up` (50051, 50052...).
    state = stack.up(stack.UpOptions(models=[model_name], workers=1, port=0, metrics_port=0, http_port=0))
    try:
        channel_ingest = grpc.insecure_channel(stack.address_of("ingest"))
        channel_results = grpc.insecure_channel(stack.address_of("results"))
        headers = stack.client_metadata()
        ingest = ingest_pb2_grpc.IngestStub(channel_ingest)
        results = results_pb2_grpc.ResultsStub(channel_results)
        data = audio.read_bytes()
        raw = raw_runner(model_name, audio, batch_size)
        raw_times, raw_text, times, text = [], "", [], ""
        for _ in range(repeats):
            seconds, raw_text = raw()
            raw_times.append(seconds)
            def requests():
                yield ingest_pb2.CreateJobRequest(spec=jobs_pb2.JobSpec(config=transcript_pb2.RecognitionConfig()))
                for i in range(0, len(data), 1 << 20):
                    yield ingest_pb2.CreateJobRequest(audio=data[i : i + (1 << 20)])

            started = time.perf_counter()
            job = ingest.CreateJob(requests(), metadata=headers).job
            for update in results.WatchJob(results_pb2.WatchJobRequest(job_id=job.job_id), metadata=headers):
                last = update.job
            reply = results.GetTranscript(
                results_pb2.GetTranscriptRequest(job_id=job.job_id, format=transcript_pb2.TRANSCRIPT_FORMAT_TXT),
                metadata=headers,
            )
            times.append(time.perf_counter() - started)
            if last.state != jobs_pb2.JOB_STATE_COMPLETED:
                raise SystemExit(f"job ended {last.state}: {last.error_message}")
            text = reply.content.decode().replace("\n", " ")
        pid = next(v["pid"] for k, v in state["services"].items() if k.startswith("transcriber"))
        status = Path(f"/proc/{pid}/status").read_text()
        peak_kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        return raw_times, raw_text, times, text, peak_kib * 1024
    finally:
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--audio", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="must match the transcriber's (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audio = args.audio or make_audio(Path(tmp) / "bench.wav")
        duration = float(subprocess.run(
            [sys.executable, "-c", f"import av; c=av.open({str(audio)!r}); print(c.duration/1e6)"],
            capture_output=True, text=True, check=True).stdout)
        print(f"audio: {audio.name}, {duration:.1f} s; model {args.model} int8 on {os.cpu_count()} CPU cores; "
              f"median of {args.repeats}")
        raw_times, raw_text, platform_times, platform_text, peak_rss = run_both(
            args.model, audio, args.repeats, args.batch_size)
    raw, platform = statistics.median(raw_times), statistics.median(platform_times)
    print(f"(a) raw faster-whisper batched pipeline : {raw:6.2f} s  (RTF {raw / duration:.3f})  runs {raw_times}")
    print(f"(b) platform, CreateJob -> transcript  : {platform:6.2f} s  (RTF {platform / duration:.3f})  "
          f"runs {platform_times}")
    print(f"ratio raw/platform                      : {raw / platform:.3f}  (target >= 0.9)")
    print(f"WER platform vs raw text                : {wer(raw_text, platform_text):.3f}")
    print(f"transcriber peak RSS (VmHWM)            : {peak_rss / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
