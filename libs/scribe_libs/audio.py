"""Audio files: probe (duration, rate, channels, decodability) and decode for Whisper.

Decoding goes through PyAV (FFmpeg), the same library faster-whisper uses, so anything FFmpeg
reads is accepted: wav, flac, mp3, ogg/opus, m4a, and G.711 mu-law/A-law wav from call centers.
:func:`stream_for_whisper` decodes a file in bounded blocks (the transcriber's path, flat memory
for any length); :func:`decode_for_whisper` joins those blocks for callers that want one array.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from scribe_libs.errors import InvalidArgument

WHISPER_SAMPLE_RATE = 16000
"""Whisper's input sample rate, Hz: ``SAMPLE_RATE`` in openai/whisper ``whisper/audio.py``
(faster-whisper's ``FeatureExtractor`` default too). Every decoder of the project produces mono
float32 at this rate: files (:func:`decode_for_whisper`), call audio
(:mod:`scribe_libs.callaudio`) and Decode windows (LINEAR16 at this rate)."""


def _undecodable(exc: BaseException) -> InvalidArgument:
    """``UNDECODABLE_AUDIO`` saying what FFmpeg found wrong, without server paths or errno numbers.

    FFmpeg errors read ``[Errno 1094995529] Invalid data found when processing input: '/tmp/...'``
    (the errno is an FFmpeg tag, AVERROR_INVALIDDATA); only the description is kept.
    """
    if isinstance(exc, av.error.FFmpegError) and getattr(exc, "strerror", None):
        what = str(exc.strerror).rstrip(".")
        what = what[:1].lower() + what[1:]
    elif isinstance(exc, UnicodeDecodeError):
        what = "the file's metadata is not valid text"
    else:
        what = "the file is not audio in a format FFmpeg reads"
    return InvalidArgument(
        "UNDECODABLE_AUDIO",
        f"the audio could not be decoded ({what}); send a complete file in a common format "
        "(wav, flac, mp3, ogg/opus, m4a)",
        field="audio",
    )


@dataclass(frozen=True)
class AudioInfo:
    """What :func:`probe` learned about a file."""

    duration: float
    """Seconds."""
    sample_rate: int
    """Hz of the first audio stream."""
    channels: int
    codec: str
    container: str


def probe(path: Path) -> AudioInfo:
    """Open ``path``, check that its first audio stream decodes, and measure its duration.

    The duration comes from the container header when present; otherwise every frame is decoded
    and counted (slow for long files, exact).

    Raises:
        InvalidArgument: ``UNDECODABLE_AUDIO`` (not a media file, or no frame decodes),
            ``NO_AUDIO_STREAM`` (e.g. a video-only or a text file FFmpeg happens to open),
            ``EMPTY_AUDIO`` (zero duration).
    """
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise _undecodable(exc) from exc
    with container:
        if not container.streams.audio:
            raise InvalidArgument("NO_AUDIO_STREAM", "the upload has no audio stream", field="audio")
        stream = container.streams.audio[0]
        if stream.codec_context is None:
            raise InvalidArgument("UNDECODABLE_AUDIO", "no decoder for the audio codec", field="audio")
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        channels = int(stream.codec_context.channels or 0)
        duration = 0.0
        if container.duration:
            duration = container.duration / av.time_base
        elif stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        decoded_samples = 0
        try:
            for frame in container.decode(stream):
                decoded_samples += frame.samples
                rate = rate or frame.sample_rate
                if duration > 0 and decoded_samples > 0:
                    break
        except (av.error.FFmpegError, ValueError) as exc:
            raise _undecodable(exc) from exc
        if decoded_samples == 0:
            raise InvalidArgument("UNDECODABLE_AUDIO", "no audio frame could be decoded", field="audio")
        if duration <= 0 and rate:
            duration = decoded_samples / rate
        if duration <= 0:
            raise InvalidArgument("EMPTY_AUDIO", "the audio has no duration", field="audio")
        return AudioInfo(
            duration=duration,
            sample_rate=rate,
            channels=channels,
            codec=stream.codec_context.name,
            container=container.format.name,
        )


#: Samples per block of :func:`stream_for_whisper` by default: 30 s at 16 kHz (1.9 MB of float32),
#: Whisper's window; the FIFO before the resampler holds at most 500,000 input samples
#: (faster-whisper's ``_group_frames``), so decoding holds a few MB whatever the file's length.
STREAM_BLOCK_SECONDS = 30.0

_FIFO_SAMPLES = 500_000
"""Input samples grouped before resampling (faster-whisper ``decode_audio``'s ``_group_frames``)."""


def stream_for_whisper(
    path: Path, block_seconds: float = STREAM_BLOCK_SECONDS, channel: int | None = None
) -> Iterator[np.ndarray]:
    """Decode ``path`` incrementally to mono float32 at 16 kHz, in blocks of bounded size.

    The same conversion as faster-whisper's ``decode_audio``: PyAV decodes the first audio
    stream, ``av.AudioResampler`` mixes every channel down to mono (FFmpeg's downmix) and
    resamples to 16 kHz as signed 16-bit, which becomes float32 / 32768. With ``channel``, that
    one channel is kept instead of the mix (a call recording's side: one speaker per channel).
    Frames FFmpeg reports as invalid are skipped. Memory held: one block plus FFmpeg's buffers,
    whatever the file's length.

    Args:
        path: Any file FFmpeg reads.
        block_seconds: Seconds per yielded block (> 0).
        channel: 0-based channel to keep; None mixes every channel down.

    Yields:
        1-D float32 arrays in [-1, 1] of ``round(block_seconds x 16000)`` samples each, the last
        one shorter (never empty). Concatenated, they are :func:`decode_for_whisper`'s array.

    Raises:
        InvalidArgument: ``UNDECODABLE_AUDIO`` (raised by the first ``next()`` for a file that
            does not open or has no audio stream).
    """
    block = max(int(round(block_seconds * WHISPER_SAMPLE_RATE)), 1)
    pending: list[np.ndarray] = []
    held = 0
    try:
        with av.open(str(path), mode="r", metadata_errors="ignore") as container:
            for samples in _resampled(container, channel):
                pending.append(samples)
                held += samples.size
                if held < block:
                    continue
                joined = np.concatenate(pending)
                end = held - held % block
                for start in range(0, end, block):
                    yield joined[start : start + block].astype(np.float32) / 32768.0
                pending, held = [joined[end:]], held - end
        if held:
            yield np.concatenate(pending).astype(np.float32) / 32768.0
    except (av.error.FFmpegError, ValueError, AttributeError, IndexError, UnicodeDecodeError) as exc:
        raise _undecodable(exc) from exc
    finally:
        # PyAV's resampler objects are freed only by the collector
        # (https://github.com/SYSTRAN/faster-whisper/issues/390).
        gc.collect()


def _resampled(container: av.container.InputContainer, channel: int | None = None) -> Iterator[np.ndarray]:
    """The first audio stream as 16 kHz mono int16 arrays of at most a few hundred thousand samples.

    ``channel`` None: FFmpeg's downmix of every channel; else that channel alone (resampled planar,
    the other planes dropped).

    Raises:
        InvalidArgument: ``NO_SUCH_CHANNEL`` when ``channel`` is not below the stream's channels.
    """
    if channel is None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=WHISPER_SAMPLE_RATE)
    else:
        channels = int(container.streams.audio[0].codec_context.channels or 0)
        if not 0 <= channel < channels:
            raise InvalidArgument(
                "NO_SUCH_CHANNEL", f"channel {channel} asked of audio with {channels} channel(s)", field="audio"
            )
        resampler = av.AudioResampler(format="s16p", rate=WHISPER_SAMPLE_RATE)

    def plane(out: av.AudioFrame) -> np.ndarray:
        samples = out.to_ndarray()
        return samples.reshape(-1) if channel is None else samples[channel]

    fifo = av.AudioFifo()
    for frame in _valid_frames(container.decode(audio=0)):
        frame.pts = None  # ignore timestamp gaps (as faster-whisper does)
        fifo.write(frame)
        if fifo.samples >= _FIFO_SAMPLES:
            for out in resampler.resample(fifo.read()):
                yield plane(out)
    rest = [fifo.read()] if fifo.samples else []
    for grouped in (*rest, None):  # None flushes the resampler
        for out in resampler.resample(grouped):
            yield plane(out)


def _valid_frames(frames: Iterator[av.AudioFrame]) -> Iterator[av.AudioFrame]:
    """``frames`` without those FFmpeg reports as invalid data (faster-whisper does the same)."""
    while True:
        try:
            yield next(frames)
        except StopIteration:
            return
        except av.error.InvalidDataError:
            continue


def decode_for_whisper(path: Path) -> np.ndarray:
    """Decode all of ``path`` to mono float32 samples at 16 kHz (:func:`stream_for_whisper` joined).

    Holds the whole file (64,000 bytes per second of audio): for short inputs only; the
    transcriber streams long files through :func:`stream_for_whisper`.

    Returns:
        1-D array of float32 in [-1, 1], length = duration x 16000.

    Raises:
        InvalidArgument: ``UNDECODABLE_AUDIO``.
    """
    blocks = list(stream_for_whisper(path))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)


