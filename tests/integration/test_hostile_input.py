"""Issue 6, hostile input: the corpus of :mod:`tests.support.hostile` against a real listener.

Ingest cases go to one in-process node, each over its own association: the exact
status, and after a refusal no file, no row and nothing in ``.incoming``; after an
acceptance exactly one file, byte for byte what was sent, inside the storage root.
Study cases go to a second node, whose studies are completed and analysed by the
real pipeline (threshold model, no destination); each job ends as its case says.
Both nodes must still answer C-ECHO at the end. Run with ``-rA`` (or ``-s``) to
see the outcome tables.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from dicom_node.config import load_settings
from dicom_node.db.models import Instance, Job, Study
from dicom_node.ingest.completion import CompletionRule
from dicom_node.models.threshold import ThresholdModel
from dicom_node.pipeline import Pipeline, model_key
from dicom_node.retry import RetryPolicy
from dicom_node.ticks import completion_tick
from dicom_node.worker import Worker
from tests.conftest import RunningNode, start_node
from tests.support.hostile import (
    ABORTED,
    STATUS_NAMES,
    IngestCase,
    StudyCase,
    duplicate_of,
    ingest_cases,
    outcome_table,
    send_raw,
    split_part10,
    store_all,
    study_cases,
)
from tests.support.node import NodeConfig, echo_ok, status_code, wait_for

# The corpus is invalid on purpose: pydicom's warnings about it are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

INGEST_CASES = ingest_cases()
STUDY_CASES = study_cases()
#: (family, expected, observed) per case, for the tables printed at the end.
INGEST_OUTCOMES: dict[str, tuple[str, str, str]] = {}
STUDY_OUTCOMES: dict[str, tuple[str, str, str]] = {}
SEND_SECONDS: dict[str, float] = {}
_UID = re.compile(r"\b\d+(\.\d+){4,}\b")
JOB_SECONDS: dict[str, float] = {}


def test_corpus_is_large_enough() -> None:
    assert len(INGEST_CASES) + len(STUDY_CASES) >= 200
    assert len({c.name for c in STUDY_CASES}) == len(STUDY_CASES)


@pytest.fixture(scope="module")
def ingest_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running, stop = start_node(NodeConfig(workdir=tmp_path_factory.mktemp("hostile") / "node"))
    try:
        yield running
    finally:
        stop()  # type: ignore[operator]


def _instance_rows(node: RunningNode, sop_instance_uid: str | None = None) -> int:
    with node.sessions() as session:
        query = select(func.count(Instance.id))
        if sop_instance_uid is not None:
            query = query.where(Instance.sop_instance_uid == sop_instance_uid)
        return int(session.scalar(query) or 0)


def _observed(status: Dataset | int | None) -> int | None:
    if isinstance(status, int):
        return status
    return status_code(status)


def _name(code: int | None) -> str:
    if code is None:
        return "no response"
    return STATUS_NAMES.get(code, f"0x{code:04X}")


@pytest.mark.parametrize("case", INGEST_CASES, ids=[c.name for c in INGEST_CASES])
def test_ingest_case(ingest_node: RunningNode, case: IngestCase, tmp_path: Path) -> None:
    if case.prelude_data is not None:
        assert status_code(send_raw(ingest_node.port, case.prelude_data, tmp_path)) == 0  # type: ignore[arg-type]
    files_before = set(ingest_node.stored_files())
    rows_before = _instance_rows(ingest_node)
    status = send_raw(ingest_node.port, case.data, tmp_path, abort_after=case.abort_after)
    observed = _observed(status)
    INGEST_OUTCOMES[case.name] = (case.family, _name(case.expected), _name(observed))
    assert observed == case.expected, f"{case.name}: expected {_name(case.expected)}, got {_name(observed)}" + (
        f" ({status.get('ErrorComment', '')})" if isinstance(status, Dataset) else ""
    )
    incoming = ingest_node.store.incoming
    # An aborted transfer's partial file goes when its association thread ends, just after the abort.
    wait_for(lambda: not any(incoming.iterdir()), 5.0, f"{case.name}: .incoming to be empty", step_s=0.02)
    new_files = set(ingest_node.stored_files()) - files_before
    if case.expected == 0x0000 and not case.stores:
        assert new_files == set(), f"{case.name}: a duplicate kept out by policy left a file: {new_files}"
        assert _instance_rows(ingest_node) == rows_before
        return
    if case.expected == 0x0000:
        [stored] = new_files
        assert stored.is_relative_to(ingest_node.store.root) and ".." not in stored.parts
        assert split_part10(stored.read_bytes())[1] == case.dataset, f"{case.name}: not stored byte for byte"
        assert _instance_rows(ingest_node, case.sop_instance_uid) == 1
        assert _instance_rows(ingest_node) == rows_before + 1
        return
    if case.comment:
        assert case.comment in str(status.ErrorComment), f"{case.name}: {status.ErrorComment!r}"  # type: ignore[union-attr]
    assert new_files == set(), f"{case.name}: a refused instance left a file: {new_files}"
    assert _instance_rows(ingest_node) == rows_before, f"{case.name}: a refused instance left a row"
    assert _instance_rows(ingest_node, case.sop_instance_uid) == 0


def test_ingest_node_survives_and_prints_its_table(ingest_node: RunningNode) -> None:
    """The process still answers after the whole corpus, and no transfer left a file in ``.incoming``.

    Received data sets are spooled into the storage's ``.incoming``; pynetdicom removes a spool
    file only after the C-STORE handler ran, so the node removes those of aborted transfers
    itself when their association ends (``PromptDIMSE.discard_spools``).
    """
    assert echo_ok(ingest_node.port, calling_ae="TESTSCU")
    print(f"\ningest corpus: {len(INGEST_OUTCOMES)} of {len(INGEST_CASES)} cases run")
    print(outcome_table(INGEST_OUTCOMES.values()))
    aborted = sum(1 for c in INGEST_CASES if c.expected == ABORTED)
    incoming = ingest_node.store.incoming
    wait_for(lambda: not any(incoming.iterdir()), 5.0, f".incoming to be empty after {aborted} aborted transfers")


def test_overwrite_of_an_instance_filed_elsewhere_leaves_one_file(tmp_path: Path) -> None:
    running, stop = start_node(NodeConfig(workdir=tmp_path / "overwrite", duplicate_policy="overwrite"))
    try:
        first = duplicate_of("overwrite elsewhere")
        second = duplicate_of("overwrite elsewhere", other_study=True, other_series=True)
        assert status_code(send_raw(running.port, first, tmp_path)) == 0  # type: ignore[arg-type]
        assert status_code(send_raw(running.port, second, tmp_path)) == 0  # type: ignore[arg-type]
        assert _instance_rows(running) == 1
        [stored] = running.stored_files()
        assert split_part10(stored.read_bytes())[1] == split_part10(second)[1]
    finally:
        stop()  # type: ignore[operator]


# --------------------------------------------------------------------------- studies


@pytest.fixture(scope="module")
def study_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningNode, dict[str, tuple[str, str]]]]:
    """Send every study case, complete them all at once, run every job; (state, last_error) per study UID.

    These cases are about analysis, not durability: the node works in memory (``/dev/shm``)
    where there is one, so that 2000 instances do not cost 2000 x 3 fsyncs of a slow disk.
    """
    memory = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="hostile-studies-", dir=memory)) if memory.is_dir() else tmp_path_factory.mktemp("hostile-studies")
    config = NodeConfig(workdir=workdir / "node")
    running, stop = start_node(config)
    try:
        for index, case in enumerate(STUDY_CASES):
            paths = case.write_files(workdir / f"study{index}")
            started = time.perf_counter()
            statuses = [status_code(s) for s in store_all(running.port, paths)]
            SEND_SECONDS[case.name] = time.perf_counter() - started
            assert statuses == [0] * len(paths), f"{case.name}: not every instance was accepted: {set(statuses)}"
        settings = load_settings(config.write())
        model = ThresholdModel()
        completed = completion_tick(
            running.sessions, CompletionRule(quiet_period=timedelta(0), max_open=timedelta(hours=1)),
            model_key=model_key(model), max_attempts=settings.jobs.retry.max_attempts,
        )
        assert len(completed) == len(STUDY_CASES)
        worker = Worker(
            sessions=running.sessions,
            run_job=Pipeline(settings, running.sessions, running.store, model).run,
            destinations={},
            lease=timedelta(minutes=10),
            heartbeat_every=timedelta(seconds=30),
            policy=RetryPolicy.from_settings(settings.jobs.retry),
        )
        worker.run_available()
        with running.sessions() as session:
            rows = session.execute(
                # a skipped job's reason stands where a dead job's error does
                select(Study.study_instance_uid, Job.state, func.coalesce(Job.reason, Job.last_error), Job.started_at,
                       Job.finished_at)
                .join(Job, Job.study_id == Study.id)
            ).all()
        for uid, _, _, started_at, finished_at in rows:
            if started_at and finished_at:
                JOB_SECONDS[uid] = (finished_at - started_at).total_seconds()
        yield running, {uid: (str(state), error or "") for uid, state, error, _, _ in rows}
    finally:
        stop()  # type: ignore[operator]
        if workdir.is_relative_to(memory):
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("case", STUDY_CASES, ids=[c.name for c in STUDY_CASES])
def test_study_case(study_results: tuple[RunningNode, dict[str, tuple[str, str]]], case: StudyCase) -> None:
    _, jobs = study_results
    state, error = jobs[case.study_instance_uid]
    expected = case.expected_job + (f" ({case.reason})" if case.reason else "")
    observed = f"{state}: {_UID.sub('<uid>', error)[:90]}" if error else state
    STUDY_OUTCOMES[case.name] = (case.family, expected, observed)
    assert state == case.expected_job, f"{case.name}: job {state}: {error}"
    assert case.reason in error, f"{case.name}: {error!r} lacks {case.reason!r}"


def test_study_node_survives_and_prints_its_table(study_results: tuple[RunningNode, dict[str, tuple[str, str]]]) -> None:
    running, _ = study_results
    assert echo_ok(running.port, calling_ae="TESTSCU")
    print(f"\nstudy corpus: {len(STUDY_OUTCOMES)} of {len(STUDY_CASES)} cases run")
    print(outcome_table(STUDY_OUTCOMES.values()))
    for case in STUDY_CASES:
        if case.name in STUDY_OUTCOMES:
            seconds = f"send {SEND_SECONDS.get(case.name, 0):5.1f} s, job {JOB_SECONDS.get(case.study_instance_uid, 0):4.1f} s"
            print(f"  {case.name[6:]:<56} {seconds}")
