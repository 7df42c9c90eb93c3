"""Streaming recognition core: VAD, per-channel buffer, LocalAgreement-2 policy and the driver.

Pure of I/O except the decode callable the service supplies; see :mod:`.session` for how the
pieces fit and why.
"""

from scribe_libs.streaming.buffer import AudioBuffer
from scribe_libs.streaming.policy import LocalAgreementPolicy, cut_looping_tail, normalize
from scribe_libs.streaming.session import ChannelStream, Decoder, StreamConfig, StreamEvent, StreamSession
from scribe_libs.streaming.types import Result, SpeechEvent, SpeechEventType, Word
from scribe_libs.streaming.vad import StreamingVad, VadConfig

__all__ = [
    "AudioBuffer",
    "ChannelStream",
    "Decoder",
    "LocalAgreementPolicy",
    "Result",
    "SpeechEvent",
    "SpeechEventType",
    "StreamConfig",
    "StreamEvent",
    "StreamSession",
    "StreamingVad",
    "VadConfig",
    "Word",
    "cut_looping_tail",
    "normalize",
]
