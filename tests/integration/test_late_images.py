"""A study that grows after its results went out: the next generation's results say they replace
the earlier ones (Predecessor Documents Sequence, "replaces" in every series description), and a
study sent again unchanged changes nothing."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from sqlalchemy import select

from dicom_node.db.models import Job, JobState, OutputObject, Study, StudyState
from dicom_node.ingest.scp import SUCCESS
from dicom_node.outputs.revision import MAX_DESCRIPTION
from tests.conftest import RunningNode
from tests.support.node import status_code, store_files
from tests.support.outputs_fixtures import assert_valid
from tests.support.run_jobs import complete_and_run
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

SPEC = SeriesSpec(n_slices=16, rows=128, columns=128, pixel_spacing_mm=(1.6, 1.6),
                  lesions=[Lesion((20.0, 10.0, 0.0), 12.0)], seed=7)


def _complete_and_run(node: RunningNode) -> list[int]:
    """Run what has been received; the study generations whose job has succeeded so far."""
    complete_and_run(node)
    with node.sessions() as session:
        return [j.study_generation for j in session.scalars(select(Job).where(Job.state == JobState.SUCCEEDED))]


def _outputs(node: RunningNode, generation: int) -> dict[str, list[pydicom.Dataset]]:
    with node.sessions() as session:
        rows = session.execute(
            select(OutputObject.kind, OutputObject.path).join(Job, Job.id == OutputObject.job_id)
            .where(Job.study_generation == generation)
        ).all()
    found: dict[str, list[pydicom.Dataset]] = {}
    for kind, path in rows:
        found.setdefault(kind, []).append(pydicom.dcmread(node.store.absolute(path)))
    return found


def _send(node: RunningNode, paths: list[Path]) -> None:
    assert [status_code(s) for s in store_files(node.port, paths)] == [SUCCESS] * len(paths)


def test_late_images_give_results_that_replace_the_earlier_ones(node: RunningNode, tmp_path: Path) -> None:
    paths = write_series(SPEC, tmp_path / "study")
    _send(node, paths[:12])
    assert _complete_and_run(node) == [1]
    first = _outputs(node, 1)
    assert {"seg", "sr", "key_images"} <= set(first)

    _send(node, paths[12:])  # the scanner's last slices arrive after the results went out
    assert _complete_and_run(node) == [1, 2]
    second = _outputs(node, 2)
    earlier_sr, report = first["sr"][0], second["sr"][0]

    [predecessor] = report.PredecessorDocumentsSequence
    assert predecessor.StudyInstanceUID == SPEC.study_instance_uid
    [series] = predecessor.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == earlier_sr.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == earlier_sr.SOPInstanceUID
    for kind, datasets in second.items():
        for dataset in datasets:
            description = str(dataset.SeriesDescription)
            assert "(replaces" in description and len(description) <= MAX_DESCRIPTION, (kind, description)
            assert "RESEARCH USE ONLY" in description
            assert dataset.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in first[kind]}
    for dataset in first["sr"] + first["seg"]:
        assert "replaces" not in str(dataset.SeriesDescription)
    path = tmp_path / "sr2.dcm"
    report.save_as(path, enforce_file_format=True)
    assert_valid(path)
    assert hd.sr.srread(path).PredecessorDocumentsSequence[0].ReferencedSeriesSequence


def test_a_study_sent_again_unchanged_changes_nothing(node: RunningNode, tmp_path: Path) -> None:
    paths = write_series(SPEC, tmp_path / "study")
    _send(node, paths)
    assert _complete_and_run(node) == [1]
    _send(node, paths)  # the PACS sends the whole study a second time
    assert _complete_and_run(node) == [1]
    with node.sessions() as session:
        study = session.scalars(select(Study)).one()
        assert (study.state, study.generation) == (StudyState.COMPLETE, 1)
        assert len(session.scalars(select(Job)).all()) == 1
