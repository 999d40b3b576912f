"""Durable, UID-addressed file storage for received instances.

Layout: ``<root>/<study uid>/<series uid>/<sop instance uid>.dcm``. Paths are built
only from UIDs, never from patient data. A UID that is not a plain dotted-number string
(``../../x``, spaces, over-long values) is replaced by a hash, so no value a sender
controls can name a path outside the root. A file replaces another only by an atomic
rename after ``fsync``, so a crash leaves either the old file or the new one; a new name
is linked before its data is fsynced (:func:`_link_durably`), so a crash can leave a file
there that no row points at, which a resend replaces. Stray temporary files are swept from
``.incoming`` at start-up and every hour.

Several processes, on several hosts, may share one root. Each names its temporary files
after its host, pid namespace and pid, and a starting process sweeps only what a dead process of
its own host and namespace left behind (and anything older than a day): a listener that restarts must not
delete the file another listener is renaming into place at that moment. The hourly sweep of a running
process is the same, except that its own files are in flight, so it leaves them alone; it is what removes
the files of a host that crashed and never came back.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import stat
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydicom.dataset import Dataset

from dicom_node.errors import DiskFullError, StorageError
from dicom_node.process import pid_alive, pid_namespace
from dicom_node.uid_syntax import is_plain_uid

logger = logging.getLogger(__name__)

INCOMING_DIR = ".incoming"
#: A temporary file older than this is left from a crash on some host, whatever its name says.
STALE_AFTER_S = 24 * 3600
#: How often a running process sweeps ``.incoming`` (start-up sweeps too).
SWEEP_INTERVAL_S = 3600.0
RESULTS_DIR = PurePosixPath("results")


def path_component(uid: str) -> str:
    """A file-name-safe stand-in for ``uid``: the UID itself when it is plain, else a hash.

    Hashed names start with ``x`` so they can never equal a plain UID.
    """
    if is_plain_uid(uid):
        return uid
    return "x" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def instance_path(study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
    """Where a received instance lives, relative to the storage root."""
    return PurePosixPath(
        path_component(study_uid), path_component(series_uid), path_component(sop_uid) + ".dcm"
    )


def result_path(study_uid: str, series_uid: str, sop_uid: str) -> PurePosixPath:
    """Where an object we created lives: under ``results/``, apart from what we received."""
    return RESULTS_DIR / instance_path(study_uid, series_uid, sop_uid)


def temporary_prefix() -> str:
    """``<host>~<pid namespace>~<pid>~``: who writes a temporary file, so only its owner's death sweeps it."""
    return f"{socket.gethostname()}~{pid_namespace()}~{os.getpid()}~"


def temporary_name(suffix: str) -> str:
    """``<host>~<pid namespace>~<pid>~<random><suffix>`` (see :func:`temporary_prefix`)."""
    return f"{temporary_prefix()}{uuid.uuid4().hex}{suffix}"


def is_leftover(name: str, age_s: float, *, starting: bool) -> bool:
    """True for a temporary file whose writer is gone: a dead pid seen from the writer's own
    host and pid namespace, or a file older than :data:`STALE_AFTER_S` (whoever wrote it).

    Files of other hosts, or of other containers on this host (another pid namespace, even
    with the same host name), are not ours to judge: only their age removes them. Our own pid
    marks a leftover only while ``starting`` (an earlier process that had the same pid);
    afterwards those are our transfers in flight.
    """
    if age_s > STALE_AFTER_S:
        return True
    parts = name.split("~")
    if len(parts) != 4 or parts[0] != socket.gethostname() or parts[1] != pid_namespace() or not parts[2].isdigit():
        return False
    pid = int(parts[2])
    if pid == os.getpid():
        return starting
    return not pid_alive(pid)


def storage_error(exc: OSError, activity: str, subject: object | None = None) -> StorageError:
    """Our error for a failed file operation: :class:`DiskFullError` when the disk or a quota is full.

    Both are answered 0xA700 (out of resources); the words tell an administrator which.
    The disk-full words name no file, so that they fit a C-STORE Error Comment (64 characters).
    """
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while {activity}: {exc.strerror}")
    where = "" if subject is None else f" {subject}"
    return StorageError(f"{activity}{where} failed: {exc.strerror}")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    """fsync a file's data: its own name, so a profile tells it from a directory's fsync."""
    _fsync_path(path)


