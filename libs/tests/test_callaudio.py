"""Call-audio decoding: G.711 tables, round trips, chunk boundaries, errors."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest

from scribe_libs import callaudio as ca
from scribe_libs.errors import InvalidArgument


def _audioop():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return importlib.import_module("audioop")
        except ImportError:
            return None


def _sine(freq: float, rate: int, seconds: float, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _snr_db(ref: np.ndarray, test: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - test) ** 2)))


def _random_split(data, rng, parts: int):
    cuts = np.sort(rng.choice(np.arange(1, len(data)), size=parts, replace=False))
    bounds = [0, *cuts.tolist(), len(data)]
    return [data[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# --- G.711 against the reference implementation ----------------------------------------------


def test_g711_tables_and_encoders_match_the_reference_codec():
    audioop = _audioop()
    if audioop is None:
        pytest.skip("audioop (the g711.c reference in CPython) is gone in this Python")
    codes = bytes(range(256))
    assert np.array_equal(np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"), ca.MULAW_TO_LINEAR16)
    assert np.array_equal(np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"), ca.ALAW_TO_LINEAR16)
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert np.array_equal(np.frombuffer(audioop.lin2ulaw(pcm.tobytes(), 2), np.uint8), ca.linear16_to_mulaw(pcm))
    assert np.array_equal(np.frombuffer(audioop.lin2alaw(pcm.tobytes(), 2), np.uint8), ca.linear16_to_alaw(pcm))


def test_g711_known_code_words():
    # G.711: mu-law 0xFF/0x7F are +0/-0 and 0x80/0x00 the extremes (+-32124); A-law 0xD5/0x55 are
    # the smallest magnitudes (+-8) and 0xAA/0x2A the extremes (+-32256).
    assert ca.MULAW_TO_LINEAR16[0xFF] == 0 and ca.MULAW_TO_LINEAR16[0x7F] == 0
    assert ca.MULAW_TO_LINEAR16[0x80] == 32124 and ca.MULAW_TO_LINEAR16[0x00] == -32124
    assert ca.ALAW_TO_LINEAR16[0xD5] == 8 and ca.ALAW_TO_LINEAR16[0x55] == -8
    assert ca.ALAW_TO_LINEAR16[0xAA] == 32256 and ca.ALAW_TO_LINEAR16[0x2A] == -32256


@pytest.mark.parametrize(
    ("encoding", "encode"), [("MULAW", ca.encode_mulaw), ("ALAW", ca.encode_alaw)], ids=["mulaw", "alaw"]
)
def test_g711_round_trip_snr_above_30_db(encoding, encode):
    # A speech-level tone (-13 dBFS peak) through the codec at 8 kHz. G.711's SNR for such a
    # level is ~38 dB (ITU-T G.712 asks >= 35 dB at -10 dBm0); 30 dB is the bound asserted.
    audio = _sine(440.0, 8000, 1.0, amp=0.22)
    data = encode(audio, 8000)
    assert len(data) == len(audio)
    decoder = ca.CallAudioDecoder(encoding, 8000, 1)
    out = np.concatenate([decoder.decode(data)[0], decoder.flush()[0]])
    ref = ca.resample(audio, 8000)
    assert len(out) == len(ref) == 16000
    assert _snr_db(ref[400:-400], out[400:-400]) > 30.0


def test_16k_file_transcoded_to_8k_mulaw_comes_back_at_16k():
    # What `scribe stream --encoding mulaw` does: 16 kHz file -> 8 kHz mu-law -> gateway -> 16 kHz.
    audio = _sine(300.0, 16000, 2.0, amp=0.25) + _sine(1200.0, 16000, 2.0, amp=0.05)
    data = ca.encode_mulaw(audio, 16000)
    assert len(data) == 16000  # 2 s at 8 kHz, 1 byte per sample
    decoder = ca.CallAudioDecoder("MULAW", 8000, 1)
    out = np.concatenate([decoder.decode(data)[0], decoder.flush()[0]])
    assert abs(len(out) - len(audio)) <= 1
    n = min(len(out), len(audio))
    assert _snr_db(audio[800 : n - 800], out[800 : n - 800]) > 25.0


# --- chunk boundaries --------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [8000, 24000, 44100, 48000])
def test_resampling_in_random_chunks_equals_one_go(rate):
    rng = np.random.default_rng(rate)
    audio = _sine(440.0, rate, 1.5) + _sine(97.0, rate, 1.5, amp=0.1)
    one = ca.resample(audio, rate)
    stream = ca.StreamResampler(rate)
    chunks = [stream.process(c) for c in _random_split(audio, rng, 60)]
    many = np.concatenate([*chunks, stream.flush()])
    assert len(many) == len(one)
    assert abs(len(one) - round(len(audio) * 16000 / rate)) <= 1
    np.testing.assert_array_equal(many, one)  # no clicks, no lost or repeated samples
    # and no discontinuity: past the onset transient, no step exceeds the tones' steepest slope
    steepest = (0.3 * 2 * np.pi * 440 + 0.1 * 2 * np.pi * 97) / 16000
    assert np.max(np.abs(np.diff(many[200:-200]))) < 1.05 * steepest


@pytest.mark.parametrize("encoding", ["LINEAR16", "MULAW", "ALAW"])
def test_stereo_chunks_split_anywhere_decode_like_one_chunk(encoding):
    rng = np.random.default_rng(7)
    left, right = _sine(300.0, 8000, 1.0), _sine(1000.0, 8000, 1.0, amp=0.1)
    stereo = np.stack([left, right], axis=1)
    if encoding == "LINEAR16":
        data = ca.encode_linear16(stereo)
    else:
        codec = ca.linear16_to_mulaw if encoding == "MULAW" else ca.linear16_to_alaw
        data = codec(ca.float_to_int16(stereo)).tobytes()
    whole = ca.CallAudioDecoder(encoding, 8000, 2)
    one = [np.concatenate(p) for p in zip(whole.decode(data), whole.flush(), strict=True)]
    pieces = ca.CallAudioDecoder(encoding, 8000, 2)
    outs = [pieces.decode(c) for c in _random_split(data, rng, 97)]  # odd sizes, mid-sample cuts
    outs.append(pieces.flush())
    many = [np.concatenate([o[c] for o in outs]) for c in range(2)]
    for c in range(2):
        np.testing.assert_array_equal(many[c], one[c])
        assert len(many[c]) == 16000
    assert pieces.input_frames == 8000 and pieces.discarded_bytes == 0
    # each channel kept its own signal: the left tone is 300 Hz, the right one 1000 Hz
    for signal, freq in ((many[0], 300), (many[1], 1000)):
        spectrum = np.abs(np.fft.rfft(signal))
        assert abs(np.argmax(spectrum) * 16000 / len(signal) - freq) < 5


def test_linear16_odd_byte_is_carried_not_lost():
    pcm = (np.arange(100, dtype=np.int16) * 300).astype("<i2").tobytes()
    decoder = ca.CallAudioDecoder("LINEAR16", 16000, 1)
    first = decoder.decode(pcm[:51])[0]
    assert len(first) == 25 and decoder.pending_bytes == 1
    second = decoder.decode(pcm[51:])[0]
    out = np.concatenate([first, second])
    np.testing.assert_array_equal(out, np.frombuffer(pcm, "<i2").astype(np.float32) / 32768)


def test_truncated_stream_end_is_counted_as_discarded():
    decoder = ca.CallAudioDecoder("MULAW", 8000, 2)
    decoder.decode(b"\xff\xff\xff")
    decoder.flush()
    assert decoder.input_frames == 1 and decoder.discarded_bytes == 1


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "reason", "field"),
    [
        (("OPUS", 8000, 1), "UNSUPPORTED_ENCODING", "config.encoding"),
        (("LINEAR16", 11025, 1), "UNSUPPORTED_SAMPLE_RATE", "config.sample_rate_hertz"),
        (("MULAW", 8000, 3), "UNSUPPORTED_CHANNELS", "config.audio_channel_count"),
        (("ALAW", 8000, 0), "UNSUPPORTED_CHANNELS", "config.audio_channel_count"),
    ],
)
def test_unsupported_formats_are_invalid_arguments(args, reason, field):
    with pytest.raises(InvalidArgument) as info:
        ca.CallAudioDecoder(*args, field_prefix="config.")
    assert info.value.reason == reason
    assert info.value.field == field
    assert info.value.to_status().code == 3  # INVALID_ARGUMENT


# --- the one encoding table ----------------------------------------------------------------------


def test_encoding_table_maps_the_proto_enum_and_sample_widths():
    from scribe.v1 import streaming_pb2

    table = {e: (e.proto, e.bytes_per_sample) for e in ca.AudioEncoding}
    assert table == {
        ca.AudioEncoding.LINEAR16: (streaming_pb2.AUDIO_ENCODING_LINEAR16, 2),
        ca.AudioEncoding.MULAW: (streaming_pb2.AUDIO_ENCODING_MULAW, 1),
        ca.AudioEncoding.ALAW: (streaming_pb2.AUDIO_ENCODING_ALAW, 1),
    }
    for encoding in ca.AudioEncoding:
        assert ca.encoding_from_proto(encoding.proto) is encoding
        assert encoding == encoding.value  # a str enum: equal to its name


@pytest.mark.parametrize("value", [0, 7])  # AUDIO_ENCODING_UNSPECIFIED, and a value of a newer proto
def test_unknown_proto_encoding_is_unsupported(value):
    with pytest.raises(InvalidArgument) as info:
        ca.encoding_from_proto(value, field="config.encoding")
    assert (info.value.reason, info.value.field) == ("UNSUPPORTED_ENCODING", "config.encoding")
    assert info.value.message == (
        "config.encoding must be AUDIO_ENCODING_LINEAR16, AUDIO_ENCODING_MULAW or AUDIO_ENCODING_ALAW"
    )


def test_linear16_bytes_decode_to_float_full_scale_32768():
    pcm = np.array([0, 1, -1, 16384, -32768, 32767], dtype="<i2")
    out = ca.decode_samples(pcm.tobytes())
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0.0, 1 / 32768, -1 / 32768, 0.5, -1.0, 32767 / 32768])
    np.testing.assert_array_equal(ca.decode_samples(pcm.tobytes(), "LINEAR16"), out)
    with pytest.raises(ValueError):
        ca.decode_samples(b"\x00\x01\x02")  # ends inside a sample


def test_g711_bytes_decode_through_the_tables():
    codes = np.arange(256, dtype=np.uint8).tobytes()
    np.testing.assert_array_equal(ca.decode_samples(codes, "MULAW"), ca.MULAW_TO_LINEAR16 / np.float32(32768))
    np.testing.assert_array_equal(ca.decode_samples(codes, "ALAW"), ca.ALAW_TO_LINEAR16 / np.float32(32768))


@pytest.mark.parametrize(("encoding", "rate", "width"), [("LINEAR16", 16000, 2), ("MULAW", 8000, 1), ("ALAW", 8000, 1)])
def test_call_audio_is_encoded_at_the_rate_a_call_center_sends(encoding, rate, width):
    audio = _sine(440.0, 16000, 1.0)
    data, out_rate = ca.encode_call_audio(audio, encoding, 16000)
    assert out_rate == rate and len(data) == rate * width
    back = np.concatenate(ca.CallAudioDecoder(encoding, out_rate).decode(data))
    assert back.size > 0.99 * 16000


def test_whisper_sample_rate_is_16_khz():
    from scribe_libs.audio import WHISPER_SAMPLE_RATE

    assert WHISPER_SAMPLE_RATE == 16000  # openai/whisper audio.py SAMPLE_RATE
    assert ca.StreamResampler(8000).out_rate == WHISPER_SAMPLE_RATE
