"""The platform's metrics, defined once, exported by OpenTelemetry (Prometheus and/or OTLP).

Instruments are created from the global meter provider that :func:`scribe_libs.telemetry.setup_telemetry`
installs; before that (unit tests) they are no-ops. Names follow OpenTelemetry conventions; the
Prometheus exporter turns ``scribe.audio.processed`` with unit ``s`` into
``scribe_audio_processed_seconds_total``.

Gauges that need I/O (queue depth, oldest job age, jobs by state) are sampled by a background
task (:class:`QueueSampler` in the results service) and read from a cache by the synchronous
observable callbacks, which must not block.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

_meter = metrics.get_meter("scribe")

#: Latency buckets for seconds-valued histograms (sub-second to minutes).
SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30, 60, 120, 300, 900)

jobs_created = _meter.create_counter("scribe.jobs.created", unit="1", description="Jobs accepted by CreateJob")
jobs_refused = _meter.create_counter(
    "scribe.jobs.refused", unit="1", description="CreateJob calls refused, by reason"
)
jobs_finished = _meter.create_counter(
    "scribe.jobs.finished", unit="1", description="Jobs reaching a terminal state, by state"
)
audio_processed = _meter.create_counter(
    "scribe.audio.processed", unit="s", description="Audio seconds decoded by transcribers"
)
real_time_factor = _meter.create_histogram(
    "scribe.transcriber.real_time_factor", unit="1",
    description="Processing seconds / audio seconds per batch job",
    explicit_bucket_boundaries_advisory=(0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 5),
)
job_duration = _meter.create_histogram(
    "scribe.transcriber.job_duration", unit="s", description="Wall seconds a batch decode took",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
decode_latency = _meter.create_histogram(
    "scribe.transcriber.decode_latency", unit="s", description="Transcriber.Decode latency (streaming windows)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
downgrades = _meter.create_counter(
    "scribe.transcriber.downgrades", unit="1", description="Compute-type/model/device step-downs, by kind"
)
out_of_memory = _meter.create_counter(
    "scribe.transcriber.out_of_memory", unit="1", description="Out-of-memory errors during jobs"
)
stream_sessions = _meter.create_up_down_counter(
    "scribe.stream.sessions", unit="1", description="Live StreamingRecognize sessions"
)
first_interim_latency = _meter.create_histogram(
    "scribe.stream.first_interim_latency", unit="s",
    description="Seconds from speech onset to the first interim result",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
final_latency = _meter.create_histogram(
    "scribe.stream.final_latency", unit="s", description="Seconds from end of speech to the final result",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
realtime_sessions_placed = _meter.create_up_down_counter(
    "scribe.stream.sessions_placed", unit="1",
    description="Live channels this gateway placed on each worker (admission by measured capacity)",
)
stream_sessions_refused = _meter.create_counter(
    "scribe.stream.sessions_refused", unit="1",
    description="Sessions refused at admission (REALTIME_CAPACITY_FULL, TOO_MANY_SESSIONS), by reason",
)


class _Realtime:
    """A transcriber's streaming capacity and live sessions, for the observable gauges."""

    def __init__(self) -> None:
        self.capacity = 0
        self.sessions = 0

    def capacity_obs(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.capacity)]

    def sessions_obs(self, _: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self.sessions)]


realtime = _Realtime()
_meter.create_observable_gauge(
    "scribe.transcriber.realtime_capacity", callbacks=[realtime.capacity_obs], unit="1",
    description="Live channels this worker carries at the latency target (measured at start)",
)
_meter.create_observable_gauge(
    "scribe.transcriber.realtime_sessions", callbacks=[realtime.sessions_obs], unit="1",
    description="Live channels that sent a Decode in the last 10 s",
)


class _Cache:
    """Latest sampled values for the observable gauges (written by a task, read by callbacks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.queue_depth: dict[str, int] = {}
        self.oldest_age: dict[str, float] = {}
        self.jobs_by_state: dict[tuple[str, str], int] = {}

    def set(self, queue_depth: dict[str, int], oldest_age: dict[str, float],
            jobs_by_state: dict[tuple[str, str], int]) -> None:
        """Replace every sampled value at once."""
        with self._lock:
            self.queue_depth, self.oldest_age, self.jobs_by_state = queue_depth, oldest_age, jobs_by_state

    def depth(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(v, {"pool": k}) for k, v in self.queue_depth.items()]

    def age(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(v, {"pool": k}) for k, v in self.oldest_age.items()]

    def states(self, _: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            return [Observation(v, {"pool": pool, "state": state}) for (pool, state), v in self.jobs_by_state.items()]


sampled = _Cache()
_meter.create_observable_gauge(
    "scribe.queue.depth", callbacks=[sampled.depth], unit="1", description="Jobs waiting per pool"
)
_meter.create_observable_gauge(
    "scribe.queue.oldest_job_age", callbacks=[sampled.age], unit="s",
    description="Seconds the oldest waiting job of each pool has waited",
)
_meter.create_observable_gauge(
    "scribe.jobs", callbacks=[sampled.states], unit="1", description="Job records by pool and state"
)
