"""Scripted call audio for the streaming driver's tests: sample values that encode their own
position, a word script at known times, and a fake Silero session that follows a speech script."""

from __future__ import annotations

import numpy as np

from scribe_libs.streaming import Word

RATE = 16000
SCALE = float(2**23)  # sample value = (index mod 2**23) / 2**23: exact in float32, ~8.7 min period


def timed_audio(start_sample: int, n: int) -> np.ndarray:
    return ((np.arange(start_sample, start_sample + n) % 2**23) / SCALE).astype(np.float32)


def sample_index(value: float, near: int) -> int:
    """Invert timed_audio, choosing the period closest to ``near``."""
    base = int(round(float(value) * SCALE))
    period = 2**23
    return base + period * round((near - base) / period)


_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
# Distinct, incompressible words (numbered words "w1140 w1141 ..." would compress like a loop).
VOCAB = ["".join(np.random.default_rng(k).choice(_LETTERS, 6)) for k in range(2000)]


def word(k: int) -> Word:
    return Word(0.5 * k + 0.05, 0.5 * k + 0.45, VOCAB[k])


class ScriptedVad:
    """Fake Silero session: probability 0.9 where ``speech(t)`` is true, else 0.05."""

    def __init__(self, speech):
        self.speech = speech
        self.position = 0

    def run(self, _outputs, feeds):
        frames = feeds["input"][:, 64:]
        probs = []
        for frame in frames:
            self.position = sample_index(frame[0], self.position)
            probs.append(0.9 if self.speech(self.position / RATE) else 0.05)
            self.position += 512
        return np.array(probs, dtype=np.float32).reshape(-1, 1), feeds["h"], feeds["c"]


def spoken(seconds: float, speech) -> list[str]:
    out, k = [], 0
    while word(k).end <= seconds:
        if speech(word(k).start) and speech(word(k).end):
            out.append(word(k).text)
        k += 1
    return out
