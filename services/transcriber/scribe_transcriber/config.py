"""Transcriber settings (environment prefix ``SCRIBE_TRANSCRIBER_``)."""

from __future__ import annotations

import os
import socket

from pydantic import Field

from scribe_libs.config import ServiceSettings, service_config
from scribe_libs.models import ModelSettings
from scribe_libs.tempdirs import default_base


class Settings(ServiceSettings):
    """Transcriber configuration. Durations in seconds."""

    model_config = service_config("SCRIBE_TRANSCRIBER_")

    port: int = Field(50053, description="gRPC port (GetProfile); 0 picks a free one.")
    pool: str = Field("cpu", description="Pool this worker serves: it consumes scribe.jobs.<pool>.")
    models: list[str] = Field(
        default_factory=lambda: ["base"], description="Models loaded at start and kept resident (JSON list)."
    )
    device: str = Field("auto", description="'auto' (CUDA if present, else CPU), 'cuda' or 'cpu'.")
    device_index: int = Field(0, description="CUDA device index this worker owns.")
    compute_type: str = Field("auto", description="CTranslate2 compute type; 'auto' chooses from the device.")
    cpu_threads: int = Field(
        0, description="CTranslate2 intra-op threads per replica on CPU; 0 = all cores."
    )
    cpu_replicas: int = Field(
        0, description="CTranslate2 replicas on CPU (calls decoded in parallel: Decode windows of several live "
        "sessions at once); 0 = one per core when cpu_threads is 0, else 1. Two replicas on 2 cores double the live "
        "capacity and cost batch jobs ~8 %; a CPU pool that serves no live calls should set 1. See engine.cpu_layout."
    )
    temp_dir: str = Field(
        default_factory=default_base,
        description="Base of the worker's own temporary directory `<temp_dir>/scribe-transcriber`: each job's "
        "audio is downloaded into a sub-directory removed when the job ends; at start everything there that no "
        "running worker holds (a killed worker's files) is removed.",
    )
    batch_size: int = Field(8, description="Chunks decoded together by the batched pipeline.")
    max_concurrent_jobs: int = Field(
        0, ge=0,
        description="Batch jobs this worker runs at once; 0 = derived at start from the device's memory "
        "(scribe_libs.devices.job_slots: free memory after the models and live windows / (batch_size x window "
        "+ one call's workspace), at most 8; on CPU also one per replica and per 4 cores).",
    )
    piece_seconds: float = Field(
        600.0, ge=30.0, description="A batch job's audio is decoded and transcribed in pieces of at most this many "
        "seconds (rounded up to whole 30 s windows; each ends at a pause found by VAD in its last minute), so a "
        "job's memory does not grow with the file: ~64 kB per second of a piece (38 MB for 600 s) plus the "
        "features of its speech. Smaller pieces save memory and leave more part-filled batches (one per piece)."
    )
    model_store: ModelSettings = Field(default_factory=ModelSettings, description="Where models come from.")
    ack_wait_seconds: float = Field(
        60.0, description="JetStream ack wait; in_progress() is sent every third of it while a job runs."
    )
    max_deliver: int = Field(3, description="Deliveries of a job message before the job is FAILED.")
    progress_interval_seconds: float = Field(1.0, description="Minimum seconds between progress updates.")
    cancel_poll_seconds: float = Field(0.5, description="How often a running job's record is checked for cancel.")
    worker_id: str = Field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}", description="Unique id of this worker."
    )
    pod_name: str = Field("", description="Kubernetes pod name (downward API).")
    pod_namespace: str = Field("", description="Kubernetes namespace (downward API).")
    node_name: str = Field("", description="Kubernetes node name (downward API).")
    kubernetes_api_host: str = Field(
        "", description="Kubernetes API URL for labelling this pod; empty = in-cluster service account."
    )
    advertise_host: str = Field(
        default_factory=socket.gethostname, description="Host other services use to reach this worker's gRPC port."
    )
    realtime_model: str = Field(
        "", description="Model serving Transcriber.Decode (streaming); empty = the first of `models`. Loaded at "
        "start if it is not one of them; the same name shares one copy with batch jobs."
    )
    realtime_max_batch: int = Field(
        4, description="Decode windows (from any sessions) decoded together at most; also capped by the device "
        "decision's realtime capacity (memory; 1 on CPU, where batching windows buys nothing)."
    )
    realtime_input_padding_seconds: float = Field(
        6.0, description="Encoder input of a Decode window: its frames plus this padding (seconds), not Whisper's "
        "full 30 s; guarded (token budget, loop check) with a fallback to the full input. Negative: always the "
        "full 30 s input."
    )
    realtime_capacity: int = Field(
        0, description="Live sessions this worker advertises; 0 = measured at start from its own decode cost."
    )
    realtime_target_period_seconds: float = Field(
        1.25, description="Capacity target: with N sessions served in turn a session gets a decode every N x cost "
        "seconds; capacity keeps that period at most this (seconds). Measured with tools/bench_streaming.py "
        "(tiny.en, 2 cores, 0.155 s per window): 1.5 s gave capacity 7, where word latency p95 was 3.3 s (jfk x3) "
        "and 4.3 s (long sentences) against 2.4 / 2.3 s with 4 sessions; 1.25 s gives 6."
    )
    realtime_utilization: float = Field(
        0.8, gt=0, le=1, description="Share of the device's time the capacity plans for (the rest absorbs finals "
        "and batch jobs)."
    )
    realtime_beam_size: int = Field(1, description="Beam width of Decode (1 = greedy, temperature 0).")
