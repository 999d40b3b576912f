"""Recording received instances in the database, and reading back what was received.

Every write happens in one transaction per batch. Rows for studies and series are
created with INSERT ... ON CONFLICT DO NOTHING so several listener processes sharing
one PostgreSQL database never race each other into duplicate key errors, and the study
row is locked (``FOR UPDATE``) while its state changes, so a completion scan and a late
instance cannot both win.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import Instance, Series, SeriesState, Study, StudyState
from dicom_node.errors import DatabaseUnavailableError
from dicom_node.ingest.instance import ReceivedInstance

logger = logging.getLogger(__name__)

DuplicatePolicy = Literal["keep_first", "overwrite"]


class RecordOutcome(StrEnum):
    """What recording an instance changed."""

    STORED = "stored"  # a new instance
    REPLACED = "replaced"  # a duplicate SOP Instance UID, overwritten by policy
    DUPLICATE = "duplicate"  # a duplicate SOP Instance UID, first copy kept by policy


@dataclass(frozen=True)
class RecordResult:
    """The outcome for one instance, and the study generation it now belongs to."""

    outcome: RecordOutcome
    generation: int
    reopened: bool


def _insert_ignore(session: Session, model: type[Any], values: dict[str, Any], key: str) -> None:
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(model).values(**values).on_conflict_do_nothing(index_elements=[key]))


def _touch_study(session: Session, item: ReceivedInstance) -> tuple[Study, bool]:
    now = item.received_at
    _insert_ignore(
        session,
        Study,
        {
            "study_instance_uid": item.study_instance_uid,
            "state": StudyState.RECEIVING,
            "generation": 1,
            "opened_at": now,
            "last_received_at": now,
            "created_at": now,
        },
        "study_instance_uid",
    )
    study = session.scalars(
        select(Study).where(Study.study_instance_uid == item.study_instance_uid).with_for_update()
    ).one()
    reopened = study.state == StudyState.COMPLETE
    if reopened:
        study.state = StudyState.REOPENED
        study.generation += 1
        study.opened_at = now
        study.completed_at = None
        study.completion_reason = None
    study.last_received_at = max(study.last_received_at, now)
    return study, reopened


def _touch_series(session: Session, study: Study, item: ReceivedInstance) -> Series:
    now = item.received_at
    _insert_ignore(
        session,
        Series,
        {
            "study_id": study.id,
            "series_instance_uid": item.series_instance_uid,
            "modality": item.modality,
            "series_number": item.series_number,
            "state": SeriesState.RECEIVING,
            "first_received_at": now,
            "last_received_at": now,
        },
        "series_instance_uid",
    )
    series = session.scalars(
        select(Series).where(Series.series_instance_uid == item.series_instance_uid)
    ).one()
    series.state = SeriesState.RECEIVING
    series.completed_at = None
    series.last_received_at = max(series.last_received_at, now)
    return series


def _record_one(session: Session, item: ReceivedInstance, policy: DuplicatePolicy) -> RecordResult:
    existing = session.scalars(
        select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)
    ).one_or_none()
    if existing is not None and policy == "keep_first":
        return RecordResult(RecordOutcome.DUPLICATE, existing.study_generation, reopened=False)
    study, reopened = _touch_study(session, item)
    series = _touch_series(session, study, item)
    fields = {
        "series_id": series.id,
        "sop_class_uid": item.sop_class_uid,
        "transfer_syntax_uid": item.transfer_syntax_uid,
        "instance_number": item.instance_number,
        "path": item.path,
        "size_bytes": item.size_bytes,
        "calling_ae_title": item.calling_ae_title,
        "study_generation": study.generation,
        "received_at": item.received_at,
    }
    if existing is not None:
        for name, value in fields.items():
            setattr(existing, name, value)
        outcome = RecordOutcome.REPLACED
    else:
        session.add(Instance(sop_instance_uid=item.sop_instance_uid, **fields))
        outcome = RecordOutcome.STORED
    session.flush()
    return RecordResult(outcome, study.generation, reopened)


class Catalog:
    """The database side of receiving: record instances, answer what is stored."""

    def __init__(self, sessions: sessionmaker[Session], policy: DuplicatePolicy) -> None:
        self.sessions = sessions
        self.policy = policy

    def is_stored(self, sop_instance_uid: str) -> bool:
        """True when an instance with this SOP Instance UID is already recorded."""
        try:
            with self.sessions() as session:
                found = session.scalar(
                    select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
                )
        except SQLAlchemyError as exc:
            raise DatabaseUnavailableError(str(exc.__class__.__name__)) from exc
        return found is not None

    def record_batch(self, items: list[ReceivedInstance]) -> list[RecordResult | Exception]:
        """Record ``items`` in one transaction (group commit); isolate failures if it fails.

        Several associations' instances share one commit, and so one fsync of the
        database log. If the batch fails, each item is retried alone so that one bad row
        cannot fail its neighbours.
        """
        try:
            with self.sessions.begin() as session:
                return [_record_one(session, item, self.policy) for item in items]
        except SQLAlchemyError as exc:
            if len(items) == 1:
                return [DatabaseUnavailableError(exc.__class__.__name__)]
            logger.warning("group commit failed; recording one by one", extra={"count": len(items)})
        results: list[RecordResult | Exception] = []
        for item in items:
            results.extend(self.record_batch([item]))
        return results


@dataclass(frozen=True)
class StudySummary:
    """One line of ``dicom-node status``."""

    study_instance_uid: str
    state: StudyState
    generation: int
    series_count: int
    instance_count: int
    last_received_at: Any
    completed_at: Any
    completion_reason: str | None


def study_summaries(session: Session, limit: int = 50) -> list[StudySummary]:
    """The most recently active studies with their series and instance counts."""
    rows = session.execute(
        select(
            Study,
            func.count(func.distinct(Series.id)),
            func.count(Instance.id),
        )
        .outerjoin(Series, Series.study_id == Study.id)
        .outerjoin(Instance, Instance.series_id == Series.id)
        .group_by(Study.id)
        .order_by(Study.last_received_at.desc())
        .limit(limit)
    ).all()
    return [
        StudySummary(
            study_instance_uid=study.study_instance_uid,
            state=study.state,
            generation=study.generation,
            series_count=series_count,
            instance_count=instance_count,
            last_received_at=study.last_received_at,
            completed_at=study.completed_at,
            completion_reason=study.completion_reason,
        )
        for study, series_count, instance_count in rows
    ]

