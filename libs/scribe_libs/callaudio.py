"""Call audio: decode raw telephony chunks to Whisper's float32 mono 16 kHz, and encode back to G.711.

A live call arrives as raw sample bytes with no container: ``LINEAR16`` (signed 16-bit
little-endian PCM), ``MULAW`` or ``ALAW`` (ITU-T G.711, one byte per sample), at a fixed sample
rate, with 1 or 2 interleaved channels (e.g. agent and customer on a stereo recording).
:class:`CallAudioDecoder` turns such a byte stream, in chunks of any size, into one float32
array per channel at 16 kHz (:data:`scribe_libs.audio.WHISPER_SAMPLE_RATE`).

The encodings are one table (:class:`AudioEncoding`): each one's ``scribe.v1.AudioEncoding``
value (:attr:`AudioEncoding.proto`, :func:`encoding_from_proto`) and its bytes per sample;
:func:`decode_samples` turns bytes of any of them into float32, :func:`encode_call_audio` turns
float32 back into what a call center sends.

G.711 is decoded through 256-entry lookup tables and encoded with the segment search of the
ITU-T G.711 reference algorithm (as in Sun Microsystems' public-domain ``g711.c``, which CPython's
``audioop`` also used; ``audioop`` is deprecated since 3.11 and removed in 3.13, so it is not used
here, only compared against in the tests where it still exists).

Resampling uses PyAV's ``av.AudioResampler`` (FFmpeg's libswresample) rather than ``soxr``:
PyAV is already a dependency of this package and of faster-whisper (it decodes files), and
libswresample keeps its filter state between calls, so a stream resampled in chunks of any size
gives exactly the samples of the same stream resampled in one call (checked by the tests,
bit-identical), with no clicks at chunk boundaries and no lost or duplicated samples. The
resampler holds back a few milliseconds of output (its filter delay, ~2 ms at 8 -> 16 kHz) until
more input or :meth:`CallAudioDecoder.flush` arrives; sample ``i`` of the output is always at
``i / 16000`` seconds from the start of the stream.
"""

from __future__ import annotations

from enum import StrEnum

import av
import numpy as np

from scribe.v1 import streaming_pb2
from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.errors import InvalidArgument

#: Input rates accepted, Hz: telephony (8000), wideband (16000) and common studio rates.
SUPPORTED_SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
#: Channel counts accepted (mono, or two interleaved channels such as agent/customer).
SUPPORTED_CHANNELS = (1, 2)
#: The G.711 rate, Hz: what :func:`encode_mulaw` / :func:`encode_alaw` produce.
G711_SAMPLE_RATE = 8000


class AudioEncoding(StrEnum):
    """Sample encodings of call audio (names as in Google Speech-to-Text's ``AudioEncoding``)."""

    LINEAR16 = "LINEAR16"
    """Signed 16-bit little-endian PCM, 2 bytes per sample."""
    MULAW = "MULAW"
    """G.711 mu-law, 1 byte per sample (North America, Japan)."""
    ALAW = "ALAW"
    """G.711 A-law, 1 byte per sample (Europe, most of the world)."""

    @property
    def proto(self) -> streaming_pb2.AudioEncoding.ValueType:
        """The ``scribe.v1.AudioEncoding`` value, e.g. ``AUDIO_ENCODING_MULAW``."""
        return _ENCODINGS[self][0]

    @property
    def bytes_per_sample(self) -> int:
        """Bytes of one sample of one channel: 2 for LINEAR16, 1 for G.711."""
        return _ENCODINGS[self][1]


_ENCODINGS: dict[AudioEncoding, tuple[streaming_pb2.AudioEncoding.ValueType, int]] = {
    # encoding: (scribe.v1.AudioEncoding value, bytes per sample)
    AudioEncoding.LINEAR16: (streaming_pb2.AUDIO_ENCODING_LINEAR16, 2),
    AudioEncoding.MULAW: (streaming_pb2.AUDIO_ENCODING_MULAW, 1),
    AudioEncoding.ALAW: (streaming_pb2.AUDIO_ENCODING_ALAW, 1),
}
_FROM_PROTO = {proto: encoding for encoding, (proto, _) in _ENCODINGS.items()}