def _replace_durably(staged: Path, final: Path) -> None:
    """fsync ``staged``, rename it over ``final``, fsync the directory.

    The data is made durable before the rename because ``final`` may be a recorded file:
    renaming data that is not yet durable over it could leave, after a crash, neither the
    old copy nor a whole new one.
    """
    _fsync_file(staged)
    os.replace(staged, final)
    _fsync_path(final.parent)


@dataclass(frozen=True)
class StoredFile:
    """A file published at its final name: its size, and which file it is (device, inode),
    so that it can be removed later only if the name still holds it."""

    size: int
    device: int
    inode: int


def _link_durably(staged: Path, final: Path, stored: StoredFile) -> bool:
    """Give ``staged`` the new name ``final``, make its data and the new entry durable, drop
    the name ``staged``; False if ``final`` is taken (link() never replaces: the first copy
    of an instance is kept).

    Linked first, fsynced after: on ext4 the file's fsync then commits the journal
    transaction that also holds the new directory entry, so the directory's fsync that
    follows has nothing left to commit (one journal commit per instance instead of two);
    it stays for file systems that do not commit an entry with its file. A crash in between
    can leave ``final`` with incomplete data, but no row points at it (the row is committed
    after both fsyncs) and a resend replaces such a file
    (:meth:`dicom_node.ingest.scp.StorageSCP._store`). When an fsync fails ``final`` is
    removed again, unless another writer has replaced it meanwhile (``stored``: which
    file ``staged`` is).
    """
    try:
        os.link(staged, final)
    except FileExistsError:
        return False
    try:
        _fsync_file(staged)
        _fsync_path(final.parent)
    except OSError:
        with contextlib.suppress(OSError):  # the caller is already failing
            _unlink_if_holds(final, stored)
        raise
    os.unlink(staged)
    return True


def _unlink_if_holds(path: Path, stored: StoredFile) -> None:
    """Remove ``path`` if it still holds the file ``stored`` describes, not one another writer
    has put there since. (The look and the removal are two steps: a window of microseconds.)"""
    try:
        status = path.stat()
    except FileNotFoundError:
        return
    if (status.st_dev, status.st_ino) == (stored.device, stored.inode):
        path.unlink(missing_ok=True)


@dataclass(frozen=True)
class GuardState:
    """The disk guard at one instant, in MiB: free space, the guard, and whether C-STORE is refused."""

    free_mb: int
    guard_mb: int
    refusing: bool

    def text(self) -> str:
        """As ``status`` and the page show it."""
        verdict = "refusing C-STORE (A700)" if self.refusing else "ok"
        return f"{self.free_mb} MiB free, guard {self.guard_mb} MiB: {verdict}"


