"""APScheduler ticks over the database, which remains the queue.

A tick only reads database state and moves it forward; it holds no work of its own, so a
tick that is skipped (a busy process, a restart) is simply done by the next one:

- completion: complete quiet studies and, in the same transaction, enqueue their jobs;
- leases: return jobs of vanished workers to the queue (or dead-letter them);
- dispatch: claim due jobs and run them with the :class:`~dicom_node.worker.Worker`;
- outbox: send due deliveries, each destination on its own thread;
- retention (when enabled): delete studies some days after their results were delivered.

Completion, leases and retention run in one process at a time: each process schedules
them, and the one holding the tick's lease in the database (:mod:`dicom_node.jobs.tick_lease`)
runs them. Dispatch and outbox run everywhere; their rows are claimed one by one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.db.clock import database_now
from dicom_node.ingest.completion import CompletedStudy, CompletionRule, complete_due_studies
from dicom_node.jobs import queue, tick_lease
from dicom_node.retry import RetryPolicy
from dicom_node.worker import Worker

logger = logging.getLogger(__name__)


def completion_tick(
    sessions: sessionmaker[Session], rule: CompletionRule, *, model_key: str, max_attempts: int
) -> list[CompletedStudy]:
    """Complete every due study and enqueue its job, atomically."""
    try:
        with sessions.begin() as session:
            now = database_now(session)
            completed = complete_due_studies(session, rule, now)
            for study in completed:
                queue.enqueue(
                    session,
                    study_id=study.study_id,
                    generation=study.generation,
                    model_key=model_key,
                    max_attempts=max_attempts,
                    now=now,
                )
    except SQLAlchemyError as exc:
        logger.warning(f"completion scan skipped: {exc.__class__.__name__}", extra={"stage": "completion"})
        return []
    for study in completed:
        logger.info(
            f"study complete ({study.reason}); job queued",
            extra={
                "study_instance_uid": study.study_instance_uid,
                "generation": study.generation,
                "stage": "completion",
                "reason": str(study.reason),
            },
        )
    return completed


def lease_tick(sessions: sessionmaker[Session], policy: RetryPolicy) -> list[int]:
    """Reclaim jobs whose worker stopped heartbeating (crashed, killed, partitioned)."""
    try:
        with sessions.begin() as session:
            reaped = queue.reap_expired_leases(session, policy=policy, now=database_now(session))
    except SQLAlchemyError as exc:
        logger.warning(f"lease scan skipped: {exc.__class__.__name__}", extra={"stage": "lease"})
        return []
    for job_id in reaped:
        logger.warning("job reclaimed after its lease expired", extra={"job_id": job_id, "stage": "lease"})
    return reaped


#: A holder that stopped renewing loses a tick after this many of its intervals (at least MIN_TICK_LEASE).
TICK_LEASE_INTERVALS = 3
MIN_TICK_LEASE = timedelta(seconds=10)


@dataclass
class SingletonTick:
    """Runs ``tick`` only while this process holds the tick's lease in the database.

    The lease is renewed by a helper thread while the tick runs, so a tick that takes
    longer than the lease (a first retention run over a large archive) is never started
    a second time elsewhere. Leases are timed by the database's clock (:mod:`dicom_node.db.clock`).
    """

    sessions: sessionmaker[Session]
    name: str
    owner: str
    interval: timedelta
    tick: Callable[[], object]
    min_ttl: timedelta = MIN_TICK_LEASE

    @property
    def ttl(self) -> timedelta:
        return max(self.min_ttl, self.interval * TICK_LEASE_INTERVALS)

    def _acquire(self) -> bool:
        try:
            with self.sessions.begin() as session:
                return tick_lease.acquire(
                    session, self.name, owner=self.owner, ttl=self.ttl, now=database_now(session)
                )
        except SQLAlchemyError as exc:
            logger.warning(f"{self.name} tick skipped: {exc.__class__.__name__}", extra={"stage": self.name})
            return False

    def _renew(self, done: threading.Event) -> None:
        while not done.wait(self.ttl.total_seconds() / 3):
            if not self._acquire():
                logger.warning(f"{self.name} tick lease lost while running", extra={"stage": self.name})
                return

    def __call__(self) -> object:
        if not self._acquire():
            return None
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(done,), name=f"lease-{self.name}", daemon=True)
        renewer.start()
        try:
            return self.tick()
        finally:
            done.set()
            renewer.join()


def release_ticks(sessions: sessionmaker[Session], owner: str) -> None:
    """On a clean stop, hand this process's ticks to the others at once instead of after the lease."""
    try:
        with sessions.begin() as session:
            tick_lease.release(session, owner=owner)
    except SQLAlchemyError as exc:
        logger.warning(f"tick leases not released (they expire on their own): {exc.__class__.__name__}")


def build_scheduler(
    settings: Settings,
    sessions: sessionmaker[Session],
    *,
    model_key: str,
    owner: str,
    worker: Worker | None = None,
    outbox: Callable[[], object] | None = None,
    retention: Callable[[], object] | None = None,
    stop: threading.Event | None = None,
) -> BackgroundScheduler:
    """The ticks of this process: completion and leases always; dispatch and outbox when given."""
    scheduler = BackgroundScheduler(timezone=UTC)
    common = {"max_instances": 1, "coalesce": True, "next_run_time": datetime.now(UTC)}

    def add(tick_id: str, tick: Callable[..., object], seconds: float, *, singleton: bool, **kwargs: object) -> None:
        if singleton:
            tick = SingletonTick(sessions, tick_id, owner, timedelta(seconds=seconds), tick)
        # name: APScheduler's log lines then say which tick ("completion"), not "SingletonTick".
        scheduler.add_job(tick, "interval", seconds=seconds, id=tick_id, name=tick_id, kwargs=kwargs or None, **common)

    rule = CompletionRule.from_settings(settings.completion)
    add(
        "completion",
        lambda: completion_tick(sessions, rule, model_key=model_key, max_attempts=settings.jobs.retry.max_attempts),
        settings.completion.scan_interval_s,
        singleton=True,
    )
    policy = RetryPolicy.from_settings(settings.jobs.retry)
    add("leases", lambda: lease_tick(sessions, policy), max(1.0, settings.jobs.heartbeat_s), singleton=True)
    if worker is not None:
        add("dispatch", worker.run_available, settings.jobs.dispatch_interval_s, singleton=False, stop=stop)
    if outbox is not None:
        add("outbox", outbox, settings.delivery.interval_s, singleton=False)
    if retention is not None:
        add("retention", retention, settings.retention.interval_s, singleton=True)
    return scheduler
