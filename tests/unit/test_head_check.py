"""The head check from the image, through the pipeline's selection, on phantoms and on real GE CT slices."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from dicom_node.config import SelectionSettings, Settings
from dicom_node.errors import NotApplicableError
from dicom_node.imaging.anatomy import head_from_image
from dicom_node.imaging.volume import assemble_volume
from dicom_node.pipeline import Pipeline, StudyInput
from tests.support.synthetic_ct import Anatomy, SeriesSpec, write_series

REPO = Path(__file__).resolve().parents[2]
GE_SLICES = REPO.parent / "shared" / "data" / "dicom-interop" / "dcmqi" / "data" / "segmentations" / "ct-3slice"


def _anonymised(directory: Path, spec: SeriesSpec) -> list[Path]:
    """Write the series, then blank what anonymisers blank: body part and descriptions."""
    paths = write_series(spec, directory)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.BodyPartExamined = ""
        ds.StudyDescription = ""
        ds.SeriesDescription = "C+ 0.625 STND"
        ds.save_as(path)
    return paths


def _pipeline(**selection) -> Pipeline:
    settings = Settings(selection=SelectionSettings(**selection))
    return Pipeline(settings, sessions=None, store=None, model=None)  # type: ignore[arg-type]


def test_real_ge_slices_are_not_a_head():
    paths = sorted(GE_SLICES.glob("*.dcm"))
    assert len(paths) == 3, f"the real GE CT slices are missing from {GE_SLICES} (see ../shared/data/README.md)"
    series_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
    evidence = head_from_image(assemble_volume(paths, series_instance_uid=series_uid))
    assert not evidence.is_head
    assert evidence.describe() == "skull ring on 0/3 slices, 415 mm FOV, 3 mm z"
    # Through the selection: their header names no body part, so the image decides.
    with pytest.raises(NotApplicableError, match=r"not head: image \(skull ring on 0/3 slices"):
        _pipeline().select_and_load(StudyInput("1.2.3", {series_uid: paths}))


def test_an_anonymised_head_is_chosen_from_its_image(tmp_path):
    spec = SeriesSpec(n_slices=34, rows=192, columns=192, pixel_spacing_mm=(1.2, 1.2), anatomy=Anatomy())
    head = _anonymised(tmp_path / "head", spec)
    chest_spec = SeriesSpec(
        n_slices=34, rows=192, columns=192, pixel_spacing_mm=(2.1, 2.1), anatomy=Anatomy(body="chest"),
        study_instance_uid=spec.study_instance_uid, series_number=3,
    )
    chest = _anonymised(tmp_path / "chest", chest_spec)
    study = StudyInput(spec.study_instance_uid, {spec.series_instance_uid: head, chest_spec.series_instance_uid: chest})
    volume, headers = _pipeline().select_and_load(study)
    assert volume.series_instance_uid == spec.series_instance_uid and len(headers) == 34
    # Header only: neither series names the head, so nothing qualifies.
    with pytest.raises(NotApplicableError, match="names the head"):
        _pipeline(head_check="header").select_and_load(study)


def test_the_reason_names_the_image_rule(tmp_path, caplog):
    spec = SeriesSpec(n_slices=34, rows=192, columns=192, pixel_spacing_mm=(1.2, 1.2), anatomy=Anatomy())
    paths = _anonymised(tmp_path, spec)
    with caplog.at_level("INFO", logger="dicom_node.pipeline"):
        _pipeline().select_and_load(StudyInput(spec.study_instance_uid, {spec.series_instance_uid: paths}))
    lines = [r.getMessage() for r in caplog.records if "series selection" in r.getMessage()]
    assert len(lines) == 1
    assert "chosen: passes every rule" in lines[0]
    assert "head: image (skull ring on " in lines[0] and "/34 slices, 230 mm FOV, 170 mm z)" in lines[0]
