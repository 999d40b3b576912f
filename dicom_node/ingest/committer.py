"""Group commit: instances from all associations share transactions, led by one of their callers.

Each C-STORE handler hands its instance to :meth:`GroupCommitter.submit` and waits. The
first caller to find nobody writing becomes the leader: it takes everything queued (its own
instance first), records it in one transaction, and wakes each waiting caller with its own
result; if more arrived meanwhile, it passes the lead to the first of them. An instance is
acknowledged only after the transaction holding its row committed.

With one association this is a plain call on the handler's own thread: no hand-off to
another thread, which cost a thread switch (and a fight for the GIL with pynetdicom's
polling threads) for every instance. With several, N instances share one commit (one log
fsync). Only one transaction runs at a time per process, so the listener stays a single
SQLite writer, which avoids lock contention.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from dicom_node.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


class _Ticket(Generic[ItemT, ResultT]):
    """One submitted item: its outcome, or the order to lead the next batch."""

    def __init__(self, item: ItemT) -> None:
        self.item = item
        self.woken = threading.Event()
        self.lead = False
        self.result: ResultT | None = None
        self.error: BaseException | None = None


class GroupCommitter(Generic[ItemT, ResultT]):
    """Batches submitted items into calls of ``write_batch``, one call at a time."""

    def __init__(
        self,
        write_batch: Callable[[list[ItemT]], list[ResultT | Exception]],
        max_batch: int = 64,
    ) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._lock = threading.Lock()
        self._pending: list[_Ticket[ItemT, ResultT]] = []
        self._leading = False  # invariant: items pending => someone leads or is told to
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        """Refuse new items; a batch being written finishes with its leader."""
        self._running = False

    def submit(self, item: ItemT, timeout_s: float) -> ResultT:
        """Record ``item`` (in a batch) and return its result once the transaction committed.

        Raises what ``write_batch`` gave for the item, or :class:`TimeoutError` when
        another caller's batch holding it is not done within ``timeout_s`` (it may still
        commit later).
        """
        if not self._running:
            raise DatabaseUnavailableError("the node is shutting down: instance not stored, send it again")
        ticket: _Ticket[ItemT, ResultT] = _Ticket(item)
        with self._lock:
            self._pending.append(ticket)
            if not self._leading:
                self._leading = ticket.lead = True
        if not ticket.lead and not ticket.woken.wait(timeout_s):
            with self._lock:
                if not ticket.lead:
                    if ticket in self._pending:
                        self._pending.remove(ticket)  # never written: it cannot land later
                    # else: in a batch being written now, which may still commit
                    raise TimeoutError("group commit: not confirmed in time")
        if ticket.lead:
            self._lead()
        if ticket.error is not None:
            raise ticket.error
        return ticket.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Write what is queued (the leader's item first), wake everyone, hand on the lead."""
        with self._lock:
            batch = self._pending[: self._max_batch]
            del self._pending[: len(batch)]
        try:
            try:
                results = self._write_batch([ticket.item for ticket in batch])
            except Exception as exc:  # a writer failure fails its batch, never the next one
                logger.exception("group commit failed", extra={"count": len(batch)})
                results = [exc] * len(batch)
            for ticket, result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    ticket.error = result
                else:
                    ticket.result = result
        finally:
            with self._lock:
                if self._pending:
                    successor = self._pending[0]
                    successor.lead = True
                    successor.woken.set()
                else:
                    self._leading = False
            for ticket in batch:
                ticket.lead = False
                ticket.woken.set()
