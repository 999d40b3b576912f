"""APScheduler ticks: periodic scans over the database, which remains the queue.

A tick only looks at database state and moves it forward; it holds no work of its own,
so a tick that is skipped (a busy process, a restart) is simply done by the next one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.db.models import utcnow
from dicom_node.ingest.completion import CompletedStudy, CompletionRule, complete_due_studies

logger = logging.getLogger(__name__)


def completion_tick(sessions: sessionmaker[Session], rule: CompletionRule) -> list[CompletedStudy]:
    """Complete every study whose quiet period (or cap) has passed."""
    try:
        with sessions.begin() as session:
            completed = complete_due_studies(session, rule, utcnow())
    except SQLAlchemyError as exc:
        logger.warning(f"completion scan skipped: {exc.__class__.__name__}", extra={"stage": "completion"})
        return []
    for study in completed:
        logger.info(
            f"study complete ({study.reason})",
            extra={
                "study_instance_uid": study.study_instance_uid,
                "generation": study.generation,
                "stage": "completion",
                "reason": str(study.reason),
            },
        )
    return completed


def build_scheduler(settings: Settings, sessions: sessionmaker[Session]) -> BackgroundScheduler:
    """A scheduler with the completion scan; later stages add their ticks here."""
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        completion_tick,
        "interval",
        seconds=settings.completion.scan_interval_s,
        args=[sessions, CompletionRule.from_settings(settings.completion)],
        id="completion",
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    return scheduler
