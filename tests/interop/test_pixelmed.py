"""PixelMed's validators, next to dciodvfy, find no error in our SEG and SR.

dciodvfy checks modules and attributes; PixelMed also checks the SR content
tree against the PS3.16 templates and context groups. Every object of a
positive and a negative study goes through both: SEG and SR, positive and
negative, get 0 errors, asserted plainly.

History worth keeping: until issue 14 the positive SR had a TID 1501
study-level group beside the TID 1411 lesion groups in Imaging Measurements,
and PixelMed (which checks every group of that container against TID 1411
once one references a segment) gave it 3 errors. The study call is now in
TID 1500 "Qualitative Evaluations". Each lesion's outline group is TID 1501
(OHIF rebuilds its own tools only from that shape); it also carries the
outline as a group-level "Image Region" SCOORD (TID 1501 row 10c), which
is what PixelMed's TID 1411 check looks for: without it, 6 errors.
The negative report's title is outside PixelMed's copy of CID 7021, so a
copy under the usual title is checked too.

Warnings are listed one by one with their reason; a new warning fails, so that
it gets read.

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

#: Concept code of TID 1500's Imaging Measurements container (row 6).
IMAGING_MEASUREMENTS = "126010"


@dataclass(frozen=True)
class Accepted:
    """A PixelMed message we accept, matched in full, and why."""

    pattern: str
    reason: str

    def matches(self, message: str) -> bool:
        return re.fullmatch(self.pattern, message) is not None


SOURCE_SERIES_MEANING_CASE = Accepted(
    r'Warning: Template 1411 VolumetricROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)'
    r'/\[Row 12\] UIDREF \(121232,DCM,"Source series for segmentation"\): 1\.\d+\.\d+\.\d+: .*: Code '
    r'\(121232,DCM,"Source Series for Segmentation"\) has different code meaning \("Source Series for '
    r'Segmentation"\) than code meaning in template concept name \("Source series for segmentation"\)',
    "Same code (121232, DCM); only the capitalisation of the meaning differs between pydicom's code "
    "dictionary (used by highdicom) and PixelMed's copy of the template. Receivers match codes on value "
    "and scheme.",
)
GROUP_ALGORITHM_IDENTIFICATION = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+: .*/(TEXT \(111001,DCM,"Algorithm Name"\)|TEXT \(111003,DCM,"Algorithm Version"\)'
    r'|CODE \(111000,DCM,"Algorithm Family"\)): Content Item not in template',
    "The TID 4019 algorithm identification highdicom writes in each measurement group (algorithm_id). "
    "PixelMed's 2022 copies of TID 1410 and TID 1411 have no row for it at group level (it is also under "
    "each measurement, where they accept it).",
)
FINDING_CATEGORY = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+: .*/CODE \(276214006,SCT,"Finding category"\): Content Item not in template',
    "highdicom's TID 1410/1411 'Finding category' item (Morphologically abnormal structure, as in the "
    "SEG); PixelMed's 2022 copies of these templates have no such row.",
)
AREA_INFERRED_FROM_OUTLINE = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+\.\d+(\.1)?: .*/NUM \(42798000,SCT,"Area"\)/SCOORD \(260753009,SCT,"Source"\)'
    r'(/IMAGE \(260753009,SCT,"Source"\))?: Content Item not in template',
    "TID 300 row 8 (INFERRED FROM, TID 320 Image or Spatial Coordinates, purpose 'Source') under the "
    "lesion's area in its TID 1501 group: the outline the area was measured in, and the form OHIF rebuilds "
    "its own outline from. PixelMed's 2022 copy of TID 300 does not expand that INCLUDE.",
)
LESION_CAPTION = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+: .*/CONTAINER \(125007,DCM,"Measurement Group"\)/TEXT \(121106,DCM,"Comment"\): '
    r"Content Item not in template",
    "The Comment naming each lesion with its volume in its TID 1501 group ('ICH lesion 1: 3.05 mL'): OHIF "
    "takes the name of a measurement in its panel from this item only. TID 1501 is extensible; PixelMed "
    "warns on any item its copy of the template has no row for.",
)
SR_ACCEPTED_WARNINGS = (
    SOURCE_SERIES_MEANING_CASE,
    GROUP_ALGORITHM_IDENTIFICATION,
    FINDING_CATEGORY,
    AREA_INFERRED_FROM_OUTLINE,
    LESION_CAPTION,
)
#: The negative report's title, outside PixelMed's CID 7021 (which is extensible).
TITLE_OUTSIDE_CID_7021 = Accepted(
    r'Warning: 1(\.\d+)*: /CONTAINER \(24725-4,LN,"CT Head Report"\)(/.*)?: Content Item not in template',
    "A report without measurements is titled 'CT Head Report' (LOINC, CID 7000) rather than 'Imaging "
    "Measurement Report' (OHIF fails on a report so titled that has no measurement). CID 7021 is "
    "extensible, but PixelMed picks TID 1500's rows by the title, so it checks no item of this report "
    "against the template; test_the_negative_sr_body_has_no_error_under_the_usual_title checks the body.",
)


def _unexplained(messages: Sequence[str], accepted: Sequence[Accepted]) -> list[str]:
    return [m for m in messages if not any(a.matches(m) for a in accepted)]


@pytest.fixture(scope="module")
def positive(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("pixelmed-positive"))


@pytest.fixture(scope="module")
def negative(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("pixelmed-negative"), negative_case())


def _imaging_measurements(sr: pydicom.Dataset) -> pydicom.Dataset:
    return next(
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS
    )


def _template_of(group: pydicom.Dataset) -> str:
    return str(group.ContentTemplateSequence[0].TemplateIdentifier)


def _retitled(negative: WrittenResults) -> Path:
    """A copy of the negative SR under TID 1500's usual title, for PixelMed to check its body."""
    sr = pydicom.dcmread(negative.sr)
    title = sr.ConceptNameCodeSequence[0]
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "126000", "DCM", "Imaging Measurement Report"
    path = negative.sr.with_name("sr-retitled.dcm")
    sr.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="module")
