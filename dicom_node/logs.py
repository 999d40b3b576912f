"""Structured logging: one JSON object per line, with the UIDs passed in ``extra``.

Callers log with ``logger.info("stored", extra={"study_instance_uid": ...})``. Only the
keys in :data:`CONTEXT_KEYS` are copied into the record, so a stray ``extra`` can never
leak patient names or IDs into the log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal

CONTEXT_KEYS = (
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "sop_class_uid",
    "transfer_syntax_uid",
    "calling_ae_title",
    "called_ae_title",
    "peer_address",
    "listen_address",
    "status",
    "reason",
    "stage",
    "job_id",
    "destination",
    "count",
    "duration_s",
    "path",
    "generation",
)


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {key: getattr(record, key) for key in CONTEXT_KEYS if hasattr(record, key)}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line for journald or a log shipper."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_context(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """Human-readable lines with the same context keys, for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        context = " ".join(f"{k}={v}" for k, v in _context(record).items())
        return f"{base} {context}" if context else base


def _dispatch_still_running(record: logging.LogRecord) -> bool:
    """Drop APScheduler's "skipped: maximum number of running instances" for the dispatch tick.

    The dispatch tick runs jobs, so it is still running at most of its intervals by
    design (about 30 such warnings per job). The same warning for any other tick (a
    completion scan or an outbox run longer than its interval) is kept: it means trouble.
    """
    message = record.getMessage()
    return not ('job "dispatch ' in message and "maximum number of running instances" in message)


def configure_logging(level: str, fmt: Literal["json", "text"]) -> None:
    """Send all logs to stderr in the chosen format, keeping patient data out of them.

    pynetdicom logs every PDU and, at debug level, data set contents, so it never goes
    below WARNING. pydicom and highdicom quote attribute values (a birth date, a patient
    ID) in their validation warnings, so their loggers stay at ERROR, and Python warnings
    (which pydicom also raises with those values) go through logging at ERROR only: the
    node's own log lines carry the UIDs an administrator needs.
    """
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    for name in ("pydicom", "highdicom", "py.warnings"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("apscheduler.scheduler").addFilter(_dispatch_still_running)
    logging.getLogger("alembic").setLevel(logging.WARNING)
