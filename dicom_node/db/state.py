"""Counts of what the database holds, for metrics, health and ``dicom-node status``."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from dicom_node.db.models import Delivery, Job, Study, TickLease


def studies_by_state(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(Study.state, func.count()).group_by(Study.state)).all()
    return {_value(state): int(n) for state, n in rows}


def jobs_by_state(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {_value(state): int(n) for state, n in rows}


def deliveries_by_state(engine: Engine) -> dict[tuple[str, str], int]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(Delivery.destination, Delivery.state, func.count()).group_by(Delivery.destination, Delivery.state)
        ).all()
    return {(name, _value(state)): int(n) for name, state, n in rows}


def database_problem(engine: Engine) -> str | None:
    """None when the database answers with our schema, else why not.

    The query reads the schema's own table, not ``SELECT 1``: SQLite answers that even
    after its file was deleted (it opens a new, empty one).
    """
    try:
        with engine.connect() as connection:
            connection.execute(select(func.count()).select_from(TickLease))
    except Exception as exc:  # any failure means not ready
        return f"database unavailable ({exc.__class__.__name__})"
    return None


def recent_errors(engine: Engine, limit: int = 5) -> list[tuple[str, str]]:
    """The latest job and delivery errors, newest first, as (what, why) pairs."""
    with engine.connect() as connection:
        jobs = connection.execute(
            select(Job.id, Job.state, Job.last_error)
            .where(Job.last_error.is_not(None))
            .order_by(Job.id.desc())
            .limit(limit)
        ).all()
        deliveries = connection.execute(
            select(Delivery.id, Delivery.destination, Delivery.state, Delivery.last_error)
            .where(Delivery.last_error.is_not(None), Delivery.state != "sent")
            .order_by(Delivery.id.desc())
            .limit(limit)
        ).all()
    errors = [(f"job {row.id} ({_value(row.state)})", row.last_error) for row in jobs]
    errors += [(f"delivery {row.id} to {row.destination} ({_value(row.state)})", row.last_error) for row in deliveries]
    return errors


def _value(state: object) -> str:
    return str(getattr(state, "value", state))
