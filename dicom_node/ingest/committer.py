"""Group commit: one writer thread records instances from all associations.

Each C-STORE handler hands its instance to :meth:`GroupCommitter.submit` and waits.
The writer thread takes everything queued, records it in one transaction and wakes
each handler with its own result, so an instance is acknowledged only after the
transaction holding its row has committed. With one association this costs a thread
hand-off; with several, N instances share one database commit (one log fsync). It
also makes the listener a single SQLite writer, which avoids lock contention.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Generic, TypeVar

from dicom_node.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

_STOP = object()


class GroupCommitter(Generic[ItemT, ResultT]):
    """Batches submitted items into calls of ``write_batch`` made on one thread."""

    def __init__(
        self,
        write_batch: Callable[[list[ItemT]], list[ResultT | Exception]],
        max_batch: int = 64,
    ) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._queue: queue.Queue[tuple[ItemT, Future[ResultT]] | object] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="group-commit", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the writer thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def submit(self, item: ItemT, timeout_s: float) -> ResultT:
        """Queue ``item`` and block until its transaction committed (or failed)."""
        if self._thread is None:
            raise DatabaseUnavailableError("the node is shutting down: instance not stored, send it again")
        future: Future[ResultT] = Future()
        self._queue.put((item, future))
        return future.result(timeout=timeout_s)

    def _take_batch(self) -> tuple[list[tuple[ItemT, Future[ResultT]]], bool]:
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        stop = False
        while len(batch) < self._max_batch:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            batch.append(nxt)
        return batch, stop  # type: ignore[return-value]

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take_batch()
            if not batch:
                continue
            items = [item for item, _ in batch]
            try:
                results = self._write_batch(items)
            except Exception as exc:  # never let the writer thread die
                logger.exception("group commit failed", extra={"count": len(items)})
                results = [exc] * len(items)
            for (_, future), result in zip(batch, results, strict=True):
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
