"""A small disk that really fills up: a tmpfs of a given size (mounting needs root, as CI has)."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_tmpfs(mount: Path, megabytes: int) -> Iterator[Path]:
    """Mount a tmpfs of ``megabytes`` at ``mount`` (created) for the ``with`` block."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"cannot mount a tmpfs for a disk-full test (run as root): {done.stderr}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_to(mount: Path, free_bytes: int) -> Path:
    """Write a ballast file so that about ``free_bytes`` stay free on ``mount``; returns it."""
    ballast = mount / "ballast.bin"
    with open(ballast, "ab") as out:
        while (room := shutil.disk_usage(mount).free - free_bytes) > 0:
            out.write(b"\0" * min(room, 1 << 20))
            out.flush()
    return ballast

