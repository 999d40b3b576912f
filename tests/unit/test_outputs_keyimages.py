"""Key images: RGB Secondary Captures at source resolution, with outline and banner burned in."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import ImageFont
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from dicom_node.outputs import RESEARCH_USE_DISCLAIMER, build_key_images
from dicom_node.outputs.keyimages import (
    BANNER_TEXT,
    CONTOUR_RGB,
    OTHER_CONTOUR_RGB,
    mask_contour,
    render_lesion_image,
    render_summary_image,
    summary_lines,
    window_to_uint8,
)
from dicom_node.outputs.common import with_patient_study_type2
from dicom_node.outputs.uids import KEY_IMAGES
from tests.support.outputs_fixtures import (
    EMPTY_STUDY_ID_WARNING,
    EQUIPMENT,
    Case,
    assert_valid,
    case_key_images,
    make_case,
    negative_case,
    uid_elements,
    write_key_images,
)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def written(case: Case, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, pydicom.Dataset]]:
    paths = write_key_images(case_key_images(case), tmp_path_factory.mktemp("key"))
    return [(path, pydicom.dcmread(path)) for path in paths]


def test_a_summary_and_one_image_per_lesion(case: Case, written: list[tuple[Path, pydicom.Dataset]]) -> None:
    assert len(written) == len(case.lesions) + 1
    assert [int(ds.InstanceNumber) for _, ds in written] == list(range(1, len(case.lesions) + 2))
    assert {ds.SeriesInstanceUID for _, ds in written} == {case.uids.series(KEY_IMAGES)}


def test_secondary_capture_rgb_at_source_resolution(
    case: Case, written: list[tuple[Path, pydicom.Dataset]]
) -> None:
    source = case.source_images[0]
    for _, ds in written:
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert (ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.BitsAllocated) == ("RGB", 3, 8)
        assert (ds.Rows, ds.Columns) == (source.Rows, source.Columns)
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert list(ds.PatientOrientation) == ["L", "P"]


def test_marked_as_burned_in_workstation_capture_for_research(
    case: Case, written: list[tuple[Path, pydicom.Dataset]]
) -> None:
    source = case.source_images[0]
    for _, ds in written:
        assert ds.BurnedInAnnotation == "YES"
        assert ds.ConversionType == "WSD"
        assert ds.ImageComments == RESEARCH_USE_DISCLAIMER
        assert ds.ContentQualification == "RESEARCH"
        assert (ds.SeriesNumber, ds.SeriesDescription) == (9003, "AI ICH KEY IMAGES - RESEARCH USE ONLY")
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientName, ds.PatientID, ds.AccessionNumber) == (
            source.PatientName,
            source.PatientID,
            source.AccessionNumber,
        )
        assert ds.Manufacturer == EQUIPMENT.manufacturer


def test_lesion_images_show_the_key_slice_with_its_outline(
    case: Case, written: list[tuple[Path, pydicom.Dataset]]
) -> None:
    for lesion, (_, ds) in zip(case.lesions, written[1:], strict=True):
        k = lesion.key_slice_index
        source = case.source_images[k]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        pixels = ds.pixel_array
        outline = mask_contour(case.label_map[k] == lesion.segment_number)
        others = mask_contour((case.label_map[k] != 0) & (case.label_map[k] != lesion.segment_number))
        assert outline.any()
        assert np.all(pixels[outline] == CONTOUR_RGB)
        assert np.all(pixels[others & ~outline] == OTHER_CONTOUR_RGB)
        # Away from the text, the rest of the image is the brain-window grey of the slice.
        grey = window_to_uint8(case.hu[k], 40, 80)
        middle = slice(ds.Rows // 4, 3 * ds.Rows // 4)
        untouched = ~(outline | others)[middle]
        for channel in range(3):
            np.testing.assert_array_equal(pixels[middle][..., channel][untouched], grey[middle][untouched])


def test_the_banner_is_burned_in_at_the_top(written: list[tuple[Path, pydicom.Dataset]]) -> None:
    for _, ds in written:
        band = ds.pixel_array[: ds.Rows // 10].astype(int)
        # Antialiased yellow on black: red and green alike and bright, no blue.
        yellow = (band[..., 0] > 100) & (abs(band[..., 0] - band[..., 1]) < 8) & (band[..., 2] == 0)
        assert yellow.sum() > 30, "no banner text in the top band"


def test_the_banner_and_lines_use_only_glyphs_the_font_has() -> None:
    """Pillow's built-in font has no en dash: a missing glyph would burn in a box."""
    assert BANNER_TEXT.isascii()
    font = ImageFont.load_default(size=20)
    assert isinstance(font, ImageFont.FreeTypeFont), "Pillow lacks FreeType: text cannot be scaled"
    assert font.getbbox(BANNER_TEXT)[2] > 200


def test_summary_lists_count_volume_and_probability(case: Case) -> None:
    lines = summary_lines(case.assessment, case.lesions, "ich-threshold 1.0.0")
    total = sum(lesion.volume_ml for lesion in case.lesions)
    assert "Lesions: 2" in lines
    assert f"Total volume: {total:.1f} mL" in lines
    assert "Probability: 0.87" in lines
    assert "No hemorrhage detected" not in lines


