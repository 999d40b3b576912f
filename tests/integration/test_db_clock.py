"""Leases, claims and "last received" go by the database's clock: a host whose clock is wrong
takes no live lease and shortens no quiet period (PostgreSQL, the multi-host database).

A skewed host is simulated by moving the only host clock the node could read,
:func:`dicom_node.db.models.utcnow` (as imported by :mod:`dicom_node.db.clock`), an hour ahead.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db import clock
from dicom_node.db.clock import database_now
from dicom_node.db.models import Job, JobState, Study, StudyState, utcnow
from dicom_node.ingest.catalog import Catalog
from dicom_node.ingest.instance import ReceivedInstance
from dicom_node.jobs import queue
from dicom_node.retry import RetryPolicy
from dicom_node.ticks import SingletonTick, lease_tick
from tests.support.database import migrated_sessions

SKEW = timedelta(hours=1)
LEASE = timedelta(seconds=60)
POLICY = RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=1), backoff_factor=2, max_delay=timedelta(seconds=10))


@pytest.fixture(params=["sqlite", "postgresql"])
def any_sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    yield from migrated_sessions(url)


@pytest.fixture
def sessions(postgres_url: str) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(postgres_url)


def _host_clock_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "utcnow", lambda: utcnow() + SKEW)


def test_database_now_is_naive_utc(any_sessions: sessionmaker[Session]) -> None:
    with any_sessions() as session:
        now = database_now(session)
    assert isinstance(now, datetime) and now.tzinfo is None
    assert abs(now - utcnow()) < timedelta(seconds=5)  # the server runs on this machine


def test_postgresql_time_is_the_servers_not_the_hosts(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    _host_clock_ahead(monkeypatch)
    with sessions() as session:
        assert abs(database_now(session) - utcnow()) < timedelta(seconds=5)


def test_a_host_whose_clock_runs_ahead_takes_no_live_tick(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    SingletonTick(sessions, "completion", "honest", timedelta(seconds=10), lambda: ran.append("honest"))()
    _host_clock_ahead(monkeypatch)
    SingletonTick(sessions, "completion", "ahead", timedelta(seconds=10), lambda: ran.append("ahead"))()
    assert ran == ["honest"]


def test_a_host_whose_clock_runs_ahead_reclaims_no_running_job(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    with sessions.begin() as session:
        now = database_now(session)
        study = Study(study_instance_uid="1.2.3", state=StudyState.COMPLETE, generation=1, opened_at=now, last_received_at=now)
        session.add(study)
        session.flush()
        queue.enqueue(session, study_id=study.id, generation=1, model_key="threshold@1", max_attempts=3, now=now)
    with sessions.begin() as session:
        job = queue.claim(session, owner="honest", lease=LEASE, now=database_now(session))
    assert job is not None
    _host_clock_ahead(monkeypatch)
    assert lease_tick(sessions, POLICY) == []
    with sessions.begin() as session:
        assert queue.claim(session, owner="ahead", lease=LEASE, now=database_now(session)) is None
        state, owner = session.execute(select(Job.state, Job.lease_owner).where(Job.id == job.id)).one()
    assert (state, owner) == (JobState.RUNNING, "honest")


def test_a_listener_whose_clock_runs_ahead_records_the_databases_time(
    sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise the completion tick, elsewhere, would wait an hour longer than the quiet period."""
    _host_clock_ahead(monkeypatch)
    engine = sessions.kw["bind"]
    item = ReceivedInstance(
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        sop_instance_uid="1.2.3.4.5",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        series_number=1,
        instance_number=1,
        calling_ae_title="STORESCU",
        path="1.2.3/1.2.3.4/1.2.3.4.5.dcm",
    )
    (result,) = Catalog(engine, "keep_first").record_batch([item])
    assert not isinstance(result, Exception)
    with sessions() as session:
        last_received_at = session.execute(select(Study.last_received_at)).scalar_one()
    assert abs(last_received_at - utcnow()) < timedelta(seconds=5)
