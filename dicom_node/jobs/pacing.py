"""Analysis gives way to reception: a running job pauses, step by step, while instances arrive.

Why: on a small machine a job's model and a listener share the cores, the memory bandwidth
and the caches. The worker already runs at a lower CPU priority (``dicom-node run`` starts it
at nice +10), but a single association is a chain of round trips: each C-STORE response
waits for the listener to get a core, and the job's threads keep the cores and caches busy.
Measured on 2 cores, one association received at 0.55-0.7× its idle rate while a 240-slice
study was analysed; a PACS pushing a backlog waits on that. Pausing the job while instances
arrive gives reception the machine; the job finishes later, by the time it paused.

How the worker knows, across processes and without a database round trip: every instance a
listener receives is spooled into the storage's ``.incoming`` folder and moved out of it,
and each creation or removal of a name there changes the folder's modification time. One
``stat`` per step of the job tells whether that happened in the last moment.

Bounded: one pause lasts at most ``max_pause_s``; a pause cut short by that bound is followed
by as long a time in which the job does not pause at all. Under reception that never stops,
analysis still gets half of its time (steps are of any size: a file read, a batch of slices),
and its lease is heartbeated by its own thread meanwhile.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: How long after the last change in ``.incoming`` reception still counts as going on: a
#: PACS between two instances of one push leaves gaps of milliseconds, between two studies
#: of a backlog, rarely more than this.
RECENT_S = 0.5
#: How often a pausing job looks again.
POLL_S = 0.05


@dataclass
class IngestActivity:
    """Whether listeners sharing this storage received or finished an instance just now.

    Changes are timed by this process's clock when it sees them, never by the folder's
    timestamp itself: storage shared over the network keeps the server's clock.
    """

    folder: Path
    recent_s: float = RECENT_S
    clock: Callable[[], float] = time.monotonic
    _seen_mtime_ns: int | None = field(default=None, init=False)
    _changed_at: float = field(default=float("-inf"), init=False)

    def watch(self) -> None:
        """Take the folder as it is now for the baseline: earlier changes (this process's own
        writes of a job's results among them) do not count as reception."""
        self._seen_mtime_ns = self._mtime_ns()
        self._changed_at = float("-inf")

    def active(self) -> bool:
        """True when the folder changed since the last look, or less than ``recent_s`` ago."""
        mtime_ns = self._mtime_ns()
        now = self.clock()
        if self._seen_mtime_ns is None:
            self._seen_mtime_ns = mtime_ns
        elif mtime_ns != self._seen_mtime_ns:
            self._seen_mtime_ns = mtime_ns
            self._changed_at = now
        return now - self._changed_at < self.recent_s

    def _mtime_ns(self) -> int | None:
        try:
            return os.stat(self.folder).st_mtime_ns
        except OSError:  # not there yet, or storage briefly away: no reception to give way to
            return None


@dataclass
class Pacer:
    """Called between a job's steps: returns at once on a quiet node, pauses while instances arrive."""

    activity: IngestActivity
    max_pause_s: float
    poll_s: float = POLL_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    #: Called with the length of each pause (the metrics count them).
    on_pause: Callable[[float], None] | None = None
    #: Seconds paused since this pacer was made (a job reads the difference).
    paused_s: float = field(default=0.0, init=False)
    #: Until then the job does not pause (it follows a pause cut short by ``max_pause_s``).
    _free_until: float = field(default=float("-inf"), init=False)

    def start_job(self) -> None:
        """A job begins: only reception from now on makes it pause."""
        self.activity.watch()
        self._free_until = float("-inf")

    def __call__(self) -> None:
        """Pause while reception goes on, for at most ``max_pause_s``."""
        if self.clock() < self._free_until or not self.activity.active():
            return
        started = self.clock()
        while True:
            left = self.max_pause_s - (self.clock() - started)
            if left <= 0:  # reception goes on: the job now works as long as it waited
                self._free_until = self.clock() + self.max_pause_s
                break
            self.sleep(min(self.poll_s, left))
            if not self.activity.active():
                break
        paused = self.clock() - started
        self.paused_s += paused
        if self.on_pause is not None:
            self.on_pause(paused)
