"""Our requestor associations: pynetdicom's reactor thread must not take the response a send waits for.

Why: in pynetdicom 3.0 a requestor's reactor thread keeps polling the DIMSE message queue
(``get_msg(block=False)``) to serve requests from the peer, while ``send_c_store`` and
the other ``send_*`` methods pause it and wait for their response on the same queue
(``get_msg(block=True)``). The pause has a gap: the reactor may have passed its
checkpoint and be about to look at the queue when the sender decides it is paused. If the
response arrives in that gap, the reactor takes it, logs "Received unexpected C-STORE
service message" and drops it, and the sender waits for the whole DIMSE time-out (known
upstream, pydicom/pynetdicom#875). The faster the peer answers, the likelier the gap: our
own listener, answering without pynetdicom's polling delays, made it show within a few
hundred C-STOREs from a pynetdicom sender in the same process.

The fix leaves the threads alone and changes what the reactor can take: a non-blocking
read of the queue (only the reactor reads that way) takes a request from the peer and
nothing else; responses wait for the blocking read of the sender they answer.
"""

from __future__ import annotations

import queue
from typing import Any

from pynetdicom.association import Association


def _is_request(item: Any) -> bool:
    _context_id, message = item
    return message is not None and bool(message.is_valid_request)


class ResponsesForSenders(queue.Queue[Any]):
    """A DIMSE message queue whose non-blocking ``get`` takes requests only."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            return super().get(block, timeout)
        with self.not_empty:  # the queue's own lock, as Queue.get holds it
            if not self._qsize() or not _is_request(self.queue[0]):
                raise queue.Empty
            item = self._get()
            self.not_full.notify()
            return item


def keep_responses_for_senders(assoc: Association) -> Association:
    """Make an association we requested safe from the gap above; call it right after
    ``AE.associate``, before any DIMSE message (nothing is queued yet then)."""
    if assoc.is_established:
        assoc.dimse.msg_queue = ResponsesForSenders()
    return assoc
