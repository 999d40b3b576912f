"""One SQLite writer at a time across the listener processes, retried finely and bounded.

Why: SQLite lets one connection write at a time. When a second process finds the write
lock taken, SQLite's busy handler sleeps and tries again, 1 ms, then 2, 5, 10 ms and so
on, however soon the lock frees. With several listener processes recording instances at
once, about half of their commits collided (``strace -c`` on the listeners under
``tests.bench.ingest --scenarios four``: 195 failed lock attempts and 214 sleeps for 449
commits in 4 s), and each collision added at least a millisecond of sleep to an instance
whose sender was waiting for our answer, while the lock was held for about 0.3 ms. So the
listeners take an ``flock`` on a file beside the database before they begin a
transaction, retrying after 0.1 ms, 0.2 ms, ... at most 2 ms apart.

Bounded like SQLite's own wait: after the busy timeout the transaction goes ahead without
the lock, and SQLite's locking (and its busy timeout) decides, as it did before. So a
stopped or stuck holder costs what it cost before, never an endless wait. Where ``flock``
itself fails (a file system that does not support it), SQLite's locking is all there is.

Only the listeners' instance transactions take it; every other writer (the worker, the
heartbeat) still meets SQLite's busy handler, which is rare and off the C-STORE path.
PostgreSQL needs none of this: it has row locks and wakes its waiters itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine

logger = logging.getLogger(__name__)

#: First pause between two tries, and the longest: short next to a transaction (~0.3 ms
#: plus its commit's fsync), far below SQLite's 1, 2, 5 ms.
FIRST_PAUSE_S = 0.0001
MAX_PAUSE_S = 0.002


class WriterLock:
    """An exclusive ``flock`` on ``<database>.writer-lock``, held around one transaction."""

    def __init__(self, path: Path, timeout_s: float) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None
        self._pid = 0
        self._unavailable = False

    @classmethod
    def for_engine(cls, engine: Engine, timeout_s: float) -> WriterLock | None:
        """The lock for a SQLite file database; None for PostgreSQL or an in-memory database."""
        url = engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return cls(Path(f"{url.database}.writer-lock"), timeout_s)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block, if it can be had within ``timeout_s``.

        Without it (still taken at the deadline, no lock file, ``flock`` unsupported) the
        block runs unlocked: SQLite's own locking still keeps the writes apart.
        """
        fd = self._open()
        if fd is None or not self._acquire(fd):
            yield
            return
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # closed meanwhile by close() at shutdown: closing released it
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _acquire(self, fd: int) -> bool:
        """Take the lock, trying again at growing pauses until ``timeout_s``; False if not taken."""
        deadline = time.monotonic() + self.timeout_s
        pause = FIRST_PAUSE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass
            except OSError as exc:  # e.g. EBADF on NFS for a read-only file, ENOLCK
                self._give_up(exc)
                return False
            if time.monotonic() >= deadline:
                logger.warning(f"writer lock {self.path} still taken after {self.timeout_s:g} s: writing without it")
                return False
            time.sleep(pause)
            pause = min(2 * pause, MAX_PAUSE_S)

    def _open(self) -> int | None:
        """The lock file's descriptor, opened once per process.

        Per process: ``flock`` excludes open file descriptions, and a descriptor inherited
        across a fork would be the same description in parent and child. Read and write if
        allowed (NFS emulates ``flock`` with a write lock), else read-only, which is enough
        for a local ``flock`` on a file another user created (an administrator's command run
        as root).
        """
        if self._unavailable:
            return None
        if self._fd is not None and self._pid != os.getpid():
            with contextlib.suppress(OSError):  # the parent's description (closing ours releases nothing of theirs)
                os.close(self._fd)
            self._fd = None  # open our own
        if self._fd is None:
            try:
                try:
                    self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                except PermissionError:
                    self._fd = os.open(self.path, os.O_RDONLY)
                self._pid = os.getpid()
            except OSError as exc:
                self._give_up(exc)
        return self._fd

    def _give_up(self, exc: OSError) -> None:
        """No lock from now on in this process; said once."""
        self._unavailable = True
        logger.warning(f"writer lock {self.path} unavailable ({exc.strerror}): SQLite's busy retries instead")

    def close(self) -> None:
        """Give the descriptor back (at shutdown)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