def encoding_from_proto(value: int, field: str = "encoding") -> AudioEncoding:
    """The encoding of a ``scribe.v1.AudioEncoding`` value (``StreamingConfig.encoding``).

    Args:
        value: The enum value as received (any int: proto3 keeps unknown values).
        field: The request field, for the error (e.g. ``"config.encoding"``).

    Raises:
        InvalidArgument: ``UNSUPPORTED_ENCODING`` (field ``field``) for ``AUDIO_ENCODING_UNSPECIFIED``
            or a value this version does not know.
    """
    try:
        return _FROM_PROTO[value]
    except KeyError:
        names = [streaming_pb2.AudioEncoding.Name(proto) for proto in _FROM_PROTO]
        raise InvalidArgument(
            "UNSUPPORTED_ENCODING", f"{field} must be {', '.join(names[:-1])} or {names[-1]}", field=field
        ) from None


# --- G.711 (ITU-T Recommendation G.711, 1988; algorithm as in Sun's public-domain g711.c) -------


def _mulaw_table() -> np.ndarray:
    """The 256 linear values (int16) of the mu-law code words (g711.c ``ulaw2linear``)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """The 256 linear values (int16) of the A-law code words (g711.c ``alaw2linear``)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


MULAW_TO_LINEAR16 = _mulaw_table()
"""int16[256]: linear PCM value of each mu-law byte."""
ALAW_TO_LINEAR16 = _alaw_table()
"""int16[256]: linear PCM value of each A-law byte."""

# Segment end points of the reference encoder (g711.c seg_uend / seg_aend).
_SEG_UEND = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_SEG_AEND = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)


def linear16_to_mulaw(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 PCM to mu-law bytes (g711.c ``linear2ulaw`` on the 14-bit value).

    Args:
        pcm: int16 samples, any shape.

    Returns:
        uint8 array of the same shape.
    """
    val = pcm.astype(np.int32) >> 2
    negative = val < 0
    mask = np.where(negative, 0x7F, 0xFF)
    val = np.minimum(np.abs(val), 8159) + (0x84 >> 2)
    seg = np.searchsorted(_SEG_UEND, val, side="left")
    uval = (seg << 4) | ((val >> (seg + 1)) & 0x0F)
    uval = np.where(seg >= 8, 0x7F, uval)
    return (uval ^ mask).astype(np.uint8)


def linear16_to_alaw(pcm: np.ndarray) -> np.ndarray:
    """Encode int16 PCM to A-law bytes (g711.c ``linear2alaw`` on the 13-bit value).

    Args:
        pcm: int16 samples, any shape.

    Returns:
        uint8 array of the same shape.
    """
    val = pcm.astype(np.int32) >> 3
    negative = val < 0
    mask = np.where(negative, 0x55, 0xD5)
    val = np.where(negative, -val - 1, val)
    seg = np.searchsorted(_SEG_AEND, val, side="left")
    shift = np.where(seg < 2, 1, seg)
    aval = (np.minimum(seg, 7) << 4) | ((val >> shift) & 0x0F)
    aval = np.where(seg >= 8, 0x7F, aval)
    return (aval ^ mask).astype(np.uint8)


def float_to_int16(audio: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16 (clipped, rounded; full scale 1.0 -> 32767)."""
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


_TO_LINEAR16 = {AudioEncoding.MULAW: MULAW_TO_LINEAR16, AudioEncoding.ALAW: ALAW_TO_LINEAR16}


def decode_samples(data: bytes, encoding: str = AudioEncoding.LINEAR16) -> np.ndarray:
    """Raw sample bytes to float32 in [-1, 1) (int16 full scale: value / 32768).

    Interleaved channels stay interleaved (reshape to ``[-1, channels]``); no resampling.

    Args:
        data: Whole samples: a multiple of the encoding's bytes per sample.
        encoding: An :class:`AudioEncoding` (or its name); LINEAR16 when left out.

    Returns:
        float32 ``[len(data) // bytes_per_sample]``.

    Raises:
        ValueError: ``data`` ends inside a sample, or ``encoding`` is not an AudioEncoding.
    """
    encoding = AudioEncoding(encoding)
    if encoding is AudioEncoding.LINEAR16:
        pcm = np.frombuffer(data, dtype="<i2")
    else:
        pcm = _TO_LINEAR16[encoding][np.frombuffer(data, dtype=np.uint8)]
    return pcm.astype(np.float32) / 32768.0


# --- resampling -------------------------------------------------------------------------------


class StreamResampler:
    """Streaming mono float32 resampler (FFmpeg libswresample through PyAV).

    Feed chunks of any size with :meth:`process`; call :meth:`flush` once at the end of the
    stream for the filter's last few milliseconds. The concatenated output equals the one-shot
    resampling of the concatenated input, sample for sample. When both rates are equal it is the
    identity (no copy of the filter delay).

    Args:
        in_rate: Input sample rate, Hz.
        out_rate: Output sample rate, Hz.
    """

    def __init__(self, in_rate: int, out_rate: int = WHISPER_SAMPLE_RATE):
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._resampler = None if in_rate == out_rate else av.AudioResampler(format="flt", layout="mono", rate=out_rate)

    def process(self, audio: np.ndarray) -> np.ndarray:
        """Resample one chunk. ``audio``: float32[n]; returns float32[m], m ~ n * out/in."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self._resampler is None:
            return audio
        if audio.size == 0:
            return np.zeros(0, dtype=np.float32)
        frame = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples the filter still holds (end of stream); the resampler is spent afterwards."""
        if self._resampler is None:
            return np.zeros(0, dtype=np.float32)
        out = self._collect(self._resampler.resample(None))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.out_rate)
        return out

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)