def header_duration(path: Path) -> float | None:
    """The duration a (possibly still incomplete) file's header states, seconds; None if unknown.

    Never raises: an unreadable partial file just means "not known yet". For RIFF/WAVE the
    header's ``data`` chunk size over the ``fmt `` byte rate is used (FFmpeg would measure only
    the bytes present); other containers go through PyAV.
    """
    wav = _wav_header_duration(path)
    if wav is not None:
        return wav
    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            if container.duration:
                return container.duration / av.time_base
            stream = container.streams.audio[0] if container.streams.audio else None
            if stream is not None and stream.duration and stream.time_base:
                return float(stream.duration * stream.time_base)
    except Exception:  # noqa: BLE001 - partial or odd files are checked again once complete
        return None
    return None


def _wav_header_duration(path: Path) -> float | None:
    """Duration stated by a RIFF/WAVE header (data chunk bytes / byte rate), or None."""
    import struct

    try:
        with path.open("rb") as f:
            head = f.read(64 * 1024)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos, byte_rate = 12, 0
    while pos + 8 <= len(head):
        chunk_id, size = head[pos : pos + 4], struct.unpack("<I", head[pos + 4 : pos + 8])[0]
        if chunk_id == b"fmt " and pos + 16 <= len(head):
            byte_rate = struct.unpack("<I", head[pos + 16 : pos + 20])[0] if pos + 20 <= len(head) else 0
        elif chunk_id == b"data":
            # 0 and 0xFFFFFFFF mean "unknown/streaming" in practice.
            if byte_rate > 0 and 0 < size < 0xFFFFFFFF:
                return size / byte_rate
            return None
        pos += 8 + size + (size & 1)
    return None
