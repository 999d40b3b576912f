"""Retention deletes received and produced data some days after delivery, never before."""

from __future__ import annotations

import errno
from datetime import timedelta
from pathlib import Path, PurePosixPath

import pytest
from sqlalchemy import func, select

from dicom_node.audit import AuditLog
from dicom_node.db.models import (
    AuditEvent, Delivery, DeliveryState, Instance, Job, JobState, OutputObject, Study, StudyState, utcnow,
)
from dicom_node.retention import run_retention
from tests.conftest import RunningNode
from tests.support.node import status_code, store_files
from tests.support.synthetic_ct import SeriesSpec, write_series


def _received_and_delivered(
    node: RunningNode, tmp_path: Path, *, sent_days_ago: float, state: DeliveryState, finished_days_ago: float | None = None
) -> str:
    spec = SeriesSpec(n_slices=3, rows=64, columns=64)
    assert [status_code(s) for s in store_files(node.port, write_series(spec, tmp_path / "s"))] == [0, 0, 0]
    result = PurePosixPath("results/x/y/1.2.3.dcm")
    node.store.absolute(result).parent.mkdir(parents=True, exist_ok=True)
    node.store.absolute(result).write_bytes(b"result")
    sent_at = utcnow() - timedelta(days=sent_days_ago)
    finished_at = sent_at if finished_days_ago is None else utcnow() - timedelta(days=finished_days_ago)
    with node.sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        study.state = StudyState.COMPLETE
        job = Job(study_id=study.id, study_generation=1, model_key="m@1", state=JobState.SUCCEEDED,
                  max_attempts=1, finished_at=finished_at)
        session.add(job)
        session.flush()
        out = OutputObject(job_id=job.id, kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                           sop_instance_uid="1.2.3", path=str(result))
        session.add(out)
        session.flush()
        session.add(Delivery(output_id=out.id, destination="pacs", state=state, attempts=1,
                             sent_at=sent_at if state == DeliveryState.SENT else None))
    return spec.study_instance_uid


def _run(node: RunningNode, *, dry_run: bool, received_days: float = 7, results_days: float = 7,
         later: timedelta = timedelta(0)):  # type: ignore[no-untyped-def]
    return run_retention(node.sessions, node.store, now=utcnow() + later, received_days=received_days,
                         results_days=results_days, dry_run=dry_run, audit=AuditLog(node.sessions.kw["bind"], None))


def _count(node: RunningNode, column) -> int:  # type: ignore[no-untyped-def]
    with node.sessions() as session:
        return int(session.scalar(select(func.count(column))) or 0)


def test_delivered_long_ago_is_deleted_with_its_files(node: RunningNode, tmp_path: Path) -> None:
    uid = _received_and_delivered(node, tmp_path, sent_days_ago=8, state=DeliveryState.SENT)
    [planned] = _run(node, dry_run=True)
    assert (planned.study_instance_uid, planned.instances, planned.results, planned.delete_study) == (uid, 3, 1, True)
    assert len(node.stored_files()) == 4, "a dry run deletes nothing"
    _run(node, dry_run=False)
    assert node.stored_files() == []
    assert (_count(node, Study.id), _count(node, Instance.id), _count(node, OutputObject.id)) == (0, 0, 0)
    with node.sessions() as session:
        event = session.scalars(select(AuditEvent)).one()
    assert (event.event, event.study_instance_uid, event.count) == ("deleted", uid, 4)


def test_nothing_is_deleted_before_delivery(node: RunningNode, tmp_path: Path) -> None:
    _received_and_delivered(node, tmp_path, sent_days_ago=30, state=DeliveryState.PENDING)
    assert _run(node, dry_run=False) == []
    assert len(node.stored_files()) == 4


def test_nothing_is_deleted_before_the_retention_period(node: RunningNode, tmp_path: Path) -> None:
    _received_and_delivered(node, tmp_path, sent_days_ago=1, state=DeliveryState.SENT)
    assert _run(node, dry_run=False) == []
    assert _count(node, Instance.id) == 3


def test_results_deleted_first_leave_the_instances_their_full_period(node: RunningNode, tmp_path: Path) -> None:
    """Job done 31 days ago, delivered 21 days ago (a PACS outage): results go after 7 days,
    the instances 30 days after the delivery, not 30 days after the job."""
    _received_and_delivered(node, tmp_path, sent_days_ago=21, finished_days_ago=31, state=DeliveryState.SENT)
    [first] = _run(node, dry_run=False, received_days=30, results_days=7)
    assert (first.instances, first.results, first.delete_study) == (0, 1, False)
    assert _run(node, dry_run=False, received_days=30, results_days=7) == []
    assert _count(node, Instance.id) == 3
    [second] = _run(node, dry_run=False, received_days=30, results_days=7, later=timedelta(days=9, hours=23))
    assert (second.instances, second.delete_study) == (3, True)
    assert _count(node, Study.id) == 0


def test_a_file_that_cannot_be_deleted_is_reported_and_the_rest_go(
    node: RunningNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uid = _received_and_delivered(node, tmp_path, sent_days_ago=8, state=DeliveryState.SENT)
    stuck = next(p for p in node.stored_files() if p.name != "1.2.3.dcm")
    real_unlink = Path.unlink

    def unlink(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise OSError(errno.EROFS, "Read-only file system")
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    [done] = _run(node, dry_run=False)
    assert done.study_instance_uid == uid
    assert node.stored_files() == [stuck]
    assert _count(node, Study.id) == 0
    with node.sessions() as session:
        assert session.scalars(select(AuditEvent.event)).all() == ["deleted"]
    assert any("could not delete 1 file(s)" in r.getMessage() for r in caplog.records)


def test_a_skipped_study_is_deleted_after_the_period_from_its_skip(node: RunningNode, tmp_path: Path) -> None:
    """A stray slice, a chest CT: nothing is ever sent, so waiting for a delivery would keep it forever."""
    spec = SeriesSpec(n_slices=1, rows=64, columns=64)
    assert [status_code(s) for s in store_files(node.port, write_series(spec, tmp_path / "s"))] == [0]
    with node.sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        study.state = StudyState.COMPLETE
        session.add(Job(study_id=study.id, study_generation=1, model_key="m@1", state=JobState.SKIPPED,
                        max_attempts=1, reason="1 slice covering 5 mm; at least 60 mm needed",
                        finished_at=utcnow() - timedelta(days=2)))
    assert _run(node, dry_run=False) == []
    [item] = _run(node, dry_run=False, later=timedelta(days=6))
    assert (item.study_instance_uid, item.instances, item.delete_study) == (spec.study_instance_uid, 1, True)
    assert node.stored_files() == []
