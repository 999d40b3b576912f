"""Counts of what the database holds, for metrics, health and ``dicom-node status``."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from dicom_node.db.models import Delivery, Job, OutputObject, Study, TickLease


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


#: Job states whose recorded reason is not an error to act on.
NOT_ERRORS = ("skipped", "succeeded")


@dataclass(frozen=True)
class RecentError:
    """A job's or a delivery's last error, and whose it is."""

    what: str  # "job 7 (dead)" or "delivery 12 to pacs (pending)"
    why: str
    delivery: bool
    study_instance_uid: str
    job_id: int | None = None  # a job's error: its id, for the advice's commands


def recent_errors(engine: Engine, limit: int = 5) -> list[RecentError]:
    """The latest job and delivery errors, newest first."""
    with engine.connect() as connection:
        jobs = connection.execute(
            select(Job.id, Job.state, Job.last_error, Study.study_instance_uid)
            .join(Study, Study.id == Job.study_id)
            # A skipped job (not applicable: not a head, too small) is an outcome, not an error.
            .where(Job.last_error.is_not(None), Job.state.not_in(NOT_ERRORS))
            .order_by(Job.id.desc())
            .limit(limit)
        ).all()
        deliveries = connection.execute(
            select(Delivery.id, Delivery.destination, Delivery.state, Delivery.last_error, Study.study_instance_uid)
            .join(OutputObject, OutputObject.id == Delivery.output_id)
            .join(Job, Job.id == OutputObject.job_id)
            .join(Study, Study.id == Job.study_id)
            .where(Delivery.last_error.is_not(None), Delivery.state != "sent")
            .order_by(Delivery.id.desc())
            .limit(limit)
        ).all()
    errors = [
        RecentError(f"job {row.id} ({_value(row.state)})", row.last_error, False, row.study_instance_uid, row.id)
        for row in jobs
    ]
    errors += [
        RecentError(
            f"delivery {row.id} to {row.destination} ({_value(row.state)})",
            row.last_error,
            True,
            row.study_instance_uid,
        )
        for row in deliveries
    ]
    return errors


def destinations_with_pending(session: Session) -> list[str]:
    """Names that pending deliveries wait for, configured or not."""
    return sorted(
        session.execute(select(Delivery.destination).where(Delivery.state == "pending").distinct()).scalars()
    )


def _value(state: object) -> str:
    return str(getattr(state, "value", state))
