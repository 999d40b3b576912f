"""dicom_node.ingest.reactor leans on private pynetdicom code: pin every function it reads or replaces.

The event-driven reactor replaces pynetdicom's acceptor loop (``Association._run_reactor``),
hooks the DUL loop at ``_is_transport_event`` and swaps the queues the loops wait on. It is
correct only while those pynetdicom functions do what they did when it was written (3.0.4).
If this test fails, pynetdicom changed one of them: re-read it against reactor.py (is every
queue still filled through ``put``? does the DUL loop still call ``_is_transport_event``
when nothing was queued to send? does the acceptor loop check anything new? does
``decode_msg`` still do what ``SpoolingMessage.decode_msg`` repeats? does ``send_msg`` still
send a response as ``PromptDIMSE`` does?), adapt reactor.py, then record the new fingerprint here.
"""

from __future__ import annotations

import hashlib
import inspect

import logging

import pytest
from pynetdicom import AE
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationServer, AssociationSocket, RequestHandler

from dicom_node.ingest.reactor import STANDARD_LOG_HANDLERS, make_prompt

#: sha256 (first 16 hex digits) of each function's source in pynetdicom 3.0.4.
PINNED = {
    Association.__init__: "eb07516b8009ad8f",  # the queues, flags and Event the loops share
    Association._run_reactor: "f28838c5559e462a",  # the loop PromptAssociation._run_reactor replaces
    Association.kill: "8f9713666a7f4cff",
    Association.run_reactor: "ed8bbbe3b3d6ddae",  # calls _run_reactor once established
    Association._bind_defaults: "4cada43c3a193724",  # binds the logging handlers quiet_standard_logging unbinds
    DULServiceProvider.__init__: "c82dafa9438ddf70",
    DULServiceProvider.run_reactor: "e3a10eb3a0931e48",  # calls _is_transport_event when nothing to send
    DULServiceProvider._is_transport_event: "8725ed03bb8fbdef",
    DULServiceProvider._process_recv_primitive: "4c0ebbb3e646e35e",
    DULServiceProvider.kill_dul: "5ceccf8dd01c2072",
    DULServiceProvider.send_pdu: "7cbce5da8594124e",  # queues for the DUL thread through put()
    DIMSEServiceProvider.__init__: "bbecd186810e7700",
    DIMSEServiceProvider.get_msg: "890e3e04283f5aeb",
    DIMSEServiceProvider.receive_primitive: "5f99c86b14a15cef",  # makes a message only when none is pending
    DIMSEMessage.__init__: "b9c44307ebf25f19",  # why spooling_message changes the class after it
    DIMSEMessage.decode_msg: "f51c777e841a76be",  # SpoolingMessage.decode_msg repeats it
    create_file_meta: "035ed415f5aeea15",  # the File Meta encode_file_meta packs
    DIMSEServiceProvider.send_msg: "a839cf2fb46976d9",  # what PromptDIMSE.send_msg does itself for a plain C-STORE-RSP
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


def _bound(assoc: Association) -> list[str]:
    """The names of pynetdicom's standard logging handlers bound to ``assoc``."""
    return [
        handler.__name__
        for event, handler in STANDARD_LOG_HANDLERS
        if handler in [bound for bound, _ in assoc.get_handlers(event)]
    ]


@pytest.mark.parametrize(("level", "kept"), [(logging.WARNING, False), (logging.DEBUG, True)])
def test_pynetdicom_logging_handlers_are_unbound_only_when_their_lines_would_be_dropped(level: int, kept: bool) -> None:
    everyone = [handler.__name__ for _, handler in STANDARD_LOG_HANDLERS]
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(level)  # setLevel, not the attribute: it clears isEnabledFor's cache
    try:
        assoc = Association(AE(), MODE_ACCEPTOR)
        assert _bound(assoc) == everyone, "pynetdicom no longer binds these by default: re-read quiet_standard_logging"
        make_prompt(assoc)
        assert _bound(assoc) == (everyone if kept else [])
    finally:
        logger.setLevel(before)
