"""The audit trail: a database table and an append-only JSON-lines file.

It answers who sent what (calling AE, host, study, count, time), what we produced and
where it was delivered. It carries UIDs, AE titles and counts, never patient names or
IDs. A failure to write the trail is logged loudly but never refuses an instance or fails
a job: the data path must not depend on the audit path.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from sqlalchemy import Engine, insert

from dicom_node.db.models import AuditEvent, utcnow

logger = logging.getLogger(__name__)


class AuditLog:
    """Records audit events in the ``audit_event`` table and, if configured, a file."""

    def __init__(self, engine: Engine, file: Path | None) -> None:
        self.engine = engine
        self.file = file
        self._lock = threading.Lock()
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)

    def record(
        self,
        event: str,
        *,
        study_instance_uid: str | None = None,
        calling_ae_title: str | None = None,
        peer_address: str | None = None,
        destination: str | None = None,
        count: int = 0,
        detail: str | None = None,
    ) -> None:
        """Write one event to the table and the file."""
        entry = {
            "at": utcnow(),
            "event": event,
            "study_instance_uid": study_instance_uid,
            "calling_ae_title": calling_ae_title,
            "peer_address": peer_address,
            "destination": destination,
            "count": count,
            "detail": detail,
        }
        try:
            with self.engine.begin() as connection:
                connection.execute(insert(AuditEvent).values(**entry))
        except Exception:  # the data path must not depend on the audit path
            logger.exception("audit event not recorded in the database", extra={"stage": "audit"})
        if self.file is None:
            return
        line = json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)
        try:
            with self._lock, self.file.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError:
            logger.exception("audit event not written to the file", extra={"stage": "audit"})
