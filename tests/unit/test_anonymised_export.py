"""The anonymised-export corpus has each quirk it claims, and its pixels are the phantom's, losslessly."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless

from tests.support.anonymised_export import (
    MIXED_SYNTAXES,
    PRIVATE_CREATOR,
    ExportProfile,
    corpus,
    export_case,
    timing_case,
    transfer_syntaxes_of,
    write_export,
    write_storescu_config,
)
from tests.support.synthetic_ct import head_volume


def _small_case():  # type: ignore[no-untyped-def]
    profile = ExportProfile(missing_slice=3, transfer_syntaxes=MIXED_SYNTAXES, stray_slice=True)
    return export_case("unit-small", n_slices=8, profile=profile)


def test_the_export_has_every_header_quirk_of_issue_12(tmp_path: Path) -> None:
    case = _small_case()
    written = write_export(case, tmp_path / "export")
    for path in written.files:
        ds = dcmread(path)
        assert "FrameOfReferenceUID" not in ds and "BodyPartExamined" not in ds
        assert ds.StudyDescription == "" and ds.Manufacturer == "" and ds.SpecificCharacterSet == ""
        assert ds.SeriesDescription == "NON CON 0.625"
        assert float(ds.GantryDetectorTilt) == 8.5
        assert ds.private_block(0x0009, PRIVATE_CREATOR)[0x04].VR == "SQ"
        assert ds[0x0043, 0x1001].VR == "UN"


def test_one_slice_is_missing_and_a_stray_of_another_patient_sits_among_the_files(tmp_path: Path) -> None:
    case = _small_case()
    written = write_export(case, tmp_path / "export")
    assert len(written.main) == case.sent_slices == 7
    main = [dcmread(p, stop_before_pixels=True) for p in written.main]
    assert case.missing_sop_instance_uid not in {ds.SOPInstanceUID for ds in main}
    assert [int(ds.InstanceNumber) for ds in main] == [1, 2, 3, 5, 6, 7, 8]
    [stray_path] = written.stray
    stray = dcmread(stray_path, stop_before_pixels=True)
    assert stray.StudyInstanceUID != case.spec.study_instance_uid
    assert stray.PatientID != main[0].PatientID
    files = written.files
    assert files[0] != stray_path and files[-1] != stray_path, "the sender meets the stray slice mid-study"


def test_mixed_transfer_syntaxes_decode_to_the_phantom(tmp_path: Path) -> None:
    case = _small_case()
    written = write_export(case, tmp_path / "export")
    assert transfer_syntaxes_of(written.main) == {JPEGLosslessSV1, JPEGLSLossless, ExplicitVRLittleEndian}
    expected, _ = head_volume(case.spec)
    kept = [k for k in range(case.spec.n_slices) if k != case.profile.missing_slice]
    for k, path in zip(kept, written.main, strict=True):
        ds = dcmread(path)
        hu = ds.pixel_array.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        np.testing.assert_array_equal(hu, expected[k])


def test_uids_are_the_same_on_every_run() -> None:
    first, second = corpus(), corpus()
    assert [c.spec.study_instance_uid for c in first] == [c.spec.study_instance_uid for c in second]
    assert len({c.spec.study_instance_uid for c in first}) == len(first)
    assert timing_case().spec.n_slices == 238 and timing_case().spec.slice_thickness_mm == 0.625


def test_the_storescu_profile_proposes_one_context_per_syntax(tmp_path: Path) -> None:
    path = write_storescu_config(tmp_path / "s.cfg", "1.2.840.10008.5.1.4.1.1.2", set(MIXED_SYNTAXES))
    text = path.read_text()
    contexts = re.findall(r"^PresentationContext\d+ = 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2\\(\w+)$", text, re.MULTILINE)
    assert sorted(contexts) == ["Syntax1", "Syntax2", "Syntax3"]
    for syntax in (JPEGLosslessSV1, JPEGLSLossless, ExplicitVRLittleEndian):
        assert f"TransferSyntax1 = {syntax}" in text
