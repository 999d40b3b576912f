"""A job that runs while the listener receives another study pauses until reception ends.

Real reception: DCMTK's storescu sends to the in-process listener while the job runs in
this test's thread, with a pacer as the worker builds it from ``[jobs] pause_for_reception_s``.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.db.models import Job, JobState
from dicom_node.jobs.pacing import IngestActivity, Pacer
from dicom_node.models.threshold import ThresholdModel
from tests.conftest import RunningNode
from tests.support.node import status_code, store_files, storescu_responses
from tests.support.run_jobs import complete_studies, threshold_worker
from tests.support.synthetic_ct import SeriesSpec, write_series

#: Long enough that the pause ends with reception, not with its bound.
MAX_PAUSE_S = 60.0


def _stored_of(node: RunningNode, study_uid: str) -> int:
    folder = node.store.root / study_uid
    return sum(1 for _ in folder.rglob("*.dcm")) if folder.exists() else 0


def test_a_job_waits_for_reception_to_end(node: RunningNode, tmp_path: Path) -> None:
    analysed = write_series(SeriesSpec(n_slices=60, rows=64, columns=64, seed=3), tmp_path / "analysed")
    assert [status_code(s) for s in store_files(node.port, analysed)] == [0] * len(analysed)
    model = ThresholdModel()
    complete_studies(node, model)  # its job is queued; nothing has run it yet
    pushed_spec = SeriesSpec(n_slices=120, rows=128, columns=128, seed=4)
    pushed = write_series(pushed_spec, tmp_path / "pushed")
    answers: dict[Path, str] = {}
    push_ended = threading.Event()

    def push() -> None:
        answers.update(storescu_responses(node.port, pushed))
        push_ended.set()

    pusher = threading.Thread(target=push, daemon=True)
    pusher.start()
    deadline = time.monotonic() + 60
    while _stored_of(node, pushed_spec.study_instance_uid) < 5:  # reception is going on
        assert time.monotonic() < deadline and not push_ended.is_set(), answers
        time.sleep(0.005)

    pacer = Pacer(IngestActivity(node.store.incoming), max_pause_s=MAX_PAUSE_S)
    ran = threshold_worker(node, model, pacer).run_available()
    finished_after_push = push_ended.is_set()
    pusher.join(timeout=120)

    assert list(answers.values()) == ["Success"] * len(pushed)
    assert ran == 1
    assert finished_after_push, "the job ran to its end while the study was still being received"
    with node.sessions() as session:
        job = session.scalars(select(Job)).one()
    assert job.state == JobState.SUCCEEDED
    summary = json.loads(job.summary)
    assert 0 < summary["paused_for_reception_s"] < MAX_PAUSE_S
    assert pacer.paused_s == pytest.approx(summary["paused_for_reception_s"], abs=1e-3)


def test_a_job_on_a_quiet_node_never_pauses(node: RunningNode, tmp_path: Path) -> None:
    analysed = write_series(SeriesSpec(n_slices=30, rows=64, columns=64, seed=3), tmp_path / "analysed")
    assert [status_code(s) for s in store_files(node.port, analysed)] == [0] * len(analysed)
    model = ThresholdModel()
    complete_studies(node, model)  # reception ended just before: only what comes after the job's start counts
    pacer = Pacer(IngestActivity(node.store.incoming), max_pause_s=MAX_PAUSE_S)

    assert threshold_worker(node, model, pacer).run_available() == 1

    with node.sessions() as session:
        job = session.scalars(select(Job)).one()
    assert job.state == JobState.SUCCEEDED
    assert "paused_for_reception_s" not in json.loads(job.summary)
    assert pacer.paused_s == 0.0
