"""dicom_node.ingest.reactor leans on private pynetdicom code: pin every function it reads or replaces.

The event-driven reactor replaces pynetdicom's acceptor loop (``Association._run_reactor``),
hooks the DUL loop at ``_is_transport_event`` and swaps the queues the loops wait on. It is
correct only while those pynetdicom functions do what they did when it was written (3.0.4).
If this test fails, pynetdicom changed one of them: re-read it against reactor.py (is every
queue still filled through ``put``? does the DUL loop still call ``_is_transport_event``
when nothing was queued to send? does the acceptor loop check anything new?), adapt
reactor.py, then record the new fingerprint here.
"""

from __future__ import annotations

import hashlib
import inspect

from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

#: sha256 (first 16 hex digits) of each function's source in pynetdicom 3.0.4.
PINNED = {
    Association.__init__: "eb07516b8009ad8f",  # the queues, flags and Event the loops share
    Association._run_reactor: "f28838c5559e462a",  # the loop PromptAssociation._run_reactor replaces
    Association.kill: "8f9713666a7f4cff",
    Association.run_reactor: "ed8bbbe3b3d6ddae",  # calls _run_reactor once established
    DULServiceProvider.__init__: "c82dafa9438ddf70",
    DULServiceProvider.run_reactor: "e3a10eb3a0931e48",  # calls _is_transport_event when nothing to send
    DULServiceProvider._is_transport_event: "8725ed03bb8fbdef",
    DULServiceProvider._process_recv_primitive: "4c0ebbb3e646e35e",
    DULServiceProvider.kill_dul: "5ceccf8dd01c2072",
    DULServiceProvider.send_pdu: "7cbce5da8594124e",  # queues for the DUL thread through put()
    DIMSEServiceProvider.__init__: "bbecd186810e7700",
    DIMSEServiceProvider.get_msg: "890e3e04283f5aeb",
    RequestHandler._create_association: "05c8d12b79863cdb",
    RequestHandler.handle: "034823fb4df3a874",  # creates the association, then starts it
    AssociationServer.__init__: "edacb98bdfb7b974",  # takes request_handler
    AssociationSocket.recv: "6bc20a33b1b7cfe7",  # WholeReadSocket.recv keeps its contract
}


def _fingerprint(function: object) -> str:
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]  # type: ignore[arg-type]


def test_the_pynetdicom_code_the_prompt_reactor_relies_on_is_unchanged() -> None:
    changed = [f.__qualname__ for f, pinned in PINNED.items() if _fingerprint(f) != pinned]
    assert not changed, (
        f"pynetdicom changed {', '.join(changed)}: dicom_node/ingest/reactor.py replaces or hooks "
        "these; re-read them against it before updating the fingerprints in this test"
    )
