"""The one clock that leases, claims and the quiet period are measured by: the database's.

A worker on one host writes "my lease runs until T"; a worker on another host reads T and
compares it with "now". A listener writes when a study last received an instance; the
completion tick, perhaps elsewhere, compares that with "now". If each host used its own
clock, a few seconds of skew would let a second worker take a live job, or complete a
study that is still arriving. Taking every such "now" from the database server makes the
hosts agree whatever their clocks say (job queues built on PostgreSQL do the same).

SQLite is a file on one host, and Python reads that host's clock directly.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from dicom_node.db.dialect import dialect_name
from dicom_node.db.models import utcnow

#: ``clock_timestamp()`` moves during a transaction (``now()`` is its start): a heartbeat
#: in a long transaction still says the time it was written. Naive UTC, as every column.
_POSTGRESQL_NOW = text("SELECT CAST(clock_timestamp() AT TIME ZONE 'UTC' AS timestamp)")

#: Where "now" comes from for a session or connection; tests pass a fixed one.
Clock = Callable[[Session | Connection], datetime]


def database_now(bind: Session | Connection) -> datetime:
    """Now as naive UTC, by the database server's clock (SQLite: this host's)."""
    if dialect_name(bind) == "postgresql":
        value: datetime = bind.execute(_POSTGRESQL_NOW).scalar_one()
        return value
    return utcnow()
