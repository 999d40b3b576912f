"""A restarted process takes back at once what a dead process of its own host held.

Owners are judged for real: a child process is started and waited for, so its pid is
known to be dead; another host's owner, or one of another pid namespace, is left to the
lease rule. SQLite and PostgreSQL (whose reclaim locks rows with SKIP LOCKED).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    OutputObject,
    Study,
    StudyState,
    TickLease,
    utcnow,
)
from dicom_node.jobs.recovery import reclaim_at_startup
from dicom_node.process import is_dead_here, pid_namespace, process_owner
from dicom_node.retry import RetryPolicy
from tests.support.database import migrated_sessions

POLICY = RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=30), backoff_factor=2, max_delay=timedelta(seconds=100))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _owner(pid: int, *, host: str | None = None, namespace: str | None = None) -> str:
    return f"{host or socket.gethostname()}:{namespace or pid_namespace()}:{pid}:0badc0de"


def test_only_a_gone_process_of_this_host_and_namespace_is_dead() -> None:
    me = process_owner()
    dead = _dead_pid()
    assert is_dead_here(_owner(dead), me=me)
    assert not is_dead_here(me, me=me)
    # A predecessor that had our pid (a container's pid 1 restarted): another random part.
    assert is_dead_here(_owner(os.getpid()), me=me)
    assert not is_dead_here(_owner(os.getppid()), me=me), "a live process is not dead"
    # Pids of other hosts or other containers mean nothing here: the lease decides.
    assert not is_dead_here(_owner(dead, host="elsewhere"), me=me)
    assert not is_dead_here(_owner(dead, namespace="1"), me=me)
    # The form of an older release (host:pid:random) is not judged either.
    assert not is_dead_here(f"{socket.gethostname()}:{dead}:0badc0de", me=me)


def test_an_exited_process_not_yet_reaped_is_dead() -> None:
    """After kill -9 of `run`, its children become zombies of a pid 1 that may never reap them."""
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        _wait_until_exited_unreaped(zombie.pid)
        assert is_dead_here(_owner(zombie.pid), me=process_owner()), "a zombie holds nothing"
    finally:
        zombie.wait()


def _wait_until_exited_unreaped(pid: int) -> None:
    """Wait for the child (it runs ``pass``) to exit; ``waitid`` with WNOWAIT leaves it a zombie."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    assert info is not None and info.si_pid == pid


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'q.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    yield from migrated_sessions(url)


def _running_job(session: Session, uid: str, owner: str, attempts: int = 1) -> int:
    now = utcnow()
    study = Study(study_instance_uid=uid, state=StudyState.COMPLETE, generation=1, opened_at=now, last_received_at=now)
    session.add(study)
    session.flush()
    job = Job(
        study_id=study.id, study_generation=1, model_key="m@1", state=JobState.RUNNING, attempts=attempts,
        max_attempts=3, lease_owner=owner, lease_expires_at=now + timedelta(seconds=600), started_at=now,
    )
    session.add(job)
    session.flush()
    return job.id


def test_jobs_claims_and_ticks_of_a_dead_process_here_are_reclaimed_at_once(sessions: sessionmaker[Session]) -> None:
    dead, far = _owner(_dead_pid()), _owner(_dead_pid(), host="other-host")
    with sessions.begin() as session:
        mine = _running_job(session, "1.2.1", dead)
        last_try = _running_job(session, "1.2.2", dead, attempts=3)
        theirs = _running_job(session, "1.2.3", far)
        output = OutputObject(job_id=mine, kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                              sop_instance_uid="1.2.9", path="results/x.dcm")
        session.add(output)
        session.flush()
        session.add_all([
            Delivery(output_id=output.id, destination="pacs", state=DeliveryState.PENDING, attempts=0,
                     claimed_by=dead, claimed_until=utcnow() + timedelta(seconds=240)),
            Delivery(output_id=output.id, destination="archive", state=DeliveryState.PENDING, attempts=0,
                     claimed_by=far, claimed_until=utcnow() + timedelta(seconds=240)),
        ])
        session.add(TickLease(name="completion", owner=dead, until=utcnow() + timedelta(seconds=30)))

    reclaimed = reclaim_at_startup(sessions, owner=process_owner(), policy=POLICY)

    assert reclaimed.owners == [dead]
    assert (reclaimed.requeued_jobs, reclaimed.dead_jobs, reclaimed.deliveries, reclaimed.ticks) == ([mine], [last_try], 1, 1)
    with sessions() as session:
        jobs = {j.id: j for j in session.scalars(select(Job))}
        claims = dict(session.execute(select(Delivery.destination, Delivery.claimed_by)).all())
        tick = session.get(TickLease, "completion")
    assert jobs[mine].state == JobState.QUEUED and jobs[mine].lease_owner is None
    assert jobs[mine].next_attempt_at <= utcnow()
    assert "died" in (jobs[mine].last_error or "") and dead in (jobs[mine].last_error or "")
    assert jobs[last_try].state == JobState.DEAD, "the third attempt was the last: dead-lettered with the reason"
    assert jobs[theirs].state == JobState.RUNNING and jobs[theirs].lease_owner == far
    assert claims == {"pacs": None, "archive": far}
    assert tick is not None and tick.owner is None


def test_nothing_to_reclaim_changes_nothing(sessions: sessionmaker[Session]) -> None:
    live = _owner(os.getppid())
    with sessions.begin() as session:
        job = _running_job(session, "1.2.4", live)
    assert not reclaim_at_startup(sessions, owner=process_owner(), policy=POLICY)
    with sessions() as session:
        assert session.get(Job, job).state == JobState.RUNNING
