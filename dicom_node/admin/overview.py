"""Studies as an administrator asks about them: received, analysed, called, delivered.

One query per concern, each bounded by the number of studies shown, so ``status`` and
the web page stay fast on an archive of a million instances (the recent studies are
picked first by the index on ``last_received_at``, as in :func:`study_summaries`).
Only UIDs, states, numbers and times are read: never a patient name or ID.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db.models import Delivery, DeliveryState, Instance, Job, OutputObject, Series, Study
from dicom_node.ingest.catalog import StudySummary, study_summaries


@dataclass(frozen=True)
class JobLine:
    """The facts of one job that status and the web page show."""

    id: int
    state: str
    study_generation: int
    attempts: int
    max_attempts: int
    model_key: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    next_attempt_at: datetime | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    last_error: str | None
    summary: dict[str, Any]
    #: Why a skipped job was not analysed (too little coverage, not a head).
    reason: str | None = None
    #: What the results lack and why (an object that could not be built).
    warnings: tuple[str, ...] = ()
    #: How often an operator queued it again (``jobs retry``), and when last.
    retries: int = 0
    retried_at: datetime | None = None

    @property
    def state_text(self) -> str:
        """The state as ``status`` and the page print it: ``succeeded (warnings)`` for results that
        went out with something to know (``jobs show`` lists the warnings), else the state."""
        return f"{self.state} (warnings)" if self.state == "succeeded" and self.warnings else self.state

    @property
    def call(self) -> str:
        """``positive``, ``negative`` or ``-`` (not analysed, or analysed by nothing that calls)."""
        if "hemorrhage" not in self.summary:
            return "-"
        return "positive" if self.summary["hemorrhage"] else "negative"

    @property
    def volume_ml(self) -> float | None:
        value = self.summary.get("total_volume_ml")
        return float(value) if value is not None else None

    @property
    def probability(self) -> float | None:
        value = self.summary.get("probability")
        return float(value) if value is not None else None

    @property
    def stage_seconds(self) -> dict[str, float]:
        timings = self.summary.get("timings_s") or {}
        return {str(k): float(v) for k, v in timings.items()}


@dataclass(frozen=True)
class DeliveryCounts:
    """How the results of one job stand at one destination."""

    destination: str
    by_state: dict[str, int]
    last_error: str | None = None
    #: The latest ``resend`` of these results to this destination, if any.
    resent_at: datetime | None = None

    @property
    def text(self) -> str:
        """``3 sent`` or ``2 sent, 1 pending``: the state of the study at this destination (and its last resend)."""
        counts = ", ".join(f"{n} {state}" for state, n in sorted(self.by_state.items()))
        return counts + (f" (resent {self.resent_at:%Y-%m-%d %H:%M:%S} UTC)" if self.resent_at else "")


@dataclass(frozen=True)
class StudyOverview:
    """One study: what was received, the latest job and where its results went."""

    study: StudySummary
    job: JobLine | None
    deliveries: list[DeliveryCounts] = field(default_factory=list)

    @property
    def delivery_text(self) -> str:
        if not self.deliveries:
            return "-"
        return "; ".join(f"{d.destination}: {d.text}" for d in self.deliveries)


def _job_line(job: Job) -> JobLine:
    try:
        summary = json.loads(job.summary) if job.summary else {}
    except ValueError:  # a summary we cannot read is shown as no summary, not as a crash
        summary = {}
    return JobLine(
        id=job.id,
        state=str(getattr(job.state, "value", job.state)),
        study_generation=job.study_generation,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        model_key=job.model_key,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        next_attempt_at=job.next_attempt_at,
        lease_owner=job.lease_owner,
        lease_expires_at=job.lease_expires_at,
        last_error=job.last_error,
        summary=summary if isinstance(summary, dict) else {},
        reason=job.reason,
        warnings=tuple(job.warnings.splitlines()) if job.warnings else (),
        retries=job.retries or 0,
        retried_at=job.retried_at,
    )


def _latest_jobs(session: Session, study_ids: Iterable[int]) -> dict[int, Job]:
    """The newest job of each study (highest generation, then id)."""
    latest: dict[int, Job] = {}
    jobs = session.execute(
        select(Job).where(Job.study_id.in_(list(study_ids))).order_by(Job.study_generation, Job.id)
    ).scalars()
    for job in jobs:
        latest[job.study_id] = job
    return latest


def delivery_counts(session: Session, job_ids: Iterable[int]) -> dict[int, list[DeliveryCounts]]:
    """Per job, its objects' deliveries counted by destination and state, with the latest error."""
    ids = list(job_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(OutputObject.job_id, Delivery.destination, Delivery.state, func.count())
        .join(OutputObject, OutputObject.id == Delivery.output_id)
        .where(OutputObject.job_id.in_(ids))
        .group_by(OutputObject.job_id, Delivery.destination, Delivery.state)
    ).all()
    resent = {
        (job_id, destination): at
        for job_id, destination, at in session.execute(
            select(OutputObject.job_id, Delivery.destination, func.max(Delivery.resent_at))
            .join(OutputObject, OutputObject.id == Delivery.output_id)
            .where(OutputObject.job_id.in_(ids), Delivery.resent_at.is_not(None))
            .group_by(OutputObject.job_id, Delivery.destination)
        ).all()
    }
    # The latest error of each (job, destination), in id order so the newest wins.
    errors = {
        (job_id, destination): error
        for job_id, destination, error in session.execute(
            select(OutputObject.job_id, Delivery.destination, Delivery.last_error)
            .join(OutputObject, OutputObject.id == Delivery.output_id)
            .where(
                OutputObject.job_id.in_(ids),
                Delivery.last_error.is_not(None),
                Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)),
            )
            .order_by(Delivery.id)
        ).all()
    }
    grouped: dict[int, dict[str, dict[str, int]]] = {}
    for job_id, destination, state, count in rows:
        grouped.setdefault(job_id, {}).setdefault(destination, {})[str(getattr(state, "value", state))] = int(count)
    return {
        job_id: [
            DeliveryCounts(name, states, errors.get((job_id, name)), resent.get((job_id, name)))
            for name, states in sorted(by_destination.items())
        ]
        for job_id, by_destination in grouped.items()
    }


