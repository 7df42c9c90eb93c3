"""scribe's test and benchmark harness: real servers on loopback, the services in one process.

The pytest fixtures (conftest.py), the integration tests, tools/bench_*.py and the chart
rehearsal share it. Installed editable from the checkout (``make install``); :data:`FIXTURES`
and :data:`SHARED_DATA` point into that checkout.
"""

from __future__ import annotations

from pathlib import Path

from scribe_harness.jobs import CHUNK_BYTES, create_job_requests, job_spec, submit, wait_for
from scribe_harness.score import wer
from scribe_harness.servers import MotoServer, NatsCluster, NatsServer
from scribe_harness.stack import Stack, wait_serving

#: The repository this harness was installed from (editable install).
ROOT = Path(__file__).resolve().parents[2]
#: Committed test recordings (tests/fixtures).
FIXTURES = ROOT / "tests" / "fixtures"
#: The reference recordings beside the checkout (../shared/data).
SHARED_DATA = ROOT.parent / "shared" / "data"

__all__ = [
    "CHUNK_BYTES", "FIXTURES", "ROOT", "SHARED_DATA", "MotoServer", "NatsCluster", "NatsServer", "Stack",
    "create_job_requests",
    "job_spec", "submit", "wait_for", "wait_serving", "wer",
]
