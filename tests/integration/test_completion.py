"""Study completion from database state: several associations, reopening, the cap, PostgreSQL."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db.models import Instance, Series, SeriesState, Study, StudyState, utcnow
from dicom_node.ingest.completion import CompletionReason, CompletionRule, complete_due_studies
from dicom_node.ingest.scp import SUCCESS
from tests.conftest import RunningNode, start_node
from tests.support.node import NodeConfig, status_code, store_files
from tests.support.synthetic_ct import SeriesSpec, write_series

RULE = CompletionRule(quiet_period=timedelta(seconds=30), max_open=timedelta(minutes=10))


def _scan(node: RunningNode, seconds_from_now: float) -> list[str]:
    with node.sessions.begin() as session:
        done = complete_due_studies(session, RULE, utcnow() + timedelta(seconds=seconds_from_now))
    return [f"{c.study_instance_uid}:{c.generation}:{c.reason}" for c in done]


def _study(node: RunningNode) -> Study:
    with node.sessions() as session:
        return session.scalars(select(Study)).one()


def _send_in_three_associations(node: RunningNode, tmp_path: Path) -> SeriesSpec:
    spec = SeriesSpec(n_slices=9, rows=64, columns=64)
    paths = write_series(spec, tmp_path / "study")
    for part in (paths[:3], paths[3:6], paths[6:]):
        assert [status_code(s) for s in store_files(node.port, part)] == [SUCCESS] * 3
    return spec


def test_three_associations_make_one_study_complete_after_quiet_period(node: RunningNode, tmp_path: Path) -> None:
    spec = _send_in_three_associations(node, tmp_path)
    assert _scan(node, 5) == [], "complete before the quiet period passed"
    assert _study(node).state == StudyState.RECEIVING
    assert _scan(node, 31) == [f"{spec.study_instance_uid}:1:quiet"]
    study = _study(node)
    assert study.state == StudyState.COMPLETE and study.completion_reason == "quiet"
    with node.sessions() as session:
        series = session.scalars(select(Series)).one()
        assert series.state == SeriesState.COMPLETE
        assert len(session.scalars(select(Instance)).all()) == 9
    assert _scan(node, 60) == [], "a complete study is not completed twice"


def test_late_instance_reopens_the_study_with_a_new_generation(node: RunningNode, tmp_path: Path) -> None:
    spec = _send_in_three_associations(node, tmp_path)
    _scan(node, 31)
    late_spec = SeriesSpec(
        n_slices=2, rows=64, columns=64, study_instance_uid=spec.study_instance_uid, series_number=3
    )
    late = write_series(late_spec, tmp_path / "late")
    assert [status_code(s) for s in store_files(node.port, late)] == [SUCCESS, SUCCESS]
    study = _study(node)
    assert (study.state, study.generation, study.completed_at) == (StudyState.REOPENED, 2, None)
    with node.sessions() as session:
        generations = session.scalars(select(Instance.study_generation).order_by(Instance.id)).all()
    assert generations == [1] * 9 + [2, 2]
    assert _scan(node, 31) == [f"{spec.study_instance_uid}:2:quiet"]


def test_endless_stream_is_forced_complete_at_the_cap(node: RunningNode, tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=2, rows=64, columns=64)
    store_files(node.port, write_series(spec, tmp_path / "s"))
    with node.sessions.begin() as session:
        study = session.scalars(select(Study)).one()
        study.opened_at -= timedelta(minutes=11)  # opened 11 minutes ago, still receiving now
    assert _scan(node, 1) == [f"{spec.study_instance_uid}:1:{CompletionReason.FORCED}"]


@pytest.mark.postgres
def test_receive_and_complete_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    running, stop = start_node(NodeConfig(workdir=tmp_path / "pg", database_url=postgres_url))
    try:
        spec = _send_in_three_associations(running, tmp_path)
        assert _scan(running, 31) == [f"{spec.study_instance_uid}:1:quiet"]
        late = write_series(
            SeriesSpec(n_slices=1, rows=64, columns=64, study_instance_uid=spec.study_instance_uid),
            tmp_path / "late",
        )
        assert status_code(store_files(running.port, late)[0]) == SUCCESS
        study = _study(running)
        assert (study.state, study.generation) == (StudyState.REOPENED, 2)
    finally:
        stop()  # type: ignore[operator]


def test_our_own_results_sent_back_do_not_reopen_the_study(node: RunningNode, tmp_path: Path) -> None:
    from pydicom import dcmread
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    spec = _send_in_three_associations(node, tmp_path)
    _scan(node, 31)
    image = dcmread(next((tmp_path / "study").iterdir()))
    image.SOPClassUID = image.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    image.SOPInstanceUID = image.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    image.SeriesInstanceUID = generate_uid()
    image.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert status_code(store_files(node.port, [tmp_path / "sc.dcm"])[0]) == SUCCESS
    study = _study(node)
    assert (study.state, study.generation) == (StudyState.COMPLETE, 1), "a result coming back is stored, not re-analysed"
    assert spec.study_instance_uid == study.study_instance_uid
