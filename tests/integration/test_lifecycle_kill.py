"""Kill test (issue 5): 100 jobs, 2 transcriber processes, one SIGKILLed again and again.

Runs tools/chaos.py against the embedded stack (``scribe up --workers 2`` as processes, in a
temporary ``SCRIBE_HOME``): nothing lost (100 COMPLETED, 100 transcripts), nothing duplicated
(one "completed" event per job, no job record beyond the 100).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "chaos.py"

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def load_chaos():
    spec = importlib.util.spec_from_file_location("scribe_chaos_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_sigkilled_transcriber_loses_and_duplicates_nothing(tmp_path):
    chaos = load_chaos()
    report = chaos.run_chaos(
        jobs=100, workers=2, victim="transcriber-1", kill_every=(2.0, 6.0), ack_wait=6.0, max_deliver=10,
        home=tmp_path / "scribe-home", timeout=600,
    )
    print("\n" + "\n".join(report.lines()))
    assert report.states == {"COMPLETED": 100}, report.lines()
    assert report.completed == 100
    assert report.transcripts == 100
    assert report.duplicates == 0
    assert report.extra_records == 0
    # The chaos really happened: the victim was killed while holding jobs, which were redelivered.
    assert report.kills >= 3
    assert report.kills_mid_job >= 1
    assert report.redeliveries >= 1
