"""The speech clip that streaming tests check recognised words on, and the bound they allow.

Streaming decodes greedily (``realtime_beam_size=1``) on short windows, and tiny.en's greedy words
for synthetic speech depend on the CPU's kernels. On the committed espeak-ng clip
(``tests/fixtures/speech_en.wav``, "The quick brown fox jumps over the lazy dog. Please
transcribe this sentence for the platform test.") a stream gave WER 0.41 on an AMD EPYC without
AVX-512 ("The quick round -fuck stump, silver blazy nog. ...", every run, also on CI), under 0.4
on an AVX-512 one; batch (beam 5) writes "quick round-fark ... lazy nog" (0.24). A bound tight
enough to catch lost or repeated words cannot hold across machines on that clip.

Real speech can: ``../shared/data/jfk.flac`` (11.0 s, one speaker, faster-whisper's test data)
streams with 0 to 1 wrong words of 22 on every machine seen, so tests use it when the shared
data is there (it lives beside the checkout; people who clone the project may not have it, and
then the espeak-ng clip is used with the looser bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scribe_harness.paths import FIXTURES, SHARED_DATA

#: faster-whisper's real recording, and the transcript its tests expect (../shared/data/README.md).
JFK = SHARED_DATA / "jfk.flac"
JFK_TEXT = "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
#: The committed espeak-ng clip.
SPEECH_EN = FIXTURES / "speech_en.wav"


@dataclass(frozen=True)
class Speech:
    """A clip, its reference transcript and what a stream of it may get wrong.

    Attributes:
        path: The audio file (any format ``read_audio`` decodes).
        text: The reference transcript.
        seconds: The clip's duration in seconds (what a stream's summary reports as audio).
        stream_wer: The highest WER (jiwer's normalisation, :func:`scribe_harness.wer`) a stream
            of it through tiny.en may give: JFK 0.1 (2 words of 22; measured 0.0 to 0.045),
            espeak-ng 0.5 (measured 0.41; see the module docstring).
    """

    path: Path
    text: str
    seconds: float
    stream_wer: float


def stream_speech() -> Speech:
    """JFK when ``../shared/data`` is beside the checkout, else the committed espeak-ng clip."""
    if JFK.exists():
        return Speech(JFK, JFK_TEXT, 11.0, 0.1)
    return Speech(SPEECH_EN, (FIXTURES / "speech_en.txt").read_text().strip(), 7.756, 0.5)
