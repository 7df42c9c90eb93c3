"""Compute types and model memory: what CTranslate2 supports where, and what a model takes.

Memory figures here are ESTIMATES from published numbers (sources in the comments). The
transcriber replaces the per-model figure with a measurement after loading, through the
``measure`` callback of :func:`scribe_libs.devices.decide`.
"""

from __future__ import annotations

from dataclasses import dataclass

from scribe_libs.devices.probe import DeviceFacts

MiB = 1 << 20
GiB = 1 << 30


#: Compute types CTranslate2 accepts (docs/quantization.md, "Quantize on model loading").
COMPUTE_TYPES = (
    "float32",
    "float16",
    "bfloat16",
    "int16",
    "int8",
    "int8_float32",
    "int8_float16",
    "int8_bfloat16",
)
REQUESTABLE_COMPUTE_TYPES = ("auto", "default", *COMPUTE_TYPES)


def supported_compute_types_for(device: str, compute_capability: tuple[int, int] | None) -> frozenset[str]:
    """What CTranslate2 supports on a device, when the probe could not ask it.

    Source: CTranslate2 docs/quantization.md, "Supported types": int8 on NVIDIA GPUs with compute
    capability >= 7.0 or exactly 6.1; float16 and int8_float16 with >= 7.0 (CTranslate2 reports
    float16 only where it is efficient, i.e. tensor cores, unless ``CT2_CUDA_ALLOW_FP16=1``);
    bfloat16 with >= 8.0. On CPU int8 (oneDNN/MKL/Ruy backends) and float32; int16 only with MKL,
    so it is left out here.
    """
    if device == "cpu":
        return frozenset({"float32", "int8", "int8_float32"})
    cc = compute_capability or (0, 0)
    out = {"float32"}
    if cc >= (7, 0) or cc == (6, 1):
        out |= {"int8", "int8_float32"}
    if cc >= (7, 0):
        out |= {"float16", "int8_float16"}
    if cc >= (8, 0):
        out |= {"bfloat16", "int8_bfloat16"}
    return frozenset(out)


def _supported(facts: DeviceFacts) -> frozenset[str]:
    return facts.supported_compute_types or supported_compute_types_for(facts.device, facts.compute_capability)


def preferred_compute_types(facts: DeviceFacts) -> list[str]:
    """The precision ladder for "auto", best first (DESIGN.md table).

    cc >= 7.0: float16, then int8_float16 when memory is tight. cc 6.1 (Pascal, e.g. GTX 1050):
    int8 (float16 runs without tensor cores there, CTranslate2 does not offer it). Other GPUs:
    float32 (CTranslate2 has no int8 kernels for them). CPU: int8.
    """
    supported = _supported(facts)
    if facts.device == "cpu":
        ladder = ["int8", "float32"]
    elif (facts.compute_capability or (0, 0)) >= (7, 0):
        ladder = ["float16", "int8_float16", "int8"]
    else:
        ladder = ["int8", "float32"]
    return _descending([t for t in ladder if t in supported] or ["float32"])


