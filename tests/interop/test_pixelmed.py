"""PixelMed's validators, next to dciodvfy, find no error in our SEG and SR.

dciodvfy checks modules and attributes; PixelMed also checks the SR content
tree against the PS3.16 templates and context groups. Every object of a
positive and a negative study goes through both.

SEG and negative SR: 0 errors, asserted plainly. The positive SR gets one kind
of error, PixelMed's own: it picks one template for *all* measurement groups of
the Imaging Measurements container (TID 1411 as soon as one group references a
segment), so our study-level TID 1501 group is checked against TID 1411. TID
1500 lists both (rows 8 and 9, each 1-n) in that container. The test accepts
that error only at the study group, and proves the point on two copies of the
positive report, which PixelMed passes with 0 errors: one with the lesion
groups alone (checked as TID 1411), one with the study group alone (checked as
TID 1501). The same selection is in PixelMed's 20251203 release (Debian sid).

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


def study_group_checked_as_tid_1411(position: int) -> Accepted:
    """PixelMed's TID 1411 rows demanded of the TID 1501 group at ``1.<im>.<position>``."""
    return Accepted(
        r'Error: Template 1411 VolumetricROIMeasurements/\[Row 1\] CONTAINER \(125007,DCM,"Measurement Group"\)'
        r'/\[Row (5|7|10)\] (SCOORD \(111030,DCM,"Image Region"\)|IMAGE \(121191,DCM,"Referenced Segment"\)'
        rf'|SCOORD3D \(121231,DCM,"Volume Surface"\)): within 1\.\d+\.{position}: .*: Missing conditional content item',
        "PixelMed checks every group of Imaging Measurements as TID 1411 once one group references a "
        "segment; TID 1500 allows TID 1501 groups beside TID 1411 ones (rows 8 and 9).",
    )


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
    "PixelMed's TID 1501 accepts it (no warning in the negative report); its 2022 TID 1411, also applied "
    "to the study group in a positive report, has no row for it.",
)
FINDING_CATEGORY = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+: .*/CODE \(276214006,SCT,"Finding category"\): Content Item not in template',
    "highdicom's TID 1411 'Finding category' item (Morphologically abnormal structure, as in the SEG); "
    "PixelMed's 2022 copy of TID 1411 has no such row.",
)
QUALITATIVE_EVALUATION = Accepted(
    r'Warning: 1\.\d+\.\d+\.\d+: .*/CODE \(1386000,SCT,"Intracranial hemorrhage \(disorder\)"\): '
    r"Content Item not in template",
    "The study group's Present/Absent statement: a TID 1501 qualitative evaluation as highdicom writes "
    "it (a CODE named by the finding). PixelMed's 2022 templates have no row that matches it, in TID 1501 "
    "or TID 1411.",
)

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


@dataclass(frozen=True)
class SplitReport:
    """Two copies of the positive SR: its TID 1411 (lesion) groups alone, its TID 1501 group alone."""

    lesion_groups: Path
    study_group: Path


def _imaging_measurements(sr: pydicom.Dataset) -> pydicom.Dataset:
    return next(
        item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == IMAGING_MEASUREMENTS
    )


def _template_of(group: pydicom.Dataset) -> str:
    return str(group.ContentTemplateSequence[0].TemplateIdentifier)


def _keep_groups(sr_path: Path, template: str, destination: Path) -> Path:
    """A copy of the SR whose Imaging Measurements keeps only the groups of ``template``."""
    sr = pydicom.dcmread(sr_path)
    container = _imaging_measurements(sr)
    container.ContentSequence = [group for group in container.ContentSequence if _template_of(group) == template]
    assert len(container.ContentSequence) > 0
    sr.save_as(destination, enforce_file_format=True)
    return destination


@pytest.fixture(scope="module")
def split(positive: WrittenResults, tmp_path_factory: pytest.TempPathFactory) -> SplitReport:
    directory = tmp_path_factory.mktemp("pixelmed-split")
    return SplitReport(
        lesion_groups=_keep_groups(positive.sr, "1411", directory / "lesion-groups.dcm"),
        study_group=_keep_groups(positive.sr, "1501", directory / "study-group.dcm"),
    )


@pytest.fixture(scope="module")
def verdicts(positive: WrittenResults, negative: WrittenResults, split: SplitReport) -> dict[Path, PixelMedResult]:
    """Every object of both studies and the split copies, in one JVM (PixelMed's start-up dominates)."""
    paths = [
        results_path
        for results in (positive, negative)
        for results_path in (results.seg, results.sr, *results.key_images)
    ]
    paths += [split.lesion_groups, split.study_group]
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


def test_each_kind_of_group_of_the_positive_sr_passes_under_its_template(
    split: SplitReport, verdicts: dict[Path, PixelMedResult]
) -> None:
    """The lesion groups alone (TID 1411) and the study group alone (TID 1501): 0 errors each."""
    for path in (split.lesion_groups, split.study_group):
        _assert_no_error(verdicts[path])


def test_the_positive_sr_errs_only_where_pixelmed_checks_the_study_group_as_tid_1411(
    positive: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    assert_valid(positive.sr)
    result = verdicts[positive.sr]
    _assert_a_measurement_report(result)
    groups = _imaging_measurements(pydicom.dcmread(positive.sr)).ContentSequence
    templates = [_template_of(group) for group in groups]
    assert templates == ["1411"] * len(positive.case.lesions) + ["1501"]
    accepted = study_group_checked_as_tid_1411(position=len(templates))
    assert _unexplained(result.errors, [accepted]) == [], result.text
    assert _unexplained(result.warnings, SR_ACCEPTED_WARNINGS) == [], result.text


def test_key_images_are_outside_pixelmeds_iods_and_pass_dciodvfy(
    study: WrittenResults, verdicts: dict[Path, PixelMedResult]
) -> None:
    for path in study.key_images:
        assert_valid(path)
        result = verdicts[path]
        assert not result.recognized and "IOD (SOP Class) unrecognized" in result.text, (
            "PixelMed now knows the Secondary Capture IOD: assert 0 errors here instead\n" + result.text
        )
