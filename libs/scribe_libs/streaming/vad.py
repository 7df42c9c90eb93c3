"""Streaming voice activity detection with Silero VAD (the ONNX model faster-whisper ships).

faster-whisper 1.2.1 bundles ``silero_vad_v6.onnx`` and runs it through ``SileroVADModel``, but its
``__call__`` and ``get_speech_timestamps`` work on a whole file: they reset the LSTM state on
every call. Silero is a stateful model over 512-sample frames at 16 kHz (32 ms), each preceded by
the last 64 samples of the frame before. :class:`StreamingVad` calls the same ONNX session
frame-batch by frame-batch and carries the LSTM state ``h``/``c`` and the 64-sample context across
calls, so chunked processing yields exactly the probabilities of the one-shot call (tested).

The decision rules follow ``faster_whisper.vad.get_speech_timestamps`` (Silero's own):
probability ``>= threshold`` starts speech, ``< neg_threshold`` (default ``threshold - 0.15``)
counts as silence, values between keep the current state; speech ends after
``endpointing_ms`` of silence. Two streaming changes: speech is announced only once it lasted
``min_speech_ms`` (a click or a cough shorter than that produces no event), and the end is
announced when the endpointing silence has elapsed (a live stream cannot look ahead).
Measured here: DTMF digits, a synthetic tune and low white noise stay below 0.25 probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scribe_libs.audio import WHISPER_SAMPLE_RATE
from scribe_libs.streaming.types import SpeechEvent, SpeechEventType

#: Silero's frame at 16 kHz, samples (32 ms) and the context it prepends to each frame.
FRAME_SAMPLES = 512
CONTEXT_SAMPLES = 64


@dataclass(frozen=True)
class VadConfig:
    """Decision parameters.

    Attributes:
        threshold: Speech probability that starts speech (Silero's default 0.5).
        neg_threshold: Probability under which a frame is silence; None: ``threshold - 0.15``.
        endpointing_ms: Silence that ends an utterance, ms (the caller's "endpointing silence").
        min_speech_ms: Speech must last this long before SPEECH_BEGIN is sent, ms.
        speech_pad_ms: Audio kept before a speech start and after a speech end, ms (Whisper hears
            soft onsets and word endings the VAD scores low).
    """

    threshold: float = 0.5
    neg_threshold: float | None = None
    endpointing_ms: int = 500
    min_speech_ms: int = 96
    speech_pad_ms: int = 300


def load_silero_session():  # noqa: ANN201 - onnxruntime.InferenceSession, imported lazily
    """The Silero ONNX session of faster-whisper (loaded once per process, cached by faster-whisper)."""
    from faster_whisper.vad import get_vad_model

    return get_vad_model().session


class StreamingVad:
    """Incremental Silero VAD for one channel.

    Args:
        config: Decision parameters.
        session: An ``onnxruntime.InferenceSession`` of Silero v6 (tests may pass a fake with the
            same ``run`` signature); None: faster-whisper's bundled model.
        channel: Put on the events.

    Feed 16 kHz float32 audio with :meth:`process`; audio is consumed in whole frames and the
    remainder waits for the next call.
    """

    def __init__(self, config: VadConfig | None = None, session=None, channel: int = 0):  # noqa: ANN001
        self.config = config or VadConfig()
        self.channel = channel
        self._session = session if session is not None else load_silero_session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT_SAMPLES, dtype=np.float32)
        self._pending = np.zeros(0, dtype=np.float32)
        self._frames = 0  # frames processed
        self._neg = self.config.neg_threshold
        if self._neg is None:
            self._neg = max(self.config.threshold - 0.15, 0.01)
        self._candidate: int | None = None  # frame where unconfirmed speech started
        self._speech_start: int | None = None  # frame where confirmed speech started
        self._silence_start: int | None = None  # first silent frame inside speech
        self.last_probability = 0.0

    @property
    def processed_time(self) -> float:
        """Stream time (s) up to which audio has been classified."""
        return self._frames * FRAME_SAMPLES / WHISPER_SAMPLE_RATE

    @property
    def in_speech(self) -> bool:
        """True while speech is confirmed or a candidate onset is being confirmed."""
        return self._speech_start is not None or self._candidate is not None

    @property
    def speaking(self) -> bool:
        """True while confirmed speech is in progress (between SPEECH_BEGIN and SPEECH_END)."""
        return self._speech_start is not None

    @property
    def speech_start(self) -> float | None:
        """Start (s) of the current speech, confirmed or candidate; None in silence."""
        frame = self._speech_start if self._speech_start is not None else self._candidate
        return None if frame is None else frame * FRAME_SAMPLES / WHISPER_SAMPLE_RATE

    @property
    def pause_start(self) -> float | None:
        """Inside confirmed speech: start (s) of the silence running now; None otherwise.

        It becomes the SPEECH_END time if the silence lasts ``endpointing_ms``.
        """
        if self._speech_start is None or self._silence_start is None:
            return None
        return self._silence_start * FRAME_SAMPLES / WHISPER_SAMPLE_RATE

    def probabilities(self, samples: np.ndarray) -> np.ndarray:
        """Run the model on the complete frames of ``pending + samples``; returns one probability per frame."""
        audio = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = len(audio) // FRAME_SAMPLES
        self._pending = audio[n * FRAME_SAMPLES :]
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        frames = audio[: n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES)
        contexts = np.concatenate([self._context[None, :], frames[:-1, -CONTEXT_SAMPLES:]], axis=0)
        self._context = frames[-1, -CONTEXT_SAMPLES:].copy()
        batch = np.concatenate([contexts, frames], axis=1)
        out, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def process(self, samples: np.ndarray) -> list[SpeechEvent]:
        """Classify new audio and return the speech events it completes.

        Args:
            samples: float32 mono 16 kHz, any length.

        Returns:
            SPEECH_BEGIN / SPEECH_END events in time order.
        """
        events: list[SpeechEvent] = []
        cfg = self.config
        frame_s = FRAME_SAMPLES / WHISPER_SAMPLE_RATE
        min_speech = max(1, int(np.ceil(cfg.min_speech_ms / 1000 / frame_s)))
        endpoint = max(1, int(np.ceil(cfg.endpointing_ms / 1000 / frame_s)))
        for p in self.probabilities(samples):
            i = self._frames
            self._frames += 1
            self.last_probability = float(p)
            if self._speech_start is None:
                if self._candidate is None:
                    if p >= cfg.threshold:
                        self._candidate = i
                elif p < self._neg:
                    self._candidate = None
                if self._candidate is not None and i + 1 - self._candidate >= min_speech:
                    self._speech_start = self._candidate
                    self._candidate = None
                    self._silence_start = None
                    events.append(self._event(SpeechEventType.SPEECH_BEGIN, self._speech_start))
                continue
            if p >= cfg.threshold:
                self._silence_start = None
            elif p < self._neg and self._silence_start is None:
                self._silence_start = i
            if self._silence_start is not None and i + 1 - self._silence_start >= endpoint:
                events.append(self._event(SpeechEventType.SPEECH_END, self._silence_start))
                self._speech_start = None
                self._silence_start = None
        return events

    def _event(self, kind: SpeechEventType, frame: int) -> SpeechEvent:
        return SpeechEvent(kind, frame * FRAME_SAMPLES / WHISPER_SAMPLE_RATE, self.channel)
