"""JSON logs to stdout with severity, timestamp, trace and span ids, and the job id.

``configure_logging(service, level)`` is called once per process. ``job_context(job_id)`` sets the
job id that every log record written inside it carries (a contextvar, so it follows asyncio tasks).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
from collections.abc import Iterator

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

_job_id: contextvars.ContextVar[str] = contextvars.ContextVar("scribe_job_id", default="")


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Log records written inside carry ``job_id``."""
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, service: str):
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.severity = record.levelname
        record.service = self.service
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            record.trace_id = format(span.trace_id, "032x")
            record.span_id = format(span.span_id, "016x")
        job_id = getattr(record, "job_id", "") or _job_id.get()
        if job_id:
            record.job_id = job_id
        return True


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as one JSON object per line."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(_ContextFilter(service))
    handler.setFormatter(
        JsonFormatter(
            "{severity}{name}{message}",
            style="{",
            timestamp="timestamp",
            rename_fields={"name": "logger"},
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("nats", "faster_whisper", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
