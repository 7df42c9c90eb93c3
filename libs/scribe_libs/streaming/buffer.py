"""Per-channel audio buffer: the samples since the last cut, with their place in the stream.

The buffer is the decode window's source. It only ever loses audio from its front, through
:meth:`AudioBuffer.cut_to`, and the session cuts only where the audio is accounted for: at the end
of a committed word, or inside what the VAD classified as non-speech (minus a pre-roll). How that
bounds memory on a call of any length is described in :mod:`scribe_libs.streaming.session`.
"""

from __future__ import annotations

import numpy as np

from scribe_libs.audio import WHISPER_SAMPLE_RATE


class AudioBuffer:
    """Growable float32 mono buffer with an absolute start offset.

    Args:
        sample_rate: Hz of the samples (16 kHz in a session).
        max_seconds: Capacity; :meth:`append` past it raises (the session force-finalizes and cuts
            before that can happen, so reaching it is a bug, not a state).

    Storage is one preallocated array, compacted on cut, so memory is O(max_seconds) whatever the
    call length.
    """

    def __init__(self, sample_rate: int = WHISPER_SAMPLE_RATE, max_seconds: float = 60.0):
        self.sample_rate = sample_rate
        self.capacity = int(max_seconds * sample_rate)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self._len = 0
        self._start_sample = 0  # absolute index of _data[0]

    @property
    def start(self) -> float:
        """Stream time (s) of the first buffered sample."""
        return self._start_sample / self.sample_rate

    @property
    def end(self) -> float:
        """Stream time (s) just after the last buffered sample (= audio received so far)."""
        return (self._start_sample + self._len) / self.sample_rate

    @property
    def duration(self) -> float:
        """Seconds buffered."""
        return self._len / self.sample_rate

    @property
    def start_sample(self) -> int:
        """Absolute sample index of the first buffered sample."""
        return self._start_sample

    @property
    def end_sample(self) -> int:
        """Absolute sample index after the last buffered sample."""
        return self._start_sample + self._len

    def append(self, samples: np.ndarray) -> None:
        """Add samples at the end.

        Raises:
            OverflowError: The buffer would hold more than its capacity.
        """
        n = len(samples)
        if self._len + n > self.capacity:
            raise OverflowError(f"audio buffer over its capacity of {self.capacity / self.sample_rate:.1f} s")
        self._data[self._len : self._len + n] = samples
        self._len += n

    def audio(self, start: float | None = None, end: float | None = None) -> np.ndarray:
        """A copy of the buffered samples between two stream times (clamped to the buffer)."""
        lo = 0 if start is None else self._index(start)
        hi = self._len if end is None else self._index(end)
        return self._data[lo : max(lo, hi)].copy()

    def cut_to(self, time: float) -> float:
        """Drop the samples before ``time`` (stream seconds); never past the received audio.

        Args:
            time: New start. Times before the current start change nothing; times after the end are
                clamped to the end.

        Returns:
            Seconds dropped.
        """
        drop = self._index(time)
        if drop <= 0:
            return 0.0
        self._data[: self._len - drop] = self._data[drop : self._len]
        self._len -= drop
        self._start_sample += drop
        return drop / self.sample_rate

    def _index(self, time: float) -> int:
        return int(min(max(round(time * self.sample_rate) - self._start_sample, 0), self._len))
