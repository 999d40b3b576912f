"""How a job ends, on a real database: permanent failures die at once, transient ones are
retried, studies that are not for this analysis are skipped (not failed), and results that
went out incomplete carry a warning that ``jobs show`` prints."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.models import Job, JobState, Study, StudyState, utcnow
from dicom_node.errors import NotApplicableError, SourceDataError, StorageError
from dicom_node.jobs import queue
from dicom_node.jobs.queue import ClaimedJob
from dicom_node.metrics import Metrics
from dicom_node.pipeline import JobOutput
from dicom_node.retry import RetryPolicy
from dicom_node.worker import Worker
from tests.support.database import migrated_sessions
from tests.support.node import NodeConfig, cli

POLICY = RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=30), backoff_factor=2, max_delay=timedelta(seconds=100))


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    yield from migrated_sessions(f"sqlite:///{tmp_path / 'node.db'}")


def _queued_job(sessions: sessionmaker[Session]) -> int:
    now = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid="1.2.3", state=StudyState.COMPLETE, generation=1, opened_at=now, last_received_at=now)
        session.add(study)
        session.flush()
        queue.enqueue(session, study_id=study.id, generation=1, model_key="threshold@1", max_attempts=3, now=now)
        return session.scalars(select(Job.id)).one()


def _run(sessions: sessionmaker[Session], run_job: Callable[[ClaimedJob], JobOutput]) -> tuple[Job, Metrics]:
    metrics = Metrics()
    worker = Worker(sessions=sessions, run_job=run_job, destinations={}, lease=timedelta(minutes=1),
                    heartbeat_every=timedelta(seconds=30), policy=POLICY, metrics=metrics)
    assert worker.run_available() == 1
    with sessions() as session:
        return session.scalars(select(Job)).one(), metrics


def _failures(metrics: Metrics) -> float:
    return sum(s.value for m in metrics.failures.collect() for s in m.samples if s.name.endswith("_total"))


def _raise(exc: Exception) -> Callable[[ClaimedJob], JobOutput]:
    def run(job: ClaimedJob) -> JobOutput:
        raise exc

    return run


def test_an_error_from_the_source_data_is_dead_at_once_with_its_reason(sessions: sessionmaker[Session]) -> None:
    _queued_job(sessions)
    job, metrics = _run(sessions, _raise(SourceDataError("Source images have no Frame Of Reference UID")))
    assert job.state is JobState.DEAD and job.attempts == 1
    assert job.last_error == "Source images have no Frame Of Reference UID"
    assert _failures(metrics) == 1


@pytest.mark.parametrize(
    "error",
    [StorageError("storage root not writable"), OperationalError("SELECT 1", {}, Exception("connection refused")),
     ConnectionResetError("peer reset")],
    ids=["storage", "database", "peer"],
)
def test_storage_database_and_peer_errors_are_retried(sessions: sessionmaker[Session], error: Exception) -> None:
    _queued_job(sessions)
    job, metrics = _run(sessions, _raise(error))
    assert job.state is JobState.QUEUED and job.attempts == 1
    assert job.next_attempt_at > utcnow() + timedelta(seconds=20)  # after the backoff, not at once
    assert _failures(metrics) == 1


def test_a_study_that_is_not_for_this_analysis_is_skipped_not_failed(sessions: sessionmaker[Session]) -> None:
    _queued_job(sessions)
    reason = "1 slice covering 5 mm; at least 60 mm needed (selection.min_coverage_mm)"
    job, metrics = _run(sessions, _raise(NotApplicableError(reason)))
    assert job.state is JobState.SKIPPED and job.attempts == 1
    assert job.reason == reason and job.last_error is None and job.finished_at is not None
    assert _failures(metrics) == 0
    assert metrics.skipped._value.get() == 1
    with sessions.begin() as session:  # final: nothing claims it again
        assert queue.claim(session, owner="w", lease=timedelta(minutes=1), now=utcnow() + timedelta(days=1)) is None


def test_results_that_went_out_incomplete_carry_warnings_shown_by_jobs_show(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    job_id = _queued_job(sessions)
    missing = ["segmentation (SEG) not created: Source images have no Frame Of Reference UID"]
    job, metrics = _run(sessions, lambda job: JobOutput(objects=[], summary={"hemorrhage": False}, warnings=missing))
    assert job.state is JobState.SUCCEEDED and job.warnings == missing[0]
    assert _failures(metrics) == 0
    config = NodeConfig(workdir=tmp_path).write()
    shown = cli("jobs", "show", str(job_id), "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert f"warning    {missing[0]}" in shown.stdout
    listed = cli("jobs", "list", "--config", str(config))
    assert "warning: segmentation (SEG) not created" in listed.stdout
