"""Retention: delete what we received and what we produced, some days after delivery.

Never before: a study is eligible only when it is complete, no job of it is queued or
running, its latest job succeeded, and every delivery of that job's objects was sent; or
its latest job was skipped (not for this analysis, nothing to send), counted from then.
The clock starts at the last successful delivery (or at the job's end when no
destination wanted anything). When the results go first (``results_days`` shorter than
``received_days``), that time is kept on the study, so the instances still wait their
full period. The audit trail records each deletion; it is never deleted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.config import RetentionSettings
from dicom_node.db.clock import database_now
from dicom_node.db.models import Delivery, DeliveryState, Instance, Job, JobState, OutputObject, Series, Study, StudyState
from dicom_node.dicom.storage import InstanceStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionItem:
    """What retention will delete (or, in a dry run, would delete) for one study."""

    study_id: int
    study_instance_uid: str
    delivered_at: datetime
    instances: int  # received instances to delete (0: kept, or already gone)
    results: int  # produced objects to delete
    delete_study: bool  # nothing left: the study, its jobs and deliveries go too


def _delivered_at(session: Session, study: Study) -> datetime | None:
    """When the study's latest results were fully delivered, or None if not (yet)."""
    jobs = session.execute(select(Job).where(Job.study_id == study.id)).scalars().all()
    if not jobs or any(job.state in (JobState.QUEUED, JobState.RUNNING) for job in jobs):
        return None
    latest = max(jobs, key=lambda job: (job.study_generation, job.id))
    if latest.state == JobState.SKIPPED and latest.finished_at is not None:
        return latest.finished_at  # not for this analysis: nothing to deliver, the clock starts now
    if latest.state != JobState.SUCCEEDED or latest.finished_at is None:
        return None
    states = session.execute(
        select(Delivery.state, func.max(Delivery.sent_at))
        .join(OutputObject, OutputObject.id == Delivery.output_id)
        .where(OutputObject.job_id == latest.id)
        .group_by(Delivery.state)
    ).all()
    if any(state != DeliveryState.SENT for state, _ in states):
        return None
    if not states and study.results_delivered_at is not None:
        produced = session.scalar(select(func.count(OutputObject.id)).where(OutputObject.job_id == latest.id))
        if not produced:  # a succeeded job always produced an SR: retention deleted the results
            return study.results_delivered_at
    return max((sent for _, sent in states if sent is not None), default=latest.finished_at)


def plan(session: Session, *, now: datetime, received_days: float, results_days: float) -> list[RetentionItem]:
    """Every study due for deletion at ``now``, with what would go."""
    items = []
    # Delivery comes after completion: a study completed within the shorter period cannot be
    # due, so each tick looks only at old studies, not the whole archive.
    cutoff = now - timedelta(days=min(received_days, results_days))
    old_enough = or_(Study.completed_at.is_(None), Study.completed_at <= cutoff)
    for study in session.execute(select(Study).where(Study.state == StudyState.COMPLETE, old_enough)).scalars():
        delivered_at = _delivered_at(session, study)
        if delivered_at is None:
            continue
        instances = session.scalar(
            select(func.count(Instance.id)).join(Series, Series.id == Instance.series_id).where(Series.study_id == study.id)
        ) or 0
        results = session.scalar(
            select(func.count(OutputObject.id)).join(Job, Job.id == OutputObject.job_id).where(Job.study_id == study.id)
        ) or 0
        drop_instances = delivered_at <= now - timedelta(days=received_days)
        drop_results = delivered_at <= now - timedelta(days=results_days)
        if (drop_instances and instances) or (drop_results and results):
            items.append(
                RetentionItem(
                    study_id=study.id,
                    study_instance_uid=study.study_instance_uid,
                    delivered_at=delivered_at,
                    instances=instances if drop_instances else 0,
                    results=results if drop_results else 0,
                    delete_study=drop_instances and drop_results,
                )
            )
    return items