def _descending(ladder: list[str]) -> list[str]:
    """Keep only the steps that make the weights strictly smaller than the step before."""
    out = ladder[:1]
    for t in ladder[1:]:
        if bytes_per_param(t) < bytes_per_param(out[-1]):
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------
# Model memory (estimates; the transcriber measures)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Architecture facts of a Whisper model (Whisper paper, Table 1, and the model cards).

    Attributes:
        params: Parameter count.
        decoder_layers: Decoder layers (sizes the cross-attention cache per batch slot).
        d_model: Width.
        english_only: ``.en`` and distil models transcribe English only.
    """

    params: int
    decoder_layers: int
    d_model: int
    english_only: bool = False


# Whisper paper (Radford et al. 2022) Table 1: tiny 39M 4 layers width 384; base 74M 6/512;
# small 244M 12/768; medium 769M 24/1024; large 1550M 32/1280. large-v3-turbo: 809M, 32 encoder
# and 4 decoder layers (openai/whisper-large-v3-turbo model card). distil-large-v3: 756M, 2
# decoder layers, English only (distil-whisper/distil-large-v3 model card).
MODEL_SPECS: dict[str, ModelSpec] = {
    "tiny": ModelSpec(39_000_000, 4, 384),
    "tiny.en": ModelSpec(39_000_000, 4, 384, english_only=True),
    "base": ModelSpec(74_000_000, 6, 512),
    "base.en": ModelSpec(74_000_000, 6, 512, english_only=True),
    "small": ModelSpec(244_000_000, 12, 768),
    "small.en": ModelSpec(244_000_000, 12, 768, english_only=True),
    "medium": ModelSpec(769_000_000, 24, 1024),
    "medium.en": ModelSpec(769_000_000, 24, 1024, english_only=True),
    "large-v2": ModelSpec(1_550_000_000, 32, 1280),
    "large-v3": ModelSpec(1_550_000_000, 32, 1280),
    "large-v3-turbo": ModelSpec(809_000_000, 4, 1280),
    "distil-large-v3": ModelSpec(756_000_000, 2, 1280, english_only=True),
}
#: faster-whisper's own aliases ("large" is large-v3, "turbo" is large-v3-turbo).
MODEL_ALIASES = {"turbo": "large-v3-turbo", "large": "large-v3"}

#: Step-down order (quality first). A step skips a model that would not need less memory: with
#: batch slots, medium (24 decoder layers) needs more than large-v3-turbo (4), and large-v2 the
#: same as large-v3.
MULTILINGUAL_LADDER = ("large-v3", "large-v2", "large-v3-turbo", "medium", "small", "base", "tiny")
ENGLISH_LADDER = ("distil-large-v3", "medium.en", "small.en", "base.en", "tiny.en")

# Bytes per parameter of the weights. float32 4, float16/bfloat16 2 (CTranslate2 stores them as
# is). int8 types: only embeddings and linear layers are quantized, the rest stays in float;
# CTranslate2 docs/quantization.md sizes a base Transformer at 364 MB float32, 182 MB float16,
# 100 MB int8_float32 and 95 MB int8_float16, i.e. 1.10 and 1.04 bytes/param; int16 187 MB, 2.05.
_BYTES_PER_PARAM = {
    "float32": 4.0,
    "float16": 2.0,
    "bfloat16": 2.0,
    "int16": 2.05,
    "int8": 1.10,
    "int8_float32": 1.10,
    "int8_float16": 1.04,
    "int8_bfloat16": 1.04,
}
# Fixed cost once per device. CUDA: context, cuBLAS/cuDNN handles; 400 MiB is typical of CUDA 12
# on data-center GPUs and makes the published peaks below add up. CPU: the transcriber process
# itself (Python, CTranslate2, audio decoding, VAD): faster-whisper 1.1.0 README, small on CPU
# int8 peaks at 1477 MB, of which weights + workspace + one slot are ~0.65 GB.
RUNTIME_BYTES = {"cuda": 400 * MiB, "cpu": 800 * MiB}
# Per-model workspace (encoder activations, beam search buffers, allocator cache) as a fraction
# of params x activation bytes: faster-whisper 1.1.0 README, large-v2 float16 beam 5 peaks at
# 4525 MiB = 2956 MiB weights + 400 context + 225 one slot + 944 workspace = 0.32 x 1550M x 2 B.
_WORKSPACE_FRACTION = 0.30
_MIN_WORKSPACE = 64 * MiB
# Per batch slot (one 30 s window in a batch): the decoder's cross-attention keys and values,
# decoder_layers x 2 x 1500 frames x d_model x activation bytes. For large-v2 float16 that is
# 234 MiB; the same README measures 224 MiB per extra batch element ((6090 - 4525) / 7 float16,
# (4500 - 2926) / 7 int8).
_WINDOW_FRAMES = 1500
_MIN_SLOT = 32 * MiB
#: Slot size assumed for a model with no spec (a measured custom model): the large-model figure.
UNKNOWN_MODEL_SLOT_BYTES = 256 * MiB


def canonical_model(name: str) -> str:
    """faster-whisper model name with aliases resolved (``"turbo"`` -> ``"large-v3-turbo"``)."""
    return MODEL_ALIASES.get(name, name)


def bytes_per_param(compute_type: str) -> float:
    """Bytes one weight takes at a CTranslate2 compute type (float16 2.0, int8_float16 1.04, ...).

    int8 types quantize only embeddings and linear layers; the figures come from CTranslate2
    docs/quantization.md (see the table above this function).

    Raises:
        KeyError: Not one of :data:`COMPUTE_TYPES`.
    """
    return _BYTES_PER_PARAM[compute_type]


def _activation_bytes(compute_type: str, device: str, cc: tuple[int, int] | None) -> int:
    """Bytes per activation value: 2 where CTranslate2 runs layers in half precision, else 4.

    "int8" keeps non-quantized layers in the model's saved precision (float16 for the published
    faster-whisper models) on GPUs with cc >= 7.0, and runs them in float32 elsewhere
    (docs/quantization.md, "Implicit type conversion on load").
    """
    if compute_type in ("float16", "bfloat16", "int8_float16", "int8_bfloat16"):
        return 2
    if compute_type == "int8" and device == "cuda" and (cc or (0, 0)) >= (7, 0):
        return 2
    return 4


def estimate_model_bytes(
    model: str, compute_type: str, device: str = "cuda", cc: tuple[int, int] | None = (8, 0)
) -> int:
    """Estimated memory one loaded model takes: weights + workspace, bytes (no runtime, no slots).

    Raises:
        KeyError: No spec for the model (measure it instead).
    """
    spec = MODEL_SPECS[canonical_model(model)]
    weights = spec.params * bytes_per_param(compute_type)
    workspace = max(_MIN_WORKSPACE, _WORKSPACE_FRACTION * spec.params * _activation_bytes(compute_type, device, cc))
    return int(weights + workspace)


def estimate_slot_bytes(
    model: str, compute_type: str, device: str = "cuda", cc: tuple[int, int] | None = (8, 0)
) -> int:
    """Estimated memory of one concurrent batch slot / realtime window of a model, bytes."""
    spec = MODEL_SPECS.get(canonical_model(model))
    if spec is None:
        return UNKNOWN_MODEL_SLOT_BYTES
    kv = spec.decoder_layers * 2 * _WINDOW_FRAMES * spec.d_model * _activation_bytes(compute_type, device, cc)
    return max(_MIN_SLOT, kv)
