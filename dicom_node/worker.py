"""The worker: claims due jobs one at a time, runs each with a heartbeat, records the outcome.

A job's outcome is written in one transaction: success with its output rows and their
deliveries (:func:`dicom_node.send.outbox.record_outputs`), a retry or dead letter
(:func:`dicom_node.jobs.queue.fail`), or skipped. The ticks that drive it are in
:mod:`dicom_node.ticks`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.db.clock import database_now
from dicom_node.db.models import JobState
from dicom_node.errors import AnalysisError, NotApplicableError
from dicom_node.jobs import queue
from dicom_node.jobs.queue import ClaimedJob
from dicom_node.metrics import Metrics
from dicom_node.pipeline import JobOutput
from dicom_node.process import process_owner
from dicom_node.retry import RetryPolicy
from dicom_node.send.outbox import record_outputs

logger = logging.getLogger(__name__)


RunJob = Callable[[ClaimedJob], JobOutput]


@dataclass
class Worker:
    """Claims jobs from the database and runs them with ``run_job``, heartbeating meanwhile."""

    sessions: sessionmaker[Session]
    run_job: RunJob
    #: Destination name -> object kinds it wants; a callable gives the running ones (a reload
    #: changes them), read once per finished job.
    destinations: dict[str, list[str]] | Callable[[], dict[str, list[str]]]
    lease: timedelta
    heartbeat_every: timedelta
    policy: RetryPolicy
    owner: str = ""
    metrics: Metrics | None = None
    audit: AuditLog | None = None

    def __post_init__(self) -> None:
        if not self.owner:
            self.owner = process_owner()

    def run_available(self, stop: threading.Event | None = None) -> int:
        """Run due jobs until none is left (or ``stop`` is set); return how many ran."""
        ran = 0
        while stop is None or not stop.is_set():
            try:
                with self.sessions.begin() as session:
                    job = queue.claim(session, owner=self.owner, lease=self.lease, now=database_now(session))
            except SQLAlchemyError as exc:
                logger.warning(f"job claim skipped: {exc.__class__.__name__}", extra={"stage": "dispatch"})
                return ran
            if job is None:
                return ran
            self.run_one(job)
            ran += 1
        return ran

    def _heartbeat(self, job: ClaimedJob, done: threading.Event, lost: threading.Event) -> None:
        while not done.wait(self.heartbeat_every.total_seconds()):
            try:
                with self.sessions.begin() as session:
                    if not queue.heartbeat(session, job, lease=self.lease, now=database_now(session)):
                        lost.set()
                        return
            except SQLAlchemyError:
                logger.warning("heartbeat failed; will retry", extra={"job_id": job.id})

    def run_one(self, job: ClaimedJob) -> JobState | None:
        """Run one claimed job to success or failure; returns the job's new state."""
        context = {"job_id": job.id, "study_instance_uid": job.study_instance_uid, "generation": job.study_generation}
        logger.info(f"job started (attempt {job.attempts})", extra={**context, "stage": "dispatch"})
        done, lost = threading.Event(), threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job, done, lost), name=f"heartbeat-{job.id}", daemon=True)
        beat.start()
        try:
            output = self.run_job(job)
        except NotApplicableError as exc:  # not a failure: nothing to count, nothing to retry
            return self._skip(job, str(exc), context=context)
        except AnalysisError as exc:  # SourceDataError included: the data fails the same way every time
            self._count_failure(exc)
            return self._fail(job, f"{exc}", permanent=True, context=context)
        except Exception as exc:  # any failure of one study must not stop the worker
            logger.exception("job failed", extra={**context, "stage": "dispatch"})
            self._count_failure(exc)
            return self._fail(job, f"{exc.__class__.__name__}: {exc}", permanent=False, context=context)
        finally:
            done.set()
            beat.join()
        if lost.is_set():
            logger.warning("job lease lost while running; results discarded", extra=context)
            return None
        with self.sessions.begin() as session:
            now = database_now(session)
            if not queue.succeed(session, job, summary=json.dumps(output.summary), now=now, warnings=output.warnings):
                session.rollback()
                logger.warning("job no longer ours at the end; results discarded", extra=context)
                return None
            destinations = self.destinations() if callable(self.destinations) else self.destinations
            record_outputs(session, job_id=job.id, objects=output.objects, destinations=destinations, now=now)
        logger.info(f"job succeeded: {output.summary}", extra={**context, "stage": "record"})
        for warning in output.warnings:
            logger.warning(f"job warning: {warning}", extra={**context, "stage": "build"})
        if not any(destinations.values()):
            logger.warning(
                "no destination wants these results: they are kept, not sent "
                "(add a [[destinations]] entry, then `dicom-node resend STUDY_UID`)",
                extra={**context, "stage": "record"},
            )
        if self.audit is not None:
            self.audit.record(
                "produced",
                study_instance_uid=job.study_instance_uid,
                count=len(output.objects),
                detail=json.dumps([{"kind": o.kind, "sop_instance_uid": o.sop_instance_uid} for o in output.objects]),
            )
        if self.metrics is not None:
            for stage, seconds in output.timings_s.items():
                self.metrics.stage_seconds.labels(stage).observe(seconds)
        return JobState.SUCCEEDED

    def _count_failure(self, exc: Exception) -> None:
        if self.metrics is not None:
            self.metrics.failures.labels("job", type(exc).__name__).inc()

    def _fail(self, job: ClaimedJob, error: str, *, permanent: bool, context: dict[str, object]) -> JobState | None:
        with self.sessions.begin() as session:
            state = queue.fail(session, job, error=error, policy=self.policy, now=database_now(session), permanent=permanent)
        logger.warning(f"job failed ({state}): {error}", extra={**context, "stage": "dispatch", "reason": error[:200]})
        return state

    def _skip(self, job: ClaimedJob, reason: str, *, context: dict[str, object]) -> JobState | None:
        """The study is not for this analysis: the job ends skipped, and no result is sent.

        No SR either: for a stray slice of another patient, or a chest CT, a report about
        intracranial hemorrhage in that patient's record is noise, not information.
        """
        with self.sessions.begin() as session:
            skipped = queue.skip(session, job, reason=reason, summary=None, now=database_now(session))
        if not skipped:
            logger.warning("job no longer ours at the end; outcome discarded", extra=context)
            return None
        logger.info(f"job skipped: {reason}", extra={**context, "stage": "select", "reason": reason[:200]})
        if self.metrics is not None:
            self.metrics.skipped.inc()
        return JobState.SKIPPED
