"""PixelMed's validators, next to dciodvfy, find no error in our SEG and SR.

dciodvfy checks modules and attributes; PixelMed also checks the SR content
tree against the PS3.16 templates and context groups. Every object of a
positive and a negative study goes through both.

PixelMed 20220618 (Debian 12) reports a few errors that are its own
simplifications, not faults of the objects. Each is accepted only in the exact
form and place below, with the fact that makes it a false positive checked on
the object itself; any other error fails. Warnings are likewise listed one by
one with their reason; a new warning fails too, so that it gets read.

PixelMed has no Secondary Capture IOD, so for the key images the test only
records that PixelMed cannot check them (and that dciodvfy passes them); if a
later PixelMed learns the IOD, that test fails and should become a real check.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from tests.support.interop_objects import WrittenResults, negative_case, write_results
from tests.support.outputs_fixtures import assert_valid
from tests.support.pixelmed import PixelMedResult, run_pixelmed

#: SNOMED CT "Brain": not a paired structure, so Laterality (0020,0060) is not required.
BRAIN = ("12738006", "SCT")
#: Where the study-level group sits in our SR: content item 1.9.1 (Imaging Measurements, first group).
IMAGING_MEASUREMENTS_INDEX = 8


@dataclass(frozen=True)
class Accepted:
    """A PixelMed message we accept, matched in full, and why."""

    pattern: str
    reason: str

    def matches(self, message: str) -> bool:
        return re.fullmatch(self.pattern, message) is not None


SEG_LATERALITY = Accepted(
    re.escape("Error: GeneralSeriesModule/Laterality/: : Missing conditional attribute"),
    "PixelMed requires Laterality whenever Image and Frame Laterality are absent; PS3.3 C.7.3.1 "
    "requires it only for a paired body part. Every segment's anatomic region is Brain (unpaired), "
    "and an empty or invented Laterality would break the 2C rule the other way (dciodvfy agrees).",
)
PROCEDURE_NOT_IN_CID_100 = Accepted(
    r'Error: Template 1500 MeasurementReport/\[Row 1\] CONTAINER CID 7021/\[Row 4\] CODE '
    r'\(121058,DCM,"Procedure reported"\): [\d.]+: .*: Code \(303653007,SCT,"Computed tomography of head '
    r'\(procedure\)"\) not found in context group 100',
    "TID 1500 row 4 takes BCID 100 (PixelMed's own template says 'B': baseline, other codes allowed), "
    "but PixelMed reports any code outside a context group as an error. CID 100 has no head CT code; "
    "SCT 303653007 'CT of head' says what was done.",
)
STUDY_GROUP_CHECKED_AS_TID_1411 = Accepted(
    r'Error: Template 1411 VolumetricROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)'
    r'/\[Row (5|7|10)\] (SCOORD \(111030,DCM,"Image Region"\)|IMAGE \(121191,DCM,"Referenced Segment"\)'
    r'|SCOORD3D \(121231,DCM,"Volume Surface"\)): within 1\.9\.1: .*: Missing conditional content item',
    "PixelMed picks one template for all groups of Imaging Measurements: as soon as one group references "
    "a segment it checks every group, our TID 1501 study group (1.9.1) included, as TID 1411. TID 1500 "
    "allows TID 1501 and TID 1411 groups side by side; the negative report, whose only group is the "
    "TID 1501 one, passes without these errors.",
)

SOURCE_SERIES_MEANING_CASE = Accepted(
    r'Warning: Template 1411 VolumetricROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)'
    r'/\[Row 12\] UIDREF \(121232,DCM,"Source series for segmentation"\): 1\.9\.\d+\.\d+: .*: Code '
    r'\(121232,DCM,"Source Series for Segmentation"\) has different code meaning \("Source Series for '
    r'Segmentation"\) than code meaning in template concept name \("Source series for segmentation"\)',
    "Same code (121232, DCM); only the capitalisation of the meaning differs between pydicom's code "
    "dictionary (used by highdicom) and PixelMed's copy of the template. Receivers match codes on value "
    "and scheme.",
)
GROUP_ALGORITHM_IDENTIFICATION = Accepted(
    r'Warning: 1\.9\.\d+\.\d+: .*/(TEXT \(111001,DCM,"Algorithm Name"\)|TEXT \(111003,DCM,"Algorithm Version"\)'
    r'|CODE \(111000,DCM,"Algorithm Family"\)): Content Item not in template',
    "The TID 4019 algorithm identification highdicom writes in each measurement group (algorithm_id). "
    "PixelMed's TID 1501 accepts it (no warning in the negative report); its 2022 TID 1411, also applied "
    "to the study group (see the TID 1411 error above), has no row for it.",
)
FINDING_CATEGORY = Accepted(
    r'Warning: 1\.9\.\d+\.\d+: .*/CODE \(276214006,SCT,"Finding category"\): Content Item not in template',
    "highdicom's TID 1411 'Finding category' item (Morphologically abnormal structure, as in the SEG); "
    "PixelMed's 2022 copy of TID 1411 has no such row.",
)
QUALITATIVE_EVALUATION = Accepted(
    r'Warning: 1\.9\.1\.\d+: .*/CODE \(1386000,SCT,"Intracranial hemorrhage \(disorder\)"\): '
    r"Content Item not in template",
    "The study group's Present/Absent statement: a TID 1501 qualitative evaluation as highdicom writes "
    "it (a CODE named by the finding). PixelMed's 2022 templates have no row that matches it, in TID 1501 "
    "(negative report) or TID 1411.",
)

SEG_ACCEPTED = (SEG_LATERALITY,)
SR_ACCEPTED_ERRORS = (PROCEDURE_NOT_IN_CID_100, STUDY_GROUP_CHECKED_AS_TID_1411)
SR_ACCEPTED_WARNINGS = (
    SOURCE_SERIES_MEANING_CASE,
    GROUP_ALGORITHM_IDENTIFICATION,
    FINDING_CATEGORY,
    QUALITATIVE_EVALUATION,
)


def _unexplained(messages: Sequence[str], accepted: Sequence[Accepted]) -> list[str]:
    return [m for m in messages if not any(a.matches(m) for a in accepted)]


@pytest.fixture(scope="module")
def positive(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("pixelmed-positive"))


@pytest.fixture(scope="module")
def negative(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("pixelmed-negative"), negative_case())


@pytest.fixture(scope="module")
def verdicts(positive: WrittenResults, negative: WrittenResults) -> dict[Path, PixelMedResult]:
    """Every object of both studies, validated in one JVM (PixelMed's start-up dominates)."""
    paths = [
        results_path
        for results in (positive, negative)
        for results_path in (results.seg, results.sr, *results.key_images)
    ]
    return {result.path: result for result in run_pixelmed(paths)}


@pytest.fixture(params=["positive", "negative"])
def study(request: pytest.FixtureRequest) -> WrittenResults:
    return request.getfixturevalue(str(request.param))  # type: ignore[no-any-return]


def _assert_laterality_is_not_required(seg: pydicom.Dataset) -> None:
    """The premise of :data:`SEG_LATERALITY`: no laterality anywhere, every segment on the brain."""
    assert "Laterality" not in seg and "ImageLaterality" not in seg
    for segment in seg.SegmentSequence:
        regions = {(item.CodeValue, item.CodingSchemeDesignator) for item in segment.AnatomicRegionSequence}
        assert regions == {BRAIN}, f"segment {segment.SegmentNumber} is not on the brain alone"


def _assert_first_group_is_the_study_group(sr: pydicom.Dataset) -> None:
    """The premise of :data:`STUDY_GROUP_CHECKED_AS_TID_1411`: item 1.9.1 is a TID 1501 group."""
    measurements = sr.ContentSequence[IMAGING_MEASUREMENTS_INDEX]
    assert measurements.ConceptNameCodeSequence[0].CodeValue == "126010"  # Imaging Measurements
    group = measurements.ContentSequence[0]
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert not any(item.ConceptNameCodeSequence[0].CodeValue == "121191" for item in group.ContentSequence)


def test_the_seg_has_no_error_in_either_validator(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(study.seg)
    result = verdicts[study.seg]
    assert result.iod == "Segmentation", result.text
    _assert_laterality_is_not_required(pydicom.dcmread(study.seg, stop_before_pixels=True))
    assert _unexplained(result.errors, SEG_ACCEPTED) == [], result.text
    assert list(result.warnings) == [], result.text


def test_the_sr_has_no_error_in_either_validator(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(study.sr)
    result = verdicts[study.sr]
    assert (result.iod, result.root_template) == ("Comprehensive3DSR", "TID_1500 (MeasurementReport)"), result.text
    if any(STUDY_GROUP_CHECKED_AS_TID_1411.matches(e) for e in result.errors):
        _assert_first_group_is_the_study_group(pydicom.dcmread(study.sr))
    assert _unexplained(result.errors, SR_ACCEPTED_ERRORS) == [], result.text
    assert _unexplained(result.warnings, SR_ACCEPTED_WARNINGS) == [], result.text


def test_the_negative_report_is_checked_as_tid_1501(
    negative: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    """With the study group alone, PixelMed applies TID 1501: only the procedure code remains."""
    result = verdicts[negative.sr]
    assert [a for a in SR_ACCEPTED_ERRORS if any(a.matches(e) for e in result.errors)] == [PROCEDURE_NOT_IN_CID_100]
    assert len(result.errors) == 1, result.text


def test_key_images_are_outside_pixelmeds_iods_and_pass_dciodvfy(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    for path in study.key_images:
        assert_valid(path)
        result = verdicts[path]
        assert not result.recognized and "IOD (SOP Class) unrecognized" in result.text, (
            "PixelMed now knows the Secondary Capture IOD: assert 0 errors here instead\n" + result.text
        )
