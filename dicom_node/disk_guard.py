"""The disk guard's setting against the disk it guards.

``storage.min_free_mb`` makes the listener refuse C-STORE (0xA700, out of resources) while
the storage file system has less free space than that. A guard larger than the whole file
system, or larger than its free space when the node starts, refuses every instance from
the first one on: the PACS only sees A700, and the node otherwise looks healthy. So the
start-up log and ``dicom-node config check`` say it at once, with the numbers and the key.

Reading the numbers is one ``statvfs`` of the storage root, or of its nearest existing
parent when the root is not made yet (``config check`` is read-only and creates nothing).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

MIB = 2**20


@dataclass(frozen=True)
class DiskGuardCheck:
    """The guard and the file system it is measured on, in MiB."""

    guard_mb: int
    total_mb: int
    free_mb: int
    #: The folder measured: the storage root, or its nearest existing parent.
    measured: Path

    def warning(self) -> str | None:
        """What is wrong with the guard on this disk, or None.

        The listener refuses while free space is below the guard (the rule of
        :meth:`dicom_node.dicom.storage.InstanceStore.check_free_space`).
        """
        if self.guard_mb > self.total_mb:
            return (
                f"storage.min_free_mb = {self.guard_mb} MiB is more than the whole file system under "
                f"{self.measured} ({self.total_mb} MiB): every C-STORE will be refused (A700); "
                "lower storage.min_free_mb"
            )
        if self.guard_mb > self.free_mb:
            return (
                f"storage.min_free_mb = {self.guard_mb} MiB is more than the free space under {self.measured} "
                f"({self.free_mb} MiB free of {self.total_mb} MiB): every C-STORE is refused (A700) until "
                "space is freed there or storage.min_free_mb is lowered"
            )
        return None


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest parent that exists: where a folder not made yet will live."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return path  # unreachable on a real file system: "/" exists


def check_disk_guard(root: Path, min_free_mb: int) -> DiskGuardCheck:
    """Measure the file system of ``root`` against the guard; raises OSError if it cannot be read."""
    measured = nearest_existing(root.absolute())
    usage = shutil.disk_usage(measured)
    return DiskGuardCheck(min_free_mb, usage.total // MIB, usage.free // MIB, measured)


def disk_guard_warning(root: Path, min_free_mb: int) -> str | None:
    """The guard's warning for ``root``, or None; a file system that cannot be read is not this
    check's to report (the store's own start-up and /health say so)."""
    try:
        return check_disk_guard(root, min_free_mb).warning()
    except OSError:
        return None
