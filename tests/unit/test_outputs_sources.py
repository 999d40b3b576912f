"""Source headers made fit to copy: character set, VR values, kept UIDs, a derived frame of reference."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_node.outputs import SegmentSpec
from dicom_node.outputs.sources import UTF8, prepare_sources
from dicom_node.outputs.uids import frame_of_reference_uid
from dicom_node.uid_syntax import is_valid_uid
from tests.support.outputs_fixtures import (
    UID_ROOT,
    assert_valid,
    case_segmentation,
    make_case,
    without_frame_of_reference,
)

MALFORMED_STUDY_UID = "1.2.840.0099.1"  # leading zero in a component: invalid, but it is the study's


def _raw(dataset: Dataset, tag: int, vr: str, value: bytes) -> None:
    """Put an element as the parser leaves it (bytes not yet decoded), as dcmread does."""
    dataset[tag] = RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)


def _header(**attributes: object) -> Dataset:
    case = make_case()
    header = case.source_images[0].copy()
    for keyword, value in attributes.items():
        setattr(header, keyword, value)
    return header


def test_an_empty_character_set_becomes_the_default_repertoire() -> None:
    header = _header(SpecificCharacterSet="")
    prepared = prepare_sources([header], uid_root=UID_ROOT)
    assert "SpecificCharacterSet" not in prepared.images[0]
    assert header.SpecificCharacterSet == ""  # the caller's dataset is never changed


def test_an_unknown_character_set_is_decoded_with_the_default_and_written_as_utf8() -> None:
    header = _header(SpecificCharacterSet="ISO_IR 999")
    _raw(header, 0x00100010, "PN", "M\u00fcller^Hans".encode("latin-1"))
    prepared = prepare_sources([header], uid_root=UID_ROOT)
    image = prepared.images[0]
    assert image.SpecificCharacterSet == UTF8
    assert str(image.PatientName) == "M\u00fcller^Hans"


def test_a_latin1_name_survives_a_write_and_read_in_our_seg(tmp_path: Path) -> None:
    case = make_case()
    sources = []
    for source in case.source_images:
        header = source.copy()
        header.SpecificCharacterSet = "ISO_IR 100"
        _raw(header, 0x00100010, "PN", "Gr\u00e4f^J\u00fcrgen".encode("latin-1"))
        sources.append(header)
    prepared = prepare_sources(sources, uid_root=UID_ROOT)
    seg = case_segmentation(case, source_images=prepared.images)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert_valid(path)
    back = pydicom.dcmread(path)
    assert back.SpecificCharacterSet == UTF8
    assert str(back.PatientName) == "Gr\u00e4f^J\u00fcrgen"


def test_values_that_break_their_vr_are_normalised_or_emptied() -> None:
    header = _header(
        AccessionNumber="A" * 20,  # SH: 16 at most
        StudyDescription="HEAD\x01 ROUTINE  ",  # LO: no control characters, no trailing spaces
        PatientSex="m",  # CS: upper case
        ReferringPhysicianName="R" * 70 + "^X",  # PN: 64 per component group
    )
    _raw(header, 0x00100030, "DA", b"1960-01-01")  # DA is YYYYMMDD
    _raw(header, 0x00101030, "DS", b"seventy")  # PatientWeight is a number
    _raw(header, 0x00101020, "DS", b"1.75000000000000001")  # PatientSize: a DS has 16 characters at most
    prepared = prepare_sources([header], uid_root=UID_ROOT)
    image = prepared.images[0]
    assert image.AccessionNumber == "A" * 16
    assert image.StudyDescription == "HEAD ROUTINE"
    assert image.PatientSex == "M"
    assert len(str(image.ReferringPhysicianName)) == 64
    assert image.PatientBirthDate in (None, "")
    assert image.PatientWeight in (None, "")
    assert float(image.PatientSize) == 1.75 and len(str(image.PatientSize)) <= 16
    assert {"AccessionNumber", "StudyDescription", "PatientSex", "ReferringPhysicianName", "PatientSize"} <= (
        prepared.normalised
    )
    assert {"PatientBirthDate", "PatientWeight"} <= prepared.emptied


def test_identifying_uids_are_kept_even_when_malformed() -> None:
    header = _header(StudyInstanceUID=MALFORMED_STUDY_UID)
    prepared = prepare_sources([header], uid_root=UID_ROOT)
    assert prepared.images[0].StudyInstanceUID == MALFORMED_STUDY_UID
    assert prepared.images[0].SOPInstanceUID == header.SOPInstanceUID


def test_a_series_without_frame_of_reference_gets_one_derived_from_the_series() -> None:
    headers = without_frame_of_reference(make_case()).source_images
    first = prepare_sources(headers, uid_root=UID_ROOT)
    again = prepare_sources(headers, uid_root=UID_ROOT)
    expected = frame_of_reference_uid(UID_ROOT, str(headers[0].SeriesInstanceUID))
    assert first.frame_of_reference_derived
    assert {str(ds.FrameOfReferenceUID) for ds in first.images} == {expected}
    assert {str(ds.FrameOfReferenceUID) for ds in again.images} == {expected}
    assert expected.startswith(UID_ROOT) and is_valid_uid(expected)
    other_series = frame_of_reference_uid(UID_ROOT, "1.2.3.4")
    assert other_series != expected


def test_a_frame_of_reference_some_images_carry_is_given_to_the_others() -> None:
    case = make_case()
    headers = [ds.copy() for ds in case.source_images]
    sent = str(headers[0].FrameOfReferenceUID)
    del headers[1].FrameOfReferenceUID
    prepared = prepare_sources(headers, uid_root=UID_ROOT)
    assert not prepared.frame_of_reference_derived
    assert {str(ds.FrameOfReferenceUID) for ds in prepared.images} == {sent}


def test_a_seg_of_a_series_without_frame_of_reference_is_valid_and_positioned(tmp_path: Path) -> None:
    case = make_case()
    headers = without_frame_of_reference(case).source_images
    prepared = prepare_sources(headers, uid_root=UID_ROOT)
    segments = [SegmentSpec(n, f"ICH lesion {n}", case.uids.tracking(n)) for n in (1, 2)]
    seg = case_segmentation(case, source_images=prepared.images, segments=segments)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert_valid(path)
    back = hd.seg.segread(path)
    assert back.FrameOfReferenceUID == frame_of_reference_uid(UID_ROOT, str(headers[0].SeriesInstanceUID))
    source_positions = {tuple(round(float(v), 3) for v in ds.ImagePositionPatient) for ds in headers}
    frame_positions = {
        tuple(round(float(v), 3) for v in frame.PlanePositionSequence[0].ImagePositionPatient)
        for frame in back.PerFrameFunctionalGroupsSequence
    }
    assert frame_positions == source_positions
