"""Group commit: batches across threads, results go back to the right caller."""

from __future__ import annotations

import threading

import pytest

from dicom_node.errors import DatabaseUnavailableError
from dicom_node.ingest.committer import GroupCommitter


def test_results_reach_their_own_callers_and_batches_form() -> None:
    batches: list[list[int]] = []
    gate = threading.Event()

    def write(items: list[int]) -> list[int | Exception]:
        gate.wait(5)  # hold the first batch so the others queue up behind it
        batches.append(items)
        return [i * 10 if i % 7 else ValueError(f"bad {i}") for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    committer.start()
    results: dict[int, object] = {}

    def submit(i: int) -> None:
        try:
            results[i] = committer.submit(i, timeout_s=10)
        except ValueError as exc:
            results[i] = str(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(1, 21)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(10)
    committer.stop()
    assert results == {i: (i * 10 if i % 7 else f"bad {i}") for i in range(1, 21)}
    assert sorted(i for batch in batches for i in batch) == list(range(1, 21))
    assert len(batches) < 20, "items submitted together should share a commit"


def test_a_crashing_writer_fails_the_batch_but_keeps_running() -> None:
    calls = {"n": 0}

    def write(items: list[int]) -> list[int | Exception]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("disk I/O error")
        return list(items)

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    committer.start()
    with pytest.raises(RuntimeError):
        committer.submit(1, timeout_s=5)
    assert committer.submit(2, timeout_s=5) == 2
    committer.stop()


def test_submit_before_start_is_refused() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(lambda items: list(items))
    with pytest.raises(DatabaseUnavailableError):
        committer.submit(1, timeout_s=1)


def test_submit_after_stop_says_the_node_is_shutting_down() -> None:
    """A C-STORE that arrives while the node stops is refused (0xA700) with a comment the
    sender's operator understands, within the 64 characters of an Error Comment (LO)."""
    committer: GroupCommitter[int, int] = GroupCommitter(lambda items: list(items))
    committer.start()
    committer.stop()
    with pytest.raises(DatabaseUnavailableError) as info:
        committer.submit(1, timeout_s=1)
    assert str(info.value) == "the node is shutting down: instance not stored, send it again"
    assert len(str(info.value)) <= 64


def test_a_lone_caller_writes_on_its_own_thread() -> None:
    """One association: no hand-off to another thread for every instance."""
    writers: list[str] = []

    def write(items: list[int]) -> list[int | Exception]:
        writers.append(threading.current_thread().name)
        return list(items)

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    committer.start()
    assert [committer.submit(i, timeout_s=5) for i in range(3)] == [0, 1, 2]
    assert writers == [threading.current_thread().name] * 3


def test_a_caller_that_gives_up_before_its_batch_is_never_written() -> None:
    """Its sender is told the instance failed: the row must not appear later anyway."""
    gate, entered = threading.Event(), threading.Event()
    written: list[int] = []

    def write(items: list[int]) -> list[int | Exception]:
        entered.set()
        gate.wait(5)
        written.extend(items)
        return list(items)

    committer: GroupCommitter[int, int] = GroupCommitter(write)
    committer.start()
    leader = threading.Thread(target=committer.submit, args=(1, 10))
    leader.start()
    assert entered.wait(5)  # the leader is inside write(), holding the lead
    with pytest.raises(TimeoutError):
        committer.submit(2, timeout_s=0.2)
    gate.set()
    leader.join(5)
    assert committer.submit(3, timeout_s=5) == 3
    assert written == [1, 3]
