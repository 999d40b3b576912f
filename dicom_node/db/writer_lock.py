"""One SQLite writer at a time across the listener processes, queued in the kernel.

Why: SQLite lets one connection write at a time. When a second process finds the write
lock taken, SQLite's busy handler sleeps and tries again, 1 ms, then 2, 5, 10 ms and so
on; it is never woken when the lock is freed. With several listener processes recording
instances at once, about half of their commits collided (``strace -c`` on the listeners
under ``tests.bench.ingest --scenarios four``: 195 failed lock attempts and 214 sleeps for
449 commits in 4 s), and each collision added at least a millisecond of sleep to an
instance whose sender was waiting for our answer, while the lock was busy for only
about 0.3 ms. ``flock`` on a file beside the database queues the waiters in the kernel
instead, and wakes the next one the moment the lock is released.

Only the listeners' instance transactions take it; every other writer (the worker, the
heartbeat) still meets SQLite's busy handler, which is rare and off the C-STORE path.
PostgreSQL needs none of this: it has row locks and wakes its waiters itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine

logger = logging.getLogger(__name__)


class WriterLock:
    """An exclusive ``flock`` on ``<database>.writer-lock``, held around one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._unavailable = False

    @classmethod
    def for_engine(cls, engine: Engine) -> WriterLock | None:
        """The lock for a SQLite file database; None for PostgreSQL or an in-memory database."""
        url = engine.url
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        return cls(Path(f"{url.database}.writer-lock"))

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lock for the ``with`` block (blocking until it is free).

        Without the lock file (it cannot be created or opened), the block runs unlocked:
        SQLite's own locking still keeps the writes apart, only with its slower retries.
        """
        fd = self._open()
        if fd is None:
            yield
            return
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):  # closed meanwhile by close() at shutdown: closing released it
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        """The lock file's descriptor, opened once. Read-only is enough for ``flock``, so a
        file another user created (an administrator running a command as root) still works."""
        if self._fd is None and not self._unavailable:
            try:
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)
            except OSError as exc:
                self._unavailable = True
                logger.warning(f"writer lock {self.path} unavailable ({exc.strerror}): SQLite's busy retries instead")
        return self._fd

    def close(self) -> None:
        """Give the descriptor back (the next transaction opens it again)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