def recent_studies(session: Session, limit: int = 50) -> list[StudyOverview]:
    """The most recently active studies, each with its latest job and delivery state."""
    summaries = study_summaries(session, limit)
    if not summaries:
        return []
    ids = dict(
        session.execute(
            select(Study.study_instance_uid, Study.id).where(
                Study.study_instance_uid.in_([s.study_instance_uid for s in summaries])
            )
        ).all()
    )
    jobs = _latest_jobs(session, ids.values())
    deliveries = delivery_counts(session, [job.id for job in jobs.values()])
    overviews = []
    for summary in summaries:
        job = jobs.get(ids[summary.study_instance_uid])
        overviews.append(
            StudyOverview(summary, _job_line(job) if job else None, deliveries.get(job.id, []) if job else [])
        )
    return overviews


def job_by_id(session: Session, job_id: int) -> tuple[JobLine, str] | None:
    """One job and its Study Instance UID, or None."""
    row = session.execute(
        select(Job, Study.study_instance_uid).join(Study, Study.id == Job.study_id).where(Job.id == job_id)
    ).first()
    return (_job_line(row[0]), row[1]) if row else None


@dataclass(frozen=True)
class StudyDetail:
    """``dicom-node status STUDY_UID``: the study, every job it had, and every delivery."""

    overview: StudyOverview
    jobs: list[JobLine]
    deliveries: dict[int, list[DeliveryCounts]]


def study_detail(session: Session, study_instance_uid: str) -> StudyDetail | None:
    """Everything about one study, or None when no such study was ever received."""
    study_id = session.execute(
        select(Study.id).where(Study.study_instance_uid == study_instance_uid)
    ).scalar()
    if study_id is None:
        return None
    summary = _summary_of(session, study_instance_uid)
    jobs = [
        _job_line(job)
        for job in session.execute(
            select(Job).where(Job.study_id == study_id).order_by(Job.study_generation.desc(), Job.id.desc())
        ).scalars()
    ]
    deliveries = delivery_counts(session, [job.id for job in jobs])
    latest = jobs[0] if jobs else None
    overview = StudyOverview(summary, latest, deliveries.get(latest.id, []) if latest else [])
    return StudyDetail(overview, jobs, deliveries)


def _summary_of(session: Session, study_instance_uid: str) -> StudySummary:
    """The summary row of one study, counted as :func:`study_summaries` counts."""
    row = session.execute(
        select(Study, func.count(func.distinct(Series.id)), func.count(Instance.id))
        .outerjoin(Series, Series.study_id == Study.id)
        .outerjoin(Instance, Instance.series_id == Series.id)
        .where(Study.study_instance_uid == study_instance_uid)
        .group_by(Study.id)
    ).one()
    return StudySummary.of(*row)


def similar_study_uids(session: Session, study_instance_uid: str, limit: int = 3) -> list[str]:
    """Known studies whose UID starts like ``study_instance_uid`` (a truncated copy and paste)."""
    stem = study_instance_uid.rstrip(".")[: max(8, len(study_instance_uid) - 8)]
    return list(
        session.execute(
            select(Study.study_instance_uid)
            .where(Study.study_instance_uid.startswith(stem, autoescape=True))
            .order_by(Study.last_received_at.desc())
            .limit(limit)
        ).scalars()
    )
