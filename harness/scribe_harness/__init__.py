"""scribe's test and benchmark harness: real servers on loopback, the services in one process.

The pytest fixtures (conftest.py), the integration tests, tools/bench_*.py and the chart
rehearsal share it. Installed editable from the checkout (``make install``); :data:`FIXTURES`
and :data:`SHARED_DATA` point into that checkout.
"""

from __future__ import annotations

from scribe_harness.jobs import CHUNK_BYTES, create_job_requests, job_spec, submit, wait_for
from scribe_harness.paths import FIXTURES, ROOT, SHARED_DATA
from scribe_harness.score import wer
from scribe_harness.servers import MotoServer, NatsCluster, NatsServer
from scribe_harness.speech import JFK, JFK_TEXT, Speech, stream_speech
from scribe_harness.stack import Stack, wait_serving

__all__ = [
    "CHUNK_BYTES", "FIXTURES", "JFK", "JFK_TEXT", "ROOT", "SHARED_DATA", "MotoServer", "NatsCluster", "NatsServer",
    "Speech", "Stack", "stream_speech",
    "create_job_requests",
    "job_spec", "submit", "wait_for", "wait_serving", "wer",
]
