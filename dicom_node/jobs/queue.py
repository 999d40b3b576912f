"""The job queue in the database: enqueue idempotently, claim under a lease, finish, fail.

Every transition is a conditional UPDATE guarded by the state (and by the lease owner
for a running job), so two workers, or a worker and the lease reaper, cannot both win.
On PostgreSQL a claim selects with ``FOR UPDATE SKIP LOCKED``, so N workers on N hosts
take different jobs without waiting on each other; on SQLite (one writer) the same
statement runs without the locking clause.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.orm import Session

from dicom_node.db.dialect import upsert_insert
from dicom_node.db.models import Job, JobState, Study, StudyState
from dicom_node.retry import RetryPolicy

OPEN_STATES = (JobState.QUEUED, JobState.RUNNING)
#: Final states an operator may run again (``jobs retry``).
FINISHED_STATES = (JobState.DEAD, JobState.CANCELLED, JobState.SUCCEEDED, JobState.SKIPPED)


@dataclass(frozen=True)
class ClaimedJob:
    """A job a worker holds, with what it needs to run it."""

    id: int
    study_id: int
    study_instance_uid: str
    study_generation: int
    model_key: str
    attempts: int
    max_attempts: int
    lease_owner: str


def enqueue(
    session: Session,
    *,
    study_id: int,
    generation: int,
    model_key: str,
    max_attempts: int,
    now: datetime,
) -> bool:
    """Queue one job for (study, generation, model); True if it is new.

    Older generations' open jobs for the same study and model are superseded: a
    reopened study is analysed again as a whole, once.
    """
    created = session.execute(
        upsert_insert(session, Job)
        .values(
            study_id=study_id,
            study_generation=generation,
            model_key=model_key,
            state=JobState.QUEUED,
            attempts=0,
            max_attempts=max_attempts,
            next_attempt_at=now,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["study_id", "study_generation", "model_key"])
        .returning(Job.id)
    ).scalar()
    session.execute(
        update(Job)
        .where(
            Job.study_id == study_id,
            Job.model_key == model_key,
            Job.study_generation < generation,
            Job.state.in_(OPEN_STATES),
        )
        .values(state=JobState.SUPERSEDED, finished_at=now, lease_owner=None, lease_expires_at=None)
    )
    return created is not None


def claim(session: Session, *, owner: str, lease: timedelta, now: datetime) -> ClaimedJob | None:
    """Take the oldest due job, if any, under a lease held by ``owner``."""
    candidate = session.execute(
        select(Job.id)
        .join(Study, Study.id == Job.study_id)
        # A study reopened by late instances waits: its job would analyse a moving target,
        # and the job of the next generation supersedes it when the study completes again.
        .where(
            Job.state == JobState.QUEUED,
            Job.next_attempt_at <= now,
            Study.state == StudyState.COMPLETE,
            Study.generation == Job.study_generation,
        )
        .order_by(Job.next_attempt_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True, of=Job)
    ).scalar()
    if candidate is None:
        return None
    row = session.execute(
        update(Job)
        .where(Job.id == candidate, Job.state == JobState.QUEUED)
        .values(
            state=JobState.RUNNING,
            lease_owner=owner,
            lease_expires_at=now + lease,
            attempts=Job.attempts + 1,
            started_at=now,
        )
        .returning(Job.id, Job.study_id, Job.study_generation, Job.model_key, Job.attempts, Job.max_attempts)
    ).first()
    if row is None:
        return None
    study_uid = session.execute(select(Study.study_instance_uid).where(Study.id == row.study_id)).scalar_one()
    return ClaimedJob(
        id=row.id,
        study_id=row.study_id,
        study_instance_uid=study_uid,
        study_generation=row.study_generation,
        model_key=row.model_key,
        attempts=row.attempts,
        max_attempts=row.max_attempts,
        lease_owner=owner,
    )


def _held(job: ClaimedJob):  # type: ignore[no-untyped-def]
    return (Job.id == job.id) & (Job.state == JobState.RUNNING) & (Job.lease_owner == job.lease_owner)


def heartbeat(session: Session, job: ClaimedJob, *, lease: timedelta, now: datetime) -> bool:
    """Extend the lease; False when the job is no longer ours (reclaimed, superseded, cancelled)."""
    result = session.execute(update(Job).where(_held(job)).values(lease_expires_at=now + lease))
    return result.rowcount == 1


def succeed(session: Session, job: ClaimedJob, *, summary: str, now: datetime, warnings: Sequence[str] = ()) -> bool:
    """Mark the job done; False (and nothing changes) if the lease was lost meanwhile.

    ``warnings`` say what the results lack and why (an object that could not be built):
    the job still succeeded, since the rest of its results go out.
    """
    return _release(
        session, job, state=JobState.SUCCEEDED, summary=summary, warnings="\n".join(warnings) or None,
        last_error=None, finished_at=now,
    )


def skip(session: Session, job: ClaimedJob, *, reason: str, summary: str | None, now: datetime) -> bool:
    """The study is not for this analysis (too small, not a head): a final outcome, not a failure.

    Not retried and not dead: nothing went wrong, and running it again would decide the same.
    """
    return _release(
        session, job, state=JobState.SKIPPED, reason=reason[:4000], summary=summary, last_error=None, finished_at=now
    )


def _release(session: Session, job: ClaimedJob, **outcome: object) -> bool:
    """Write the outcome of a job this worker holds and give up its lease; False (nothing
    written) when the lease was lost meanwhile (reclaimed, superseded, cancelled)."""
    result = session.execute(
        update(Job).where(_held(job)).values(lease_owner=None, lease_expires_at=None, **outcome)
    )
    return result.rowcount == 1


def _after_failure(attempts: int, max_attempts: int, policy: RetryPolicy, *, permanent: bool, now: datetime,
                   retry_at: datetime | None = None) -> dict[str, object]:
    """The one place that decides requeue or dead letter after a failed attempt.

    A permanent failure (the source data cannot be analysed as sent) is dead at once:
    another attempt would fail the same way. A transient one is retried after the
    backoff until the job's or the policy's attempts run out.
    """
    if permanent or policy.gives_up_after(attempts) or attempts >= max_attempts:
        return {"state": JobState.DEAD, "finished_at": now}
    return {"state": JobState.QUEUED, "next_attempt_at": retry_at or now + policy.delay_after(attempts)}


def fail(
    session: Session, job: ClaimedJob, *, error: str, policy: RetryPolicy, now: datetime, permanent: bool = False
) -> JobState | None:
    """Record a failed attempt: queue a retry after the backoff, or dead-letter it
    (at once when ``permanent``).

    Returns the new state, or None if the job was no longer ours.
    """
    values = _after_failure(job.attempts, job.max_attempts, policy, permanent=permanent, now=now)
    return values["state"] if _release(session, job, last_error=error[:4000], **values) else None  # type: ignore[return-value]


def reap_expired_leases(session: Session, *, policy: RetryPolicy, now: datetime) -> list[int]:
    """Return jobs whose worker vanished (lease expired) to the queue, or dead-letter them."""
    reaped = []
    for lost in lost_jobs(session, Job.lease_expires_at < now):
        if give_back(session, lost, reason=f"lease of worker {lost.lease_owner} expired (worker lost)", policy=policy, now=now):
            reaped.append(lost.id)
    return reaped


@dataclass(frozen=True)
class LostJob:
    """A running job whose worker is gone (its lease expired, or its process died here)."""

    id: int
    attempts: int
    max_attempts: int
    lease_owner: str


def lost_jobs(session: Session, *where: ColumnElement[bool]) -> list[LostJob]:
    """The running jobs matching ``where``, locked; rows another process has locked are skipped."""
    rows = session.execute(
        select(Job.id, Job.attempts, Job.max_attempts, Job.lease_owner)
        .where(Job.state == JobState.RUNNING, *where)
        .with_for_update(skip_locked=True)
    ).all()
    return [LostJob(row.id, row.attempts, row.max_attempts, row.lease_owner) for row in rows]


def give_back(session: Session, lost: LostJob, *, reason: str, policy: RetryPolicy, now: datetime) -> JobState | None:
    """Queue a lost worker's job again at once, or dead-letter it when its attempts are used up.

    A lost worker is no fault of the study: no backoff. Returns the new state, or None
    when the job changed meanwhile (finished, or claimed again by another owner).
    """
    values = _after_failure(lost.attempts, lost.max_attempts, policy, permanent=False, now=now, retry_at=now)
    done = session.execute(
        update(Job)
        .where(Job.id == lost.id, Job.state == JobState.RUNNING, Job.lease_owner == lost.lease_owner)
        .values(last_error=reason, lease_owner=None, lease_expires_at=None, **values)
    )
    return values["state"] if done.rowcount == 1 else None  # type: ignore[return-value]


def retry_now(session: Session, job_id: int, *, now: datetime, include_succeeded: bool = False) -> bool:
    """Operator retry: a dead, cancelled or skipped job runs again, attempts reset; False if it is not one.

    A succeeded job only with ``include_succeeded``: its results went out, and running it
    again sends its new results in their place (see :func:`dicom_node.send.outbox.record_outputs`),
    which an operator must mean (``jobs retry --rerun``; ``resend`` sends the same ones again).
    The previous run's error, result and times are cleared; ``retries`` and ``retried_at``
    say it is a run the operator asked for.
    """
    states = FINISHED_STATES if include_succeeded else tuple(s for s in FINISHED_STATES if s != JobState.SUCCEEDED)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(states))
        .values(
            state=JobState.QUEUED, attempts=0, next_attempt_at=now, started_at=None, finished_at=None,
            last_error=None, reason=None, summary=None, warnings=None,
            retries=Job.retries + 1, retried_at=now,
        )
    )
    return result.rowcount == 1


def cancel(session: Session, job_id: int, *, now: datetime) -> bool:
    """Operator cancel of a queued or running job: a running worker's results are then discarded,
    because it can no longer heartbeat or finish the job."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_(OPEN_STATES))
        .values(state=JobState.CANCELLED, finished_at=now, lease_owner=None, lease_expires_at=None)
    )
    return result.rowcount == 1


