"""Analysis pauses while instances arrive: how reception is seen, and how long a job may pause."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from dicom_node.jobs.pacing import IngestActivity, Pacer


@dataclass
class FakeClock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def receive_one(folder: Path, name: str = "spool.dcm") -> None:
    """What a listener does to ``.incoming`` for each instance: a name appears, then leaves."""
    path = folder / name
    path.write_bytes(b"x")
    path.unlink()
    # ext4 stamps times with a coarse clock: make sure the folder's time moves for the test
    stat = os.stat(folder)
    os.utime(folder, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_a_quiet_folder_is_no_reception(tmp_path):
    activity = IngestActivity(tmp_path, recent_s=0.5, clock=FakeClock())
    assert not activity.active()
    assert not activity.active()


def test_a_change_counts_as_reception_for_a_moment(tmp_path):
    clock = FakeClock()
    activity = IngestActivity(tmp_path, recent_s=0.5, clock=clock)
    activity.watch()
    receive_one(tmp_path)
    assert activity.active()
    clock.now += 0.4
    assert activity.active()  # a PACS's gap between two instances
    clock.now += 0.2
    assert not activity.active()


def test_changes_before_the_job_started_are_not_reception(tmp_path):
    """The worker writes its own results through ``.incoming``: the next job must not pause for them."""
    clock = FakeClock()
    activity = IngestActivity(tmp_path, recent_s=0.5, clock=clock)
    activity.watch()
    receive_one(tmp_path)
    assert activity.active()
    receive_one(tmp_path, "result.part")
    activity.watch()
    assert not activity.active()


def test_a_missing_folder_is_no_reception(tmp_path):
    activity = IngestActivity(tmp_path / "not-there", clock=FakeClock())
    activity.watch()
    assert not activity.active()


def paced(activity: IngestActivity, clock: FakeClock, *, max_pause_s: float, during=None) -> tuple[Pacer, list[float]]:
    """A pacer on a fake clock; ``during(now)`` runs at each of its sleeps (reception going on)."""
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        assert seconds > 0
        clock.now += seconds
        if during is not None:
            during(clock.now)

    return Pacer(activity, max_pause_s=max_pause_s, clock=clock, sleep=sleep, on_pause=pauses.append), pauses


def test_a_quiet_node_never_pauses(tmp_path):
    clock = FakeClock()
    pacer, pauses = paced(IngestActivity(tmp_path, clock=clock), clock, max_pause_s=2.0)
    pacer.start_job()
    pacer()
    assert clock.now == 100.0
    assert pauses == [] and pacer.paused_s == 0.0


def test_a_job_pauses_until_reception_ends(tmp_path):
    clock = FakeClock()
    ends_at = 100.7  # the push ends 0.7 s after the job's step
    pacer, pauses = paced(
        IngestActivity(tmp_path, recent_s=0.5, clock=clock), clock, max_pause_s=5.0,
        during=lambda now: receive_one(tmp_path) if now < ends_at else None,
    )  # fmt: skip
    pacer.start_job()
    receive_one(tmp_path)
    pacer()
    # still paused 0.5 s after the last instance, then it goes on
    assert ends_at + 0.5 <= clock.now <= ends_at + 0.5 + 0.05 + 1e-9
    assert pauses == [pytest.approx(clock.now - 100.0)]
    assert pacer.paused_s == pytest.approx(clock.now - 100.0)


def test_a_pause_is_bounded_under_endless_reception(tmp_path):
    """Reception that never stops still leaves the job half of its time, however small its steps."""
    clock = FakeClock()
    pacer, pauses = paced(
        IngestActivity(tmp_path, clock=clock), clock, max_pause_s=2.0, during=lambda now: receive_one(tmp_path)
    )
    pacer.start_job()
    receive_one(tmp_path)
    pacer()
    assert clock.now == pytest.approx(102.0)
    for _ in range(10):  # steps of 0.15 s each (file reads, batches): 2 s of work without a pause
        receive_one(tmp_path)
        pacer()
        clock.now += 0.15
    assert clock.now == pytest.approx(103.5)
    assert pauses == [pytest.approx(2.0)]
    clock.now = 104.0
    receive_one(tmp_path)
    pacer()  # the free time is over and reception goes on: the next pause
    assert clock.now == pytest.approx(106.0)
    assert pauses == [pytest.approx(2.0), pytest.approx(2.0)]
    assert pacer.paused_s == pytest.approx(4.0)


def test_a_new_job_may_pause_at_once(tmp_path):
    """The free time after a cut-short pause belongs to the job that waited, not to the next one."""
    clock = FakeClock()
    pacer, pauses = paced(
        IngestActivity(tmp_path, clock=clock), clock, max_pause_s=1.0, during=lambda now: receive_one(tmp_path)
    )
    pacer.start_job()
    receive_one(tmp_path)
    pacer()
    pacer.start_job()
    receive_one(tmp_path)
    pacer()
    assert pauses == [pytest.approx(1.0), pytest.approx(1.0)]