class InstanceStore:
    """Files under one storage root, written atomically and durably."""

    def __init__(self, root: Path, min_free_bytes: int) -> None:
        self.root = root.resolve()
        self.min_free_bytes = min_free_bytes
        self.incoming = self.root / INCOMING_DIR

    def prepare(self) -> None:
        """Create the root, and remove temporary files a crashed process left behind."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.sweep_incoming(starting=True)

    def sweep_incoming(self, *, starting: bool = False) -> int:
        """Remove the temporary files of writers that are gone (:func:`is_leftover`); how many."""
        removed = 0
        now = time.time()
        for leftover in self.incoming.iterdir():
            try:
                status = leftover.stat()
            except FileNotFoundError:  # its live owner just renamed it into place
                continue
            if not stat.S_ISREG(status.st_mode):  # not a temporary file of ours: not ours to delete
                continue
            if is_leftover(leftover.name, now - status.st_mtime, starting=starting):
                logger.warning("removing interrupted transfer", extra={"path": leftover.name})
                leftover.unlink(missing_ok=True)
                removed += 1
        return removed

    def sweep_periodically(self, stop: threading.Event, interval_s: float = SWEEP_INTERVAL_S) -> threading.Thread:
        """Sweep ``.incoming`` every ``interval_s`` on a daemon thread until ``stop`` is set.

        Every process runs one (the listener has no scheduler): only a process of the writer's
        host can tell that the writer died, and a file-system error must not end the sweeps.
        """

        def loop() -> None:
            while not stop.wait(interval_s):
                try:
                    self.sweep_incoming()
                except OSError as exc:
                    logger.error(f"sweeping {INCOMING_DIR} failed: {exc.strerror}")

        thread = threading.Thread(target=loop, name="incoming-sweep", daemon=True)
        thread.start()
        return thread

    def free_bytes(self) -> int:
        """Free space on the storage file system, for the disk guard and metrics."""
        return shutil.disk_usage(self.root).free

    def check_free_space(self, incoming_bytes: int = 0) -> None:
        """Raise :class:`DiskFullError` if storing ``incoming_bytes`` would cross the guard."""
        free = self.free_bytes()
        if self._below_guard(free - incoming_bytes):
            raise DiskFullError(
                f"{free // 2**20} MiB free, guard is {self.min_free_bytes // 2**20} MiB"
            )

    def guard_state(self) -> GuardState:
        """The disk guard now, from one reading of the free space: the flag and the words
        ``status`` shows can then never disagree."""
        free = self.free_bytes()
        return GuardState(free // 2**20, self.min_free_bytes // 2**20, refusing=self._below_guard(free))

    def _below_guard(self, free_bytes: int) -> bool:
        return free_bytes < self.min_free_bytes

    def problems(self) -> list[str]:
        """Why the store cannot take instances now (for the health endpoint); empty if it can."""
        probe = self.incoming / temporary_name(".probe")
        try:
            probe.write_bytes(b"ok")
            _fsync_path(probe)
            probe.unlink()
        except OSError as exc:
            return [f"storage not writable ({exc.strerror})"]
        try:
            self.check_free_space()
        except DiskFullError as exc:
            return [f"disk guard: {exc}"]
        return []

    def absolute(self, relative: PurePosixPath | str) -> Path:
        """The absolute path of a stored file; refuses anything outside the root."""
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise StorageError(f"path {str(relative)!r} is outside the storage root")
        return path

    def exists(self, relative: PurePosixPath | str) -> bool:
        return self.absolute(relative).is_file()

    def _make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and fsync each parent whose entries changed."""
        missing = []
        current = directory
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _fsync_path(path.parent)

    def _stage(self, source: Path) -> Path:
        """``source`` itself when it is on our file system, else a copy in ``.incoming``; not yet fsynced.

        The listener spools each received data set into ``.incoming`` (see
        :mod:`dicom_node.ingest.reactor`), so it is linked into place, never copied; a
        source elsewhere (a caller's own file) is copied first.
        """
        if source.stat().st_dev == self.root.stat().st_dev:
            return source
        staged = self.incoming / temporary_name(".part")
        shutil.copyfile(source, staged)
        return staged

    def _publish(self, source: Path, relative: PurePosixPath, *, overwrite: bool) -> StoredFile | None:
        final = self.absolute(relative)
        staged: Path | None = None
        try:
            staged = self._stage(source)
            status = staged.stat()
            stored = StoredFile(size=status.st_size, device=status.st_dev, inode=status.st_ino)
            self._make_dirs(final.parent)
            if overwrite:
                _replace_durably(staged, final)
            elif not _link_durably(staged, final, stored):
                return None
            staged = None
            return stored
        except OSError as exc:
            raise storage_error(exc, "storing", relative) from exc
        finally:
            if staged is not None and staged != source:
                staged.unlink(missing_ok=True)

    def publish(self, source: Path, relative: PurePosixPath) -> StoredFile:
        """Make ``source`` durable at ``relative``, replacing any file there.

        Stage (fsync), rename atomically, fsync the directory: after a crash the path
        holds the old file or the new one, never a mix.
        """
        stored = self._publish(source, relative, overwrite=True)
        assert stored is not None
        return stored

    def publish_new(self, source: Path, relative: PurePosixPath) -> StoredFile | None:
        """Make ``source`` durable at ``relative`` unless the name is taken: None (and
        ``source`` kept) then. Unlike :meth:`publish`, a crash can leave an incomplete file at
        a new name (see :func:`_link_durably`): never one a row points at."""
        return self._publish(source, relative, overwrite=False)

    def write_dataset(self, dataset: Dataset, relative: PurePosixPath) -> int:
        """Write an object we created (SEG, SR, key image) durably at ``relative``; returns its size."""
        staged = self.incoming / temporary_name(".part")
        dataset.save_as(staged, enforce_file_format=True)
        return self.publish(staged, relative).size

    def remove(self, relative: PurePosixPath | str) -> None:
        """Delete a stored file (by retention, or one the row no longer points at)."""
        self.absolute(relative).unlink(missing_ok=True)

    def remove_if_same(self, relative: PurePosixPath | str, stored: StoredFile) -> None:
        """Delete ``relative`` only if it still holds the file ``stored`` describes.

        Why: after our commit failed, the name may hold another writer's file: a resend of
        the same instance over another association, which found our file before our row
        and took it for a crash leftover, replaced it and may have recorded its own row.
        Removing by name would leave that row pointing at nothing.
        """
        _unlink_if_holds(self.absolute(relative), stored)
