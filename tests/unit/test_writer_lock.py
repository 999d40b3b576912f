"""The SQLite writer lock queues listener processes' transactions in the kernel (see
dicom_node.db.writer_lock): one holder at a time, the next woken as soon as it is free."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from sqlalchemy import create_engine

from dicom_node.db.writer_lock import WriterLock


def _hold_for(path: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    lock = WriterLock(Path(path))
    with lock.held():
        ready.set()
        time.sleep(seconds)


def test_a_second_process_waits_for_the_holder_and_gets_the_lock_as_soon_as_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "node.db.writer-lock"
    ready = multiprocessing.get_context("fork").Event()
    holder = multiprocessing.get_context("fork").Process(target=_hold_for, args=(str(path), 0.5, ready))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        lock = WriterLock(path)
        with lock.held():
            waited = time.monotonic() - start
        lock.close()
    finally:
        holder.join(10)
    assert 0.3 < waited < 5.0, f"waited {waited:.2f} s for a lock held 0.5 s"


def test_only_a_sqlite_file_database_gets_one(tmp_path: Path) -> None:
    lock = WriterLock.for_engine(create_engine(f"sqlite:///{tmp_path / 'node.db'}"))
    assert lock is not None and lock.path == tmp_path / "node.db.writer-lock"
    assert WriterLock.for_engine(create_engine("sqlite://")) is None
    assert WriterLock.for_engine(create_engine("postgresql://u@127.0.0.1/db")) is None


def test_a_lock_file_another_user_owns_read_only_still_locks(tmp_path: Path) -> None:
    path = tmp_path / "node.db.writer-lock"
    path.touch(mode=0o444)
    os.chmod(path, 0o444)
    lock = WriterLock(path)
    with lock.held():
        assert lock._fd is not None
    lock.close()


def test_without_a_lock_file_the_transaction_still_runs(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    lock = WriterLock(tmp_path / "missing-directory" / "node.db.writer-lock")
    ran = False
    with lock.held():
        ran = True
    assert ran
    assert "unavailable" in caplog.text
