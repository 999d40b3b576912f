"""Issue 6, hostile studies: how each job ends, in full, for the study cases that once hit a bug.

:mod:`tests.integration.test_hostile_input` checks every study case's state and reason
in one large run. These cases are the ones that once failed in the analysis path
(a tilted study whose key images were refused, a deflated series, absent, short or surplus
pixel data, header values that are not numbers or cannot describe a slice). Here each is sent over C-STORE to an
in-process node, completed and run by the real worker and pipeline, and the whole
outcome is checked:

* a study we can analyse gets every result object (SEG, SR, key images), with no
  warning that one is missing: an object quietly dropped is not an answer;
* a study we cannot analyse is dead after **one** attempt (the same data fails the
  same way on every attempt, so a retry only delays the answer), with a reason that
  names what is wrong, never a raw exception class.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db.models import Job, JobState, OutputObject, Study
from tests.conftest import RunningNode, start_node
from tests.support.hostile import HOSTILE_HEADERS, StudyCase, store_all, study_cases
from tests.support.node import NodeConfig, status_code
from tests.support.run_jobs import complete_and_run

# The corpus is invalid on purpose: pydicom's warnings about it are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: A raw exception leaking into a job's outcome ("AttributeError: ...", "KeyError: ...").
RAW_EXCEPTION = re.compile(r"\b[A-Z]\w*(Error|Exception)\b")


@dataclass(frozen=True)
class Expected:
    """What a case's job must end as: ``succeeded`` with every object, or ``dead`` at once with ``reason``."""

    state: JobState
    #: Substrings the job's last_error must contain (dead jobs only).
    reason: tuple[str, ...] = ()
    #: Lesions the threshold model must find (succeeded jobs only; None: not checked).
    lesions: int | None = None


EXPECTED: dict[str, Expected] = {
    # Gantry tilt: the key images' PatientOrientation comes from an oblique orientation.
    "study/gantry tilt 15 deg": Expected(JobState.SUCCEEDED, lesions=1),
    "study/gantry tilt -22 deg": Expected(JobState.SUCCEEDED),
    # Deflated Explicit VR Little Endian: accepted at ingest, so it must be decoded too.
    "study/Deflated Explicit VR Little Endian series": Expected(JobState.SUCCEEDED),
    # Pixel Data absent: pydicom says so with an AttributeError.
    "study/no slice has pixel data": Expected(JobState.DEAD, ("cannot be assembled", "has no Pixel Data")),
    "study/one slice lacks pixel data": Expected(JobState.DEAD, ("cannot be assembled", "has no Pixel Data")),
    # More Pixel Data than Rows x Columns: pydicom drops the surplus with a warning only.
    "study/header says 32x32, pixels are 64x64": Expected(
        JobState.DEAD, ("cannot be assembled", "bytes of Pixel Data", "expected for 32 x 32")),
    "study/pixel data twice Rows x Columns": Expected(
        JobState.DEAD, ("cannot be assembled", "bytes of Pixel Data", "expected for 32 x 32")),
    # Less Pixel Data than the header describes: said in the same terms, not as numpy's "cannot reshape".
    "study/pixel data half of Rows x Columns": Expected(
        JobState.DEAD, ("cannot be assembled", "1024 bytes of Pixel Data", "2048 expected for 32 x 32")),
    "study/BitsAllocated 32 on 16-bit pixels": Expected(
        JobState.DEAD, ("cannot be assembled", "2048 bytes of Pixel Data", "4096 expected for 32 x 32")),
    # Header values that are not numbers, or have the wrong count: named, not a raw exception.
    **{f"study/{label}": Expected(JobState.DEAD, (attribute,)) for label, _, attribute in HOSTILE_HEADERS},
    # ... while a series with such a header beside a good one only costs that series.
    "study/an RGB series beside the CT series": Expected(JobState.SUCCEEDED),
}
CASES = [case for case in study_cases(long_series=2) if case.name in EXPECTED]


def test_every_expected_case_is_in_the_corpus() -> None:
    assert sorted(case.name for case in CASES) == sorted(EXPECTED)


@dataclass(frozen=True)
class Outcome:
    """A job as it ended, and the kinds of the objects it recorded."""

    state: JobState
    attempts: int
    last_error: str
    warnings: str
    lesions: int | None
    kinds: list[str]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Outcome]]:
    """Send every case to one node, complete and run every job once; the outcome per study UID."""
    memory = Path("/dev/shm")
    workdir = (Path(tempfile.mkdtemp(prefix="hostile-jobs-", dir=memory)) if memory.is_dir()
               else tmp_path_factory.mktemp("hostile-jobs"))
    running, stop = start_node(NodeConfig(workdir=workdir / "node", job_max_attempts=3))
    try:
        for index, case in enumerate(CASES):
            _send(running, case, workdir / f"study{index}")
        assert complete_and_run(running) == len(CASES)
        yield _outcomes(running)
    finally:
        stop()  # type: ignore[operator]
        shutil.rmtree(workdir, ignore_errors=True)


def _send(node: RunningNode, case: StudyCase, folder: Path) -> None:
    paths = case.write_files(folder)
    statuses = [status_code(s) for s in store_all(node.port, paths)]
    assert statuses == [0] * len(paths), f"{case.name}: not every instance was accepted: {set(statuses)}"


def _outcomes(node: RunningNode) -> dict[str, Outcome]:
    with node.sessions() as session:
        jobs = session.execute(select(Study.study_instance_uid, Job).join(Job, Job.study_id == Study.id)).all()
        result = {}
        for study_uid, job in jobs:
            kinds = sorted(session.scalars(select(OutputObject.kind).where(OutputObject.job_id == job.id)))
            summary = json.loads(job.summary) if job.summary else {}
            result[study_uid] = Outcome(job.state, job.attempts, job.last_error or "", job.warnings or "",
                                        summary.get("lesions"), kinds)
        return result


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_job_ends_at_once_with_a_clear_answer(outcomes: dict[str, Outcome], case: StudyCase) -> None:
    expected = EXPECTED[case.name]
    outcome = outcomes[case.study_instance_uid]
    assert outcome.state is expected.state, f"{case.name}: {outcome}"
    assert outcome.attempts == 1, f"{case.name}: {outcome.attempts} attempts: the same data was tried again"
    if expected.state is JobState.SUCCEEDED:
        assert outcome.warnings == "", f"{case.name}: results went out incomplete: {outcome.warnings}"
        assert {"seg", "sr", "key_images"} <= set(outcome.kinds) or (
            outcome.lesions == 0 and {"sr", "key_images"} <= set(outcome.kinds)
        ), f"{case.name}: objects {outcome.kinds}"
        if expected.lesions is not None:
            assert outcome.lesions == expected.lesions, f"{case.name}: {outcome.lesions} lesion(s)"
            # a summary image and one per lesion, each from the (tilted) source slices
            assert outcome.kinds.count("key_images") == expected.lesions + 1, outcome.kinds
        return
    for part in expected.reason:
        assert part in outcome.last_error, f"{case.name}: {outcome.last_error!r} lacks {part!r}"
    assert not RAW_EXCEPTION.search(outcome.last_error), f"{case.name}: a raw exception: {outcome.last_error!r}"
