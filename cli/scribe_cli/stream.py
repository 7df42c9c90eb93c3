"""``scribe stream FILE``: replay a file as a live call through the stream gateway.

The file is decoded with PyAV and sent as a call center would: LINEAR16 at 16 kHz by default, or
G.711 mu-law / A-law at 8 kHz (``--encoding``); with ``--channels agent,customer`` its first two
channels are sent interleaved, each recognised on its own with its role. Audio goes out in 100 ms
chunks (a typical RTP packetisation is 20 ms; 100 ms keeps the message count low with the same
pacing); with ``--realtime`` each chunk is sent when its audio would have been spoken, otherwise as
fast as the gateway accepts it. Interim lines are printed as ``~ [role] text`` and finals as
``[start-end] [role] text``; ``--finals-only`` prints only the final text.

The helpers (:func:`load_call_audio`, :func:`call_requests`) are also what the streaming tests and
``tools/bench_streaming.py`` use to replay audio.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

from scribe.v1 import streaming_pb2, streaming_pb2_grpc
from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.callaudio import AudioEncoding, encode_call_audio, encoding_from_proto

#: Audio per request, seconds.
CHUNK_SECONDS = 0.1
#: ``--encoding`` values: the AudioEncoding names in lower case.
ENCODING_NAMES = tuple(e.value.lower() for e in AudioEncoding)


def read_audio(path: Path, sample_rate: int = WHISPER_SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    """Decode a file to float32 ``[n, channels]`` at ``sample_rate`` (mono files are duplicated).

    Raises:
        av.error.FFmpegError: not an audio file FFmpeg reads.
    """
    layout = "mono" if channels == 1 else "stereo"
    resampler = av.AudioResampler(format="flt", layout=layout, rate=sample_rate)
    parts = []
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            frame.pts = None
            parts += [f.to_ndarray() for f in resampler.resample(frame)]
        parts += [f.to_ndarray() for f in resampler.resample(None)]
    if not parts:
        return np.zeros((0, channels), dtype=np.float32)
    # Packed float: each array is [1, n * channels], interleaved.
    return np.concatenate([p.reshape(-1) for p in parts]).astype(np.float32).reshape(-1, channels)


def load_call_audio(path: Path, encoding: str = "linear16", channels: int = 1) -> tuple[bytes, int, int]:
    """The file as a call's raw bytes.

    Args:
        path: Any audio file.
        encoding: ``linear16`` (16 kHz), ``mulaw`` or ``alaw`` (8 kHz).
        channels: 1, or 2 for the file's first two channels interleaved.

    Returns:
        (bytes, the ``scribe.v1.AudioEncoding`` value, sample rate in Hz).

    Raises:
        ValueError: ``encoding`` is not one of :data:`ENCODING_NAMES`.
    """
    enc = AudioEncoding(encoding.upper())
    audio = read_audio(path, WHISPER_SAMPLE_RATE, channels)
    samples = audio[:, 0] if channels == 1 else audio
    data, rate = encode_call_audio(samples, enc, WHISPER_SAMPLE_RATE)
    return data, enc.proto, rate


def bytes_per_second(encoding: int, sample_rate: int, channels: int) -> int:
    """Bytes of one second of call audio (``encoding``: a ``scribe.v1.AudioEncoding`` value).

    Raises:
        InvalidArgument: ``UNSUPPORTED_ENCODING`` for a value that is not a supported encoding.
    """
    return encoding_from_proto(encoding).bytes_per_sample * sample_rate * channels


def call_requests(
    config: streaming_pb2.StreamingConfig,
    data: bytes,
    realtime: bool = False,
    chunk_seconds: float = CHUNK_SECONDS,
    on_send: Callable[[float], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[streaming_pb2.StreamingRecognizeRequest]:
    """The requests of a replayed call: the config, then the audio in chunks.

    Args:
        config: First message.
        data: Raw call bytes.
        realtime: Send each chunk when its audio ends in a live call (the clock starts at the first
            chunk and runs while the gateway decodes: a slow gateway cannot slow the "speaker").
        chunk_seconds: Audio per request.
        on_send: Called with the audio time (s) sent so far after each chunk (for latency metrics).
        stop: When set, the generator ends early (the caller half-closes).
    """
    yield streaming_pb2.StreamingRecognizeRequest(config=config)
    rate = bytes_per_second(config.encoding, config.sample_rate_hertz, config.audio_channel_count or 1)
    frame = rate // config.sample_rate_hertz
    step = max(int(rate * chunk_seconds) // frame * frame, frame)
    started = time.monotonic()
    for lo in range(0, len(data), step):
        if stop is not None and stop.is_set():
            return
        chunk = data[lo : lo + step]
        sent = (lo + len(chunk)) / rate
        if realtime:
            delay = started + sent - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield streaming_pb2.StreamingRecognizeRequest(audio=chunk)
        if on_send is not None:
            on_send(sent)


def _print(response: streaming_pb2.StreamingRecognizeResponse, finals_only: bool) -> None:
    kind = response.WhichOneof("response")
    if kind == "result":
        r = response.result
        role = f"[{r.role}] " if r.role else (f"[ch{r.channel}] " if r.channel else "")
        if r.is_final:
            if finals_only:
                print(f"{role}{r.text}" if role else r.text, flush=True)
            else:
                print(f"[{r.start:7.2f}-{r.end:7.2f}] {role}{r.text}", flush=True)
        elif not finals_only:
            print(f"~ {role}{r.text}  (stability {r.stability:.2f})", file=sys.stderr, flush=True)
    elif kind == "summary" and not finals_only:
        s = response.summary
        print(f"-- {s.audio_seconds:.1f} s of audio, {s.final_results} finals, job {s.job_id or '(not stored)'}",
              file=sys.stderr)


def cmd_stream(args: argparse.Namespace) -> int:
    """Replay FILE as a live call and print the results."""
    from scribe_cli import stack

    path = Path(args.file)
    if not path.is_file():
        print(f"error: {path} is not a file", file=sys.stderr)
        return 2
    roles = [r.strip() for r in (args.channels or "").split(",") if r.strip()]
    if len(roles) > 2:
        print("error: --channels takes one or two roles", file=sys.stderr)
        return 2
    channels = max(len(roles), 1)
    data, encoding, rate = load_call_audio(path, args.encoding, channels)
    config = streaming_pb2.StreamingConfig(
        encoding=encoding, sample_rate_hertz=rate, audio_channel_count=channels, channel_roles=roles,
        language=args.language or "", model=args.model or "", interim_results=not args.finals_only,
        word_timestamps=True, retain_audio=args.retain_audio,
    )
    stub = streaming_pb2_grpc.StreamGatewayStub(stack.channel("stream_gateway"))
    for response in stub.StreamingRecognize(call_requests(config, data, realtime=args.realtime)):
        _print(response, args.finals_only)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``scribe stream``."""
    p = subparsers.add_parser("stream", help="replay an audio file as a live call (streaming recognition)")
    p.add_argument("file")
    p.add_argument("--realtime", action="store_true", help="send at real-time pace (default: as fast as accepted)")
    p.add_argument("--channels", help="roles of the file's channels, e.g. agent,customer (two = stereo)")
    p.add_argument("--encoding", choices=sorted(ENCODING_NAMES), default="linear16",
                   help="linear16 (16 kHz) or G.711 mulaw/alaw transcoded to 8 kHz")
    p.add_argument("--finals-only", action="store_true", help="print only the final text")
    p.add_argument("--language", help="ISO 639-1 code, or auto (default)")
    p.add_argument("--model", help="model name (default: the workers' realtime model)")
    p.add_argument("--retain-audio", action="store_true", help="keep the call's audio with the stored job")
    p.set_defaults(func=cmd_stream)
