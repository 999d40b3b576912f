"""PixelMed's validators, next to dciodvfy, find no error in our SEG and SR.

dciodvfy checks modules and attributes; PixelMed also checks the SR content
tree against the PS3.16 templates and context groups. Every object of a
positive and a negative study goes through both: SEG and SR, positive and
negative, get 0 errors, asserted plainly.

History worth keeping: until issue 14 the positive SR had a TID 1501
study-level group beside the TID 1411 lesion groups in Imaging Measurements,
and PixelMed (which checks every group of that container as TID 1411 once one
references a segment) gave it 3 errors. The study call is now in TID 1500
"Qualitative Evaluations" (because OHIF needs a shape in every measurement
group) and each lesion has a TID 1410 outline group before its TID 1411 group;
PixelMed gives that report no error.

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
SR_ACCEPTED_WARNINGS = (
    SOURCE_SERIES_MEANING_CASE,
    GROUP_ALGORITHM_IDENTIFICATION,
    FINDING_CATEGORY,
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


@pytest.fixture(scope="module")
def verdicts(positive: WrittenResults, negative: WrittenResults) -> dict[Path, PixelMedResult]:
    """Every object of both studies, in one JVM (PixelMed's start-up dominates)."""
    paths = [
        results_path
        for results in (positive, negative)
        for results_path in (results.seg, results.sr, *results.key_images)
    ]
    return {result.path: result for result in run_pixelmed(paths)}


@pytest.fixture(params=["positive", "negative"])
def study(request: pytest.FixtureRequest) -> WrittenResults:
    return request.getfixturevalue(str(request.param))  # type: ignore[no-any-return]


def _assert_a_measurement_report(result: PixelMedResult) -> None:
    assert (result.iod, result.root_template) == ("Comprehensive3DSR", "TID_1500 (MeasurementReport)"), result.text


def _assert_no_error(result: PixelMedResult) -> None:
    """A TID 1500 report with 0 errors, and only the warnings listed above."""
    _assert_a_measurement_report(result)
    assert result.errors == (), f"{result.path.name}\n{result.text}"
    assert _unexplained(result.warnings, SR_ACCEPTED_WARNINGS) == [], f"{result.path.name}\n{result.text}"


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
    _assert_no_error(verdicts[negative.sr])


def test_the_positive_sr_with_outline_and_segment_groups_has_no_error_in_either_validator(
    positive: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(positive.sr)
    groups = _imaging_measurements(pydicom.dcmread(positive.sr)).ContentSequence
    n = len(positive.case.lesions)
    assert [_template_of(group) for group in groups] == ["1410"] * n + ["1411"] * n
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