def _delete_rows(session: Session, item: RetentionItem) -> list[str]:
    """Delete the rows of one planned item; return the files they referenced."""
    paths: list[str] = []
    if item.instances:
        series_ids = select(Series.id).where(Series.study_id == item.study_id)
        paths += session.execute(select(Instance.path).where(Instance.series_id.in_(series_ids))).scalars().all()
        session.execute(delete(Instance).where(Instance.series_id.in_(series_ids)))
        session.execute(delete(Series).where(Series.study_id == item.study_id))
    if item.results:
        job_ids = select(Job.id).where(Job.study_id == item.study_id)
        paths += session.execute(select(OutputObject.path).where(OutputObject.job_id.in_(job_ids))).scalars().all()
        output_ids = select(OutputObject.id).where(OutputObject.job_id.in_(job_ids))
        session.execute(delete(Delivery).where(Delivery.output_id.in_(output_ids)))
        session.execute(delete(OutputObject).where(OutputObject.job_id.in_(job_ids)))
        session.execute(update(Study).where(Study.id == item.study_id).values(results_delivered_at=item.delivered_at))
    if item.delete_study:
        session.execute(delete(Job).where(Job.study_id == item.study_id))
        session.execute(delete(Study).where(Study.id == item.study_id))
    return paths


def run_configured_retention(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    settings: RetentionSettings,
    *,
    dry_run: bool,
    audit: AuditLog | None = None,
) -> list[RetentionItem]:
    """:func:`run_retention` with the configured periods, as of now by the database's clock
    (which every process's leases and times agree on)."""
    with sessions() as session:
        now = database_now(session)
    return run_retention(
        sessions,
        store,
        now=now,
        received_days=settings.received_days,
        results_days=settings.results_days,
        dry_run=dry_run,
        audit=audit,
    )


def run_retention(
    sessions: sessionmaker[Session],
    store: InstanceStore,
    *,
    now: datetime,
    received_days: float,
    results_days: float,
    dry_run: bool,
    audit: AuditLog | None = None,
) -> list[RetentionItem]:
    """Plan, and unless ``dry_run`` delete, study by study; returns the plan.

    Rows go first, in their own transaction, then the files: a crash in between leaves
    unreferenced files (harmless), never rows that point at missing files.
    """
    started = time.time()
    with sessions() as session:
        items = plan(session, now=now, received_days=received_days, results_days=results_days)
    if dry_run:
        return items
    done = []
    for item in items:
        with sessions.begin() as session:
            # Check again under the row lock: the study may have been reopened since planning.
            study = session.execute(select(Study).where(Study.id == item.study_id).with_for_update()).scalar()
            if study is None or study.state != StudyState.COMPLETE or _delivered_at(session, study) != item.delivered_at:
                continue
            paths = _delete_rows(session, item)
        # The rows are gone: say so before touching files, which may fail.
        done.append(item)
        if audit is not None:
            audit.record(
                "deleted",
                study_instance_uid=item.study_instance_uid,
                count=item.instances + item.results,
                detail=f"retention: {item.instances} received instance(s), {item.results} result object(s)",
            )
        left = [path for path in paths if not _remove_unless_rewritten(store, path, started)]
        if left:
            # No row points at these any more: an administrator must delete them by hand.
            logger.error(
                f"retention could not delete {len(left)} file(s) under the storage root: {', '.join(left[:5])}",
                extra={"study_instance_uid": item.study_instance_uid, "stage": "retention"},
            )
        logger.info(
            f"retention deleted {item.instances} instance(s) and {item.results} result(s)",
            extra={"study_instance_uid": item.study_instance_uid, "stage": "retention"},
        )
    return done


def _remove_unless_rewritten(store: InstanceStore, path: str, started: float) -> bool:
    """Delete a file, unless it was written after this run started: a sender re-sent that
    instance meanwhile (same UID, same path) and was told it is stored. False when the
    file system refused (read-only, I/O error); the other files are still tried."""
    absolute = store.absolute(path)
    try:
        if absolute.stat().st_mtime >= started:
            return True
        absolute.unlink(missing_ok=True)
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.error(f"retention could not delete a file: {exc.strerror}", extra={"path": path, "stage": "retention"})
        return False
    return True