def resample(audio: np.ndarray, in_rate: int, out_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Resample a whole mono float32 signal (one call of :class:`StreamResampler` plus flush)."""
    resampler = StreamResampler(in_rate, out_rate)
    return np.concatenate([resampler.process(audio), resampler.flush()])


# --- validation -------------------------------------------------------------------------------


def validate_format(encoding: str, sample_rate: int, channels: int, field_prefix: str = "") -> AudioEncoding:
    """Check a stream's audio format and return its :class:`AudioEncoding`.

    Args:
        encoding: ``"LINEAR16"``, ``"MULAW"`` or ``"ALAW"`` (an :class:`AudioEncoding` also works).
        sample_rate: Hz, one of :data:`SUPPORTED_SAMPLE_RATES`.
        channels: 1 or 2.
        field_prefix: Prepended to the field names in errors, e.g. ``"config."``.

    Raises:
        InvalidArgument: ``UNSUPPORTED_ENCODING`` (field ``encoding``), ``UNSUPPORTED_SAMPLE_RATE``
            (field ``sample_rate_hertz``), ``UNSUPPORTED_CHANNELS`` (field ``audio_channel_count``).
    """
    try:
        enc = AudioEncoding(encoding)
    except ValueError:
        names = ", ".join(e.value for e in AudioEncoding)
        raise InvalidArgument(
            "UNSUPPORTED_ENCODING",
            f"audio encoding {encoding!r} is not supported (use one of {names})",
            field=f"{field_prefix}encoding",
        ) from None
    if sample_rate not in SUPPORTED_SAMPLE_RATES:
        raise InvalidArgument(
            "UNSUPPORTED_SAMPLE_RATE",
            f"sample rate {sample_rate} Hz is not supported (use one of {list(SUPPORTED_SAMPLE_RATES)})",
            field=f"{field_prefix}sample_rate_hertz",
        )
    if channels not in SUPPORTED_CHANNELS:
        raise InvalidArgument(
            "UNSUPPORTED_CHANNELS",
            f"{channels} audio channels are not supported (use 1 or 2)",
            field=f"{field_prefix}audio_channel_count",
        )
    return enc


# --- decoder ----------------------------------------------------------------------------------


class CallAudioDecoder:
    """Decode a call's raw audio byte stream, chunk by chunk, to float32 16 kHz per channel.

    Bytes that do not complete a frame (one sample of every channel: 2 bytes x channels for
    LINEAR16, 1 byte x channels for G.711) are kept and prepended to the next chunk, so chunk
    boundaries may fall anywhere, even inside a sample.

    Args:
        encoding: See :func:`validate_format`.
        sample_rate: Input rate, Hz.
        channels: Number of interleaved channels.
        field_prefix: For the field names of validation errors.

    Raises:
        InvalidArgument: From :func:`validate_format`.
    """

    def __init__(self, encoding: str, sample_rate: int, channels: int = 1, field_prefix: str = ""):
        self.encoding = validate_format(encoding, sample_rate, channels, field_prefix)
        self.sample_rate = sample_rate
        self.channels = channels
        self.frame_bytes = self.encoding.bytes_per_sample * channels
        self._pending = b""
        self._resamplers = [StreamResampler(sample_rate) for _ in range(channels)]
        self.input_frames = 0
        """Frames (samples per channel) decoded so far."""
        self.discarded_bytes = 0
        """Bytes of an incomplete last frame dropped by :meth:`flush` (a truncated stream)."""

    @property
    def pending_bytes(self) -> int:
        """Bytes held back because they do not complete a frame yet."""
        return len(self._pending)

    @property
    def input_seconds(self) -> float:
        """Seconds of audio decoded so far (complete frames only)."""
        return self.input_frames / self.sample_rate

    def decode(self, chunk: bytes) -> list[np.ndarray]:
        """Decode one chunk.

        Args:
            chunk: Raw bytes of any length.

        Returns:
            One float32 array per channel at 16 kHz, values in [-1, 1); the arrays of one call
            have equal length (possibly 0).
        """
        data = self._pending + bytes(chunk)
        usable = len(data) - len(data) % self.frame_bytes
        self._pending = data[usable:]
        if usable == 0:
            return [np.zeros(0, dtype=np.float32) for _ in range(self.channels)]
        frames = decode_samples(data[:usable], self.encoding).reshape(-1, self.channels)
        self.input_frames += frames.shape[0]
        return [r.process(frames[:, c]) for c, r in enumerate(self._resamplers)]

    def flush(self) -> list[np.ndarray]:
        """End of stream: the resamplers' held-back samples, one array per channel.

        An incomplete last frame cannot be decoded: its bytes are dropped and counted in
        :attr:`discarded_bytes`.
        """
        self.discarded_bytes += len(self._pending)
        self._pending = b""
        return [r.flush() for r in self._resamplers]


# --- encoders (a call center's view of a file) -----------------------------------------------


def encode_linear16(audio: np.ndarray) -> bytes:
    """Float32 samples (mono ``[n]`` or interleaved-ready ``[n, channels]``) to LINEAR16 bytes."""
    return float_to_int16(np.asarray(audio)).astype("<i2").tobytes()


def _to_8k(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim == 1:
        return resample(audio, sample_rate, G711_SAMPLE_RATE)
    return np.stack([resample(audio[:, c], sample_rate, G711_SAMPLE_RATE) for c in range(audio.shape[1])], axis=1)


def encode_mulaw(audio: np.ndarray, sample_rate: int) -> bytes:
    """Transcode audio to 8 kHz G.711 mu-law bytes, as a call center would send it.

    Args:
        audio: float32 in [-1, 1], ``[n]`` (mono) or ``[n, channels]`` (interleaved on output).
        sample_rate: Rate of ``audio``, Hz (any rate FFmpeg resamples from).

    Returns:
        One byte per sample and channel at 8000 Hz.
    """
    return linear16_to_mulaw(float_to_int16(_to_8k(audio, sample_rate))).tobytes()


def encode_alaw(audio: np.ndarray, sample_rate: int) -> bytes:
    """Transcode audio to 8 kHz G.711 A-law bytes (see :func:`encode_mulaw`)."""
    return linear16_to_alaw(float_to_int16(_to_8k(audio, sample_rate))).tobytes()


def encode_call_audio(audio: np.ndarray, encoding: str, sample_rate: int) -> tuple[bytes, int]:
    """Audio as a call center sends it in ``encoding``: LINEAR16 at its own rate, G.711 at 8 kHz.

    Args:
        audio: float32 in [-1, 1], ``[n]`` (mono) or ``[n, channels]`` (interleaved on output).
        encoding: An :class:`AudioEncoding` (or its name).
        sample_rate: Rate of ``audio``, Hz.

    Returns:
        (the bytes, their sample rate in Hz: ``sample_rate`` for LINEAR16, 8000 for G.711).

    Raises:
        ValueError: ``encoding`` is not an AudioEncoding.
    """
    encoding = AudioEncoding(encoding)
    if encoding is AudioEncoding.LINEAR16:
        return encode_linear16(audio), sample_rate
    encode = encode_mulaw if encoding is AudioEncoding.MULAW else encode_alaw
    return encode(audio, sample_rate), G711_SAMPLE_RATE
