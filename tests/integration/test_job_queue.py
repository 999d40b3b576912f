"""The job queue on a real database (SQLite, and PostgreSQL with concurrent workers)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import Job, JobState, Study, StudyState, utcnow
from dicom_node.jobs import queue
from dicom_node.retry import RetryPolicy
from tests.support.database import migrated_sessions

POLICY = RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=30), backoff_factor=2, max_delay=timedelta(seconds=100))
LEASE = timedelta(seconds=60)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(f"sqlite:///{tmp_path / 'q.db'}")


def _study(sessions: sessionmaker[Session], uid: str = "1.2.3") -> int:
    now = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid=uid, state=StudyState.COMPLETE, generation=1, opened_at=now, last_received_at=now)
        session.add(study)
        session.flush()
        return study.id


def _enqueue(sessions: sessionmaker[Session], study_id: int, generation: int = 1) -> bool:
    with sessions.begin() as session:
        return queue.enqueue(session, study_id=study_id, generation=generation, model_key="threshold@1", max_attempts=3, now=utcnow())


def _jobs(sessions: sessionmaker[Session]) -> list[tuple[int, str, int]]:
    with sessions() as session:
        return [(j.study_generation, j.state.value, j.attempts) for j in session.scalars(select(Job).order_by(Job.id))]


def test_enqueue_is_idempotent(sessions: sessionmaker[Session]) -> None:
    study = _study(sessions)
    assert _enqueue(sessions, study) is True
    assert _enqueue(sessions, study) is False
    assert _jobs(sessions) == [(1, "queued", 0)]


def test_reopened_study_gets_a_new_job_that_supersedes_the_old(sessions: sessionmaker[Session]) -> None:
    study = _study(sessions)
    _enqueue(sessions, study, 1)
    _enqueue(sessions, study, 2)
    assert _jobs(sessions) == [(1, "superseded", 0), (2, "queued", 0)]


def test_claim_succeed(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, _study(sessions))
    with sessions.begin() as session:
        job = queue.claim(session, owner="w1", lease=LEASE, now=utcnow())
    assert job is not None and job.study_instance_uid == "1.2.3" and job.attempts == 1
    with sessions.begin() as session:
        assert queue.claim(session, owner="w2", lease=LEASE, now=utcnow()) is None, "one job, one worker"
        assert queue.heartbeat(session, job, lease=LEASE, now=utcnow())
        assert queue.succeed(session, job, summary="{}", now=utcnow())
    assert _jobs(sessions) == [(1, "succeeded", 1)]


def test_failures_back_off_then_dead_letter_with_the_reason(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, _study(sessions))
    now = utcnow()
    states = []
    for _ in range(3):
        with sessions.begin() as session:
            job = queue.claim(session, owner="w", lease=LEASE, now=now)
            assert job is not None
            states.append(queue.fail(session, job, error=f"boom {job.attempts}", policy=POLICY, now=now))
            next_at = session.scalar(select(Job.next_attempt_at))
        assert states[-1] is JobState.DEAD or next_at == now + POLICY.delay_after(job.attempts)
        now += timedelta(seconds=200)
    assert states == [JobState.QUEUED, JobState.QUEUED, JobState.DEAD]
    with sessions() as session:
        dead = session.scalars(select(Job)).one()
    assert (dead.state, dead.last_error) == (JobState.DEAD, "boom 3")
    with sessions.begin() as session:
        assert queue.retry_now(session, dead.id, now=now)
    assert _jobs(sessions) == [(1, "queued", 0)]


def test_expired_lease_returns_the_job_to_the_queue(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, _study(sessions))
    now = utcnow()
    with sessions.begin() as session:
        lost = queue.claim(session, owner="crashed-worker", lease=LEASE, now=now)
    with sessions.begin() as session:
        assert queue.reap_expired_leases(session, policy=POLICY, now=now + LEASE / 2) == []
        assert queue.reap_expired_leases(session, policy=POLICY, now=now + LEASE * 2) == [lost.id]
        again = queue.claim(session, owner="w2", lease=LEASE, now=now + LEASE * 2)
    assert again is not None and again.id == lost.id and again.attempts == 2
    with sessions.begin() as session:
        assert not queue.succeed(session, lost, summary="{}", now=utcnow()), "the lost worker cannot finish it"
        assert not queue.heartbeat(session, lost, lease=LEASE, now=utcnow())


def test_cancel_stops_a_running_job_at_its_next_heartbeat(sessions: sessionmaker[Session]) -> None:
    _enqueue(sessions, _study(sessions))
    with sessions.begin() as session:
        job = queue.claim(session, owner="w", lease=LEASE, now=utcnow())
        assert queue.cancel(session, job.id, now=utcnow())
        assert not queue.heartbeat(session, job, lease=LEASE, now=utcnow())


@pytest.mark.postgres
def test_concurrent_workers_on_postgresql_never_share_a_job(postgres_url: str) -> None:
    for sessions in migrated_sessions(postgres_url):
        for i in range(40):
            _enqueue(sessions, _study(sessions, f"1.2.{i}"))
        claimed: dict[str, list[int]] = {}

        def worker(name: str) -> None:
            mine = claimed.setdefault(name, [])
            while True:
                with sessions.begin() as session:
                    job = queue.claim(session, owner=name, lease=LEASE, now=utcnow())
                if job is None:
                    return
                mine.append(job.id)

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        every = [job for jobs in claimed.values() for job in jobs]
        assert len(every) == 40 and len(set(every)) == 40
        assert sum(1 for jobs in claimed.values() if jobs) > 1, "the work should spread over workers"
