"""Who this process is in leases and claims, and whether another process of this host is gone.

A lease alone tells a dead owner only when it expires (``jobs.lease_s``, 10 minutes by
default). A process can do better for the owners it can see: one of its own host and
pid namespace whose pid no longer runs is dead for certain, so its jobs and claims can be
taken back at once. Owners of other hosts, or of other containers on this host (another
pid namespace, even under the same host name), keep the lease rule: their pids mean
nothing here. The ``.incoming`` sweep of :mod:`dicom_node.dicom.storage` reasons the same way,
with the same two helpers.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass


def pid_namespace() -> str:
    """The inode of this process's pid namespace (``0`` where there is none to read)."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return "0"


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and runs (ours or another user's).

    A zombie counts as gone: it has exited and only waits for its parent to reap it.
    That matters after ``kill -9`` of ``run``: its children die with it and are handed to
    pid 1, which in many containers never reaps them, so ``kill(pid, 0)`` would keep
    answering "alive" for a process that holds nothing any more.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """True when /proc says the process has exited (state Z or X); False where /proc is not there."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # "pid (comm) state ...": comm may hold spaces and parentheses, so split at the last ")".
            state = stat.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state in (b"Z", b"X")


def process_owner() -> str:
    """``host:pid-namespace:pid:random``; the random part tells a reused pid from its predecessor."""
    return f"{socket.gethostname()}:{pid_namespace()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Owner:
    """A lease owner as :func:`process_owner` wrote it."""

    host: str
    namespace: str
    pid: int

    @classmethod
    def parse(cls, owner: str) -> Owner | None:
        """None for a name in another form (an older release's ``host:pid:random``)."""
        parts = owner.split(":")
        if len(parts) != 4 or not parts[2].isdigit():
            return None
        return cls(parts[0], parts[1], int(parts[2]))


def is_dead_here(owner: str, *, me: str) -> bool:
    """True when ``owner`` is a process of this host and pid namespace that no longer runs.

    ``me`` is this process's own owner name: it is alive. Another name with our pid is a
    predecessor that had the same pid (common in containers, where the node is often pid 1).
    """
    if owner == me:
        return False
    parsed = Owner.parse(owner)
    if parsed is None or parsed.host != socket.gethostname() or parsed.namespace != pid_namespace():
        return False
    if parsed.pid == os.getpid():
        return True
    return not pid_alive(parsed.pid)
