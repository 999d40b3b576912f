"""A lease in the database for ticks that must run in one process at a time.

Every worker process schedules the completion scan, the lease reaper and retention, so
that any of them can carry on when another stops. Running them everywhere at once would
be safe (each is a conditional UPDATE) but wasteful, and two retention runs would race
on the same files. The holder of a tick's row runs that tick and renews the lease; the
others skip it. A holder that dies (kill -9, lost host) simply stops renewing, and the
first process to tick after ``until`` takes over; one that stops cleanly releases it.

The same rows work on PostgreSQL (a conditional UPDATE is atomic under row locks: a
second updater re-checks the WHERE clause after the first commits) and on SQLite (one
writer at a time), so no advisory locks or dialect-specific code are needed.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from dicom_node.db.dialect import upsert_insert
from dicom_node.db.models import TickLease


def acquire(session: Session, name: str, *, owner: str, ttl: timedelta, now: datetime) -> bool:
    """Take or renew the lease on tick ``name`` for ``owner``; False when another process holds it."""
    session.execute(upsert_insert(session, TickLease).values(name=name).on_conflict_do_nothing(index_elements=["name"]))
    taken = session.execute(
        update(TickLease)
        .where(
            TickLease.name == name,
            or_(TickLease.owner.is_(None), TickLease.owner == owner, TickLease.until < now),
        )
        .values(owner=owner, until=now + ttl)
    )
    return bool(taken.rowcount)


def release(session: Session, *, owner: str) -> int:
    """Give up every tick ``owner`` holds (on a clean stop), so another process takes them at once."""
    return int(
        session.execute(update(TickLease).where(TickLease.owner == owner).values(owner=None, until=None)).rowcount
    )


def holders(session: Session) -> dict[str, tuple[str | None, datetime | None]]:
    """Each tick's current holder and lease end, for ``status`` and tests."""
    return {row.name: (row.owner, row.until) for row in session.query(TickLease).all()}