@dataclass(frozen=True)
class JobView:
    """A job as ``dicom-node jobs`` shows it."""

    id: int
    study_instance_uid: str
    study_generation: int
    model_key: str
    state: JobState
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    lease_owner: str | None
    last_error: str | None
    summary: str | None
    warnings: list[str]
    reason: str | None
    created_at: datetime
    finished_at: datetime | None


def _view(job: Job, study_uid: str) -> JobView:
    return JobView(
        id=job.id,
        study_instance_uid=study_uid,
        study_generation=job.study_generation,
        model_key=job.model_key,
        state=job.state,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        next_attempt_at=job.next_attempt_at,
        lease_owner=job.lease_owner,
        last_error=job.last_error,
        summary=job.summary,
        warnings=job.warnings.splitlines() if job.warnings else [],
        reason=job.reason,
        created_at=job.created_at,
        finished_at=job.finished_at,
    )


def list_jobs(
    session: Session, *, limit: int = 50, state: JobState | None = None, study_instance_uid: str | None = None
) -> list[JobView]:
    """The newest jobs first, optionally of one state or one study."""
    query = select(Job, Study.study_instance_uid).join(Study, Study.id == Job.study_id)
    if state is not None:
        query = query.where(Job.state == state)
    if study_instance_uid is not None:
        query = query.where(Study.study_instance_uid == study_instance_uid)
    rows = session.execute(query.order_by(Job.id.desc()).limit(limit)).all()
    return [_view(job, uid) for job, uid in rows]


def latest_succeeded_job(session: Session, study_instance_uid: str) -> int | None:
    """The newest successful job of a study, whose results a resend sends again."""
    return session.execute(
        select(Job.id)
        .join(Study, Study.id == Job.study_id)
        .where(Study.study_instance_uid == study_instance_uid, Job.state == JobState.SUCCEEDED)
        .order_by(Job.study_generation.desc(), Job.id.desc())
        .limit(1)
    ).scalar()
