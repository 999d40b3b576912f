"""The SQLite writer lock lets listener processes take turns (see dicom_node.db.writer_lock):
one holder at a time, the next soon after it is free, never an endless wait, and every
failure of the lock itself falls back to SQLite's own locking."""

from __future__ import annotations

import errno
import fcntl
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from dicom_node.db.writer_lock import WriterLock


def _hold_for(path: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    lock = WriterLock(Path(path), timeout_s=5.0)
    with lock.held():
        ready.set()
        time.sleep(seconds)


def _holder(path: Path, seconds: float) -> multiprocessing.Process:
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_for, args=(str(path), seconds, ready))
    holder.start()
    assert ready.wait(10)
    return holder


def test_a_second_process_waits_for_the_holder_and_gets_the_lock_soon_after_its_release(tmp_path: Path) -> None:
    path = tmp_path / "node.db.writer-lock"
    holder = _holder(path, 0.5)
    try:
        start = time.monotonic()
        lock = WriterLock(path, timeout_s=10.0)
        with lock.held():
            waited = time.monotonic() - start
            with pytest.raises(BlockingIOError):  # held for real: a third process could not take it
                fd = os.open(path, os.O_RDONLY)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                finally:
                    os.close(fd)
        lock.close()
    finally:
        holder.join(10)
    assert 0.3 < waited < 5.0, f"waited {waited:.2f} s for a lock held 0.5 s"


def test_a_holder_that_never_lets_go_costs_the_timeout_then_the_write_goes_ahead(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "node.db.writer-lock"
    holder = _holder(path, 3.0)
    try:
        start = time.monotonic()
        ran = False
        with WriterLock(path, timeout_s=0.3).held():
            ran = True
        waited = time.monotonic() - start
    finally:
        holder.join(10)
    assert ran and 0.3 <= waited < 2.0, waited
    assert "still taken" in caplog.text


def test_only_a_sqlite_file_database_gets_one(tmp_path: Path) -> None:
    lock = WriterLock.for_engine(create_engine(f"sqlite:///{tmp_path / 'node.db'}"), timeout_s=30.0)
    assert lock is not None and lock.path == tmp_path / "node.db.writer-lock" and lock.timeout_s == 30.0
    assert WriterLock.for_engine(create_engine("sqlite://"), timeout_s=30.0) is None
    assert WriterLock.for_engine(create_engine("postgresql://u@127.0.0.1/db"), timeout_s=30.0) is None


def test_without_a_lock_file_the_transaction_still_runs(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    lock = WriterLock(tmp_path / "missing-directory" / "node.db.writer-lock", timeout_s=1.0)
    ran = False
    with lock.held():
        ran = True
    assert ran
    assert "unavailable" in caplog.text


def test_a_file_system_refusing_flock_leaves_the_writes_to_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog  # type: ignore[no-untyped-def]
) -> None:
    """As NFS does for a read-only descriptor: EBADF, said once, then no more tries."""
    tries = []

    def refuse(fd: int, operation: int) -> None:
        tries.append(operation)
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))

    monkeypatch.setattr(fcntl, "flock", refuse)
    lock = WriterLock(tmp_path / "node.db.writer-lock", timeout_s=1.0)
    ran = 0
    for _ in range(3):
        with lock.held():
            ran += 1
    assert ran == 3 and len(tries) == 1
    assert caplog.text.count("unavailable") == 1


def test_a_child_does_not_share_the_lock_it_inherited(tmp_path: Path) -> None:
    """flock excludes open file descriptions: one shared across a fork would exclude nothing.
    The parent holds the lock as it forks; the child, with the same object, must wait."""
    lock = WriterLock(tmp_path / "node.db.writer-lock", timeout_s=0.3)
    read, write = os.pipe()
    with lock.held():
        pid = os.fork()
        if pid == 0:  # the child: how long until it got through?
            start = time.monotonic()
            with lock.held():
                os.write(write, f"{time.monotonic() - start:.3f}".encode())
            os._exit(0)
        os.close(write)
        waited = float(os.read(read, 16))
        os.waitpid(pid, 0)
    os.close(read)
    lock.close()
    assert waited >= 0.3, f"the child got the parent's lock after {waited} s: it shared the description"
