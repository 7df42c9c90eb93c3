"""Fixtures for the transcriber tests: a fake faster-whisper (no GPU, no model files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from scribe_libs.devices import estimate_model_bytes

CUDA_OOM = "CUDA failed with error out of memory"


@dataclass
class FakeDevice:
    """Records loads and decodes; raises CTranslate2's CUDA out-of-memory where told to.

    ``oom_on_decode``: compute types (or (model, compute type) pairs) whose decode runs out of memory.
    ``oom_on_load``: the same for loading. Each load adds the library's estimate for the model at
    that compute type to ``used`` (what the gauge reports), as a GPU would.
    """

    oom_on_decode: set = field(default_factory=set)
    oom_on_load: set = field(default_factory=set)
    used: int = 0
    loads: list = field(default_factory=list)
    decodes: list = field(default_factory=list)

    def _hit(self, rules: set, model: str, compute_type: str) -> bool:
        return compute_type in rules or (model, compute_type) in rules or "*" in rules

    def factory(self, path: Path, device: str, device_index: int, compute_type: str, cpu_threads: int,
                num_workers: int = 1):
        model = path.name
        self.loads.append((model, device, compute_type))
        if self._hit(self.oom_on_load, model, compute_type):
            raise RuntimeError(CUDA_OOM)
        self.used += estimate_model_bytes(model, compute_type)
        return SimpleNamespace(name=model), FakePipeline(self, model, compute_type)

    def resolve(self, name: str) -> Path:
        return Path("/models") / name

    def gauge(self):
        return SimpleNamespace(used_bytes=lambda: self.used)


@dataclass
class FakePipeline:
    device: FakeDevice
    model: str
    compute_type: str

    def transcribe(self, audio, **options):
        self.device.decodes.append((self.model, self.compute_type))
        if self.device._hit(self.device.oom_on_decode, self.model, self.compute_type):
            raise RuntimeError(CUDA_OOM)
        duration = len(audio) / 16000
        segment = SimpleNamespace(
            start=0.0, end=duration, text=f" decoded by {self.model} at {self.compute_type}", avg_logprob=-0.1,
            no_speech_prob=0.01, compression_ratio=1.2, words=[],
        )
        return iter([segment]), SimpleNamespace(language="en", language_probability=0.99)


@pytest.fixture
def fake_device() -> FakeDevice:
    return FakeDevice()