def verdicts(positive: WrittenResults, negative: WrittenResults) -> dict[Path, PixelMedResult]:
    """Every object of both studies, in one JVM (PixelMed's start-up dominates)."""
    paths = [
        results_path
        for results in (positive, negative)
        for results_path in (results.seg, results.sr, *results.key_images)
    ]
    return {result.path: result for result in run_pixelmed([*paths, _retitled(negative)])}


@pytest.fixture(params=["positive", "negative"])
def study(request: pytest.FixtureRequest) -> WrittenResults:
    return request.getfixturevalue(str(request.param))  # type: ignore[no-any-return]


def _assert_a_measurement_report(result: PixelMedResult) -> None:
    assert (result.iod, result.root_template) == ("Comprehensive3DSR", "TID_1500 (MeasurementReport)"), result.text


def _assert_no_error(result: PixelMedResult, accepted: Sequence[Accepted] = SR_ACCEPTED_WARNINGS) -> None:
    """A TID 1500 report with 0 errors, and only the warnings listed above."""
    _assert_a_measurement_report(result)
    assert result.errors == (), f"{result.path.name}\n{result.text}"
    assert _unexplained(result.warnings, accepted) == [], f"{result.path.name}\n{result.text}"


def test_the_seg_has_no_error_or_warning_in_either_validator(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(study.seg)
    result = verdicts[study.seg]
    assert result.iod == "Segmentation", result.text
    assert (result.errors, result.warnings) == ((), ()), result.text


def test_the_negative_sr_has_no_error_in_either_validator(
    negative: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(negative.sr)
    _assert_no_error(verdicts[negative.sr], (TITLE_OUTSIDE_CID_7021,))


def test_the_negative_sr_body_has_no_error_under_the_usual_title(
    negative: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    """The same report titled "Imaging Measurement Report": PixelMed then checks every item."""
    result = verdicts[negative.sr.with_name("sr-retitled.dcm")]
    _assert_no_error(result)
    assert not any(TITLE_OUTSIDE_CID_7021.matches(w) for w in result.warnings)


def test_the_positive_sr_with_segment_and_outline_groups_has_no_error_in_either_validator(
    positive: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(positive.sr)
    groups = _imaging_measurements(pydicom.dcmread(positive.sr)).ContentSequence
    n = len(positive.case.lesions)
    assert [_template_of(group) for group in groups] == ["1411"] * n + ["1501"] * n
    _assert_no_error(verdicts[positive.sr])


def test_key_images_are_outside_pixelmeds_iods_and_pass_dciodvfy(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    for path in study.key_images:
        assert_valid(path)
        result = verdicts[path]
        assert not result.recognized and "IOD (SOP Class) unrecognized" in result.text, (
            "PixelMed now knows the Secondary Capture IOD: assert 0 errors here instead\n" + result.text
        )