def test_text_renders(case: Case) -> None:
    blank = render_summary_image(128, 128, [])
    summary = render_summary_image(128, 128, summary_lines(case.assessment, case.lesions, ""))
    below_banner = slice(128 // 6, 128)
    assert not blank[below_banner].any()
    assert (summary[below_banner] > 128).sum() > 100, "the summary lines did not render"
    mask = np.zeros((128, 128), bool)
    mask[60:70, 60:70] = True
    with_caption = render_lesion_image(np.full((128, 128), -1000.0), mask, "Lesion 1/1: 3.0 mL")
    assert (with_caption[-20:].min(axis=-1) > 100).sum() > 20, "the caption did not render"


def test_a_negative_study_gets_a_summary_that_says_so(tmp_path: Path) -> None:
    negative = negative_case()
    images = case_key_images(negative)
    assert len(images) == 1
    assert "No hemorrhage detected" in summary_lines(negative.assessment, (), "")
    (path,) = write_key_images(images, tmp_path)
    assert_valid(path)


def test_dciodvfy_finds_no_error(written: list[tuple[Path, pydicom.Dataset]]) -> None:
    for path, _ in written:
        assert_valid(path)


def test_sources_without_some_type2_attributes_are_completed_once_then_give_valid_images(tmp_path: Path) -> None:
    sparse = make_case(job_key="job-sparse")
    for source in sparse.source_images:
        del source.PatientBirthDate, source.AccessionNumber, source.StudyID
    with pytest.raises(ValueError, match=r"lacks Type 2 patient/study attributes \(PatientBirthDate, StudyID"):
        case_key_images(sparse)
    case = dataclasses.replace(sparse, source_images=[with_patient_study_type2(s) for s in sparse.source_images])
    for path in write_key_images(case_key_images(case), tmp_path):
        assert_valid(path, also_accepted=[EMPTY_STUDY_ID_WARNING])


def test_rebuilding_gives_identical_uids(case: Case) -> None:
    first = [uid_elements(image) for image in case_key_images(case)]
    second = [uid_elements(image) for image in case_key_images(case)]
    assert first == second
    assert [u["/SOPInstanceUID"] for u in first] == [
        case.uids.instance(KEY_IMAGES, n) for n in range(1, len(case.lesions) + 2)
    ]


def test_inputs_that_break_a_rule_are_refused(case: Case) -> None:
    arguments: dict[str, Any] = {
        "source_images": case.source_images,
        "hu_volume": case.hu,
        "label_map": case.label_map,
        "lesions": case.lesions,
        "assessment": case.assessment,
        "equipment": EQUIPMENT,
        "algorithm_text": "",
        "series_instance_uid": case.uids.series(KEY_IMAGES),
        "series_number": 9003,
        "series_description": "AI ICH KEY IMAGES",
        "sop_instance_uids": [case.uids.instance(KEY_IMAGES, n) for n in range(1, 4)],
    }
    with pytest.raises(ValueError, match="SOP Instance UIDs"):
        build_key_images(**{**arguments, "sop_instance_uids": arguments["sop_instance_uids"][:2]})
    with pytest.raises(ValueError, match="slice k must be source image k"):
        build_key_images(**{**arguments, "source_images": case.source_images[1:]})
    with pytest.raises(ValueError, match="same shape"):
        build_key_images(**{**arguments, "hu_volume": case.hu[:, 1:]})
    empty_slice = int(np.flatnonzero((case.label_map == 1).sum(axis=(1, 2)) == 0)[0])
    moved = (dataclasses.replace(case.lesions[0], key_slice_index=empty_slice),)
    with pytest.raises(ValueError, match="no voxel on its key slice"):
        build_key_images(
            **{**arguments, "lesions": moved, "sop_instance_uids": arguments["sop_instance_uids"][:2]}
        )


def test_mask_contour_is_the_mask_minus_its_erosion() -> None:
    mask = np.zeros((7, 7), bool)
    mask[1:6, 1:6] = True
    expected = mask.copy()
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(mask_contour(mask), expected)
    edge = np.ones((3, 3), bool)
    assert mask_contour(edge).sum() == 8  # the image border counts as outside


def test_realistic_key_images_build_quickly(tmp_path: Path) -> None:
    case = make_case(n_slices=40, rows=512, columns=512)
    started = time.perf_counter()
    images = case_key_images(case)
    elapsed = time.perf_counter() - started
    assert elapsed < 5.0, f"building the key images took {elapsed:.2f} s"
    for path in write_key_images(images, tmp_path):
        assert_valid(path)


@pytest.mark.parametrize(
    ("tilt_deg", "orientation"), [(15.0, ["L", "P"]), (-22.0, ["L", "P"]), (50.0, ["L", "F"])], ids=str
)
def test_tilted_sources_give_valid_images_oriented_by_their_major_axes(
    case: Case, tmp_path: Path, tilt_deg: float, orientation: list[str]
) -> None:
    """Gantry tilt: the image plane is oblique, and PatientOrientation takes one letter per
    direction, that of its major axis (highdicom refuses the two-letter oblique form that
    once failed every tilted study's key images, and with them the job)."""
    radians = np.deg2rad(tilt_deg)
    tilted = copy.deepcopy(case.source_images)  # the module's case stays untilted
    for source in tilted:
        source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, float(np.cos(radians)), float(-np.sin(radians))]
    images = case_key_images(dataclasses.replace(case, source_images=tilted))
    assert len(images) == len(case.lesions) + 1
    for path in write_key_images(images, tmp_path):
        assert list(pydicom.dcmread(path).PatientOrientation) == orientation
        assert_valid(path)
