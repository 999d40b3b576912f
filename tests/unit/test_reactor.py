"""dicom_node.ingest.reactor leans on private pynetdicom code: pin every function it reads or replaces.

The event-driven reactor replaces pynetdicom's acceptor loop (``Association._run_reactor``),
hooks the DUL loop at ``_is_transport_event`` and swaps the queues the loops wait on. It is
correct only while those pynetdicom functions do what they did when it was written (3.0.4).
If this test fails, pynetdicom changed one of them: re-read it against reactor.py (is every
queue still filled through ``put``? does the DUL loop still call ``_is_transport_event``
when nothing was queued to send? does the acceptor loop check anything new? does
``decode_msg`` still do what ``SpoolingMessage.decode_msg`` repeats? does ``send_msg`` still
send a response as ``PromptDIMSE`` does? does the state machine still write a P-DATA in Sta6
only from inside ``do_action``, and does a failed write still queue Evt17?), adapt reactor.py, then record the new fingerprint here.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import io
import logging
import select
import socket
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import DT_1, StateMachine
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import A_P_ABORT, P_DATA
from pynetdicom.transport import AddressInformation, AssociationServer, AssociationSocket, RequestHandler

from dicom_node.ingest.reactor import (
    STANDARD_LOG_HANDLERS,
    PromptDUL,
    SpoolFile,
    discard_spool,
    make_prompt,
    spool_failure,
)

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
    # PromptDUL.send_at_once writes a P-DATA-TF from the association thread instead of DT-1:
    StateMachine.__init__: "13802ade1a356dce",  # keeps the DUL as .dul (LockedStateMachine's lock)
    StateMachine.do_action: "9a883f44c7f31641",  # every action, and every transition, runs inside it
    DT_1: "82e5c5d4114534fa",  # Sta6 + P-DATA: takes the primitive off the queue, writes it, stays in Sta6
    DULServiceProvider._send: "a850a7919e68484e",  # fires EVT_PDU_SENT (send_at_once yields to its handlers)
    AssociationSocket.send: "1ea8158c0b51faca",  # fires EVT_DATA_SENT; a failed write queues Evt17
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


# ------------------------------------------------------------------ the response written at once


class _Established:
    """An acceptor's association made prompt, established (Sta6) on one end of a socket pair,
    its DUL thread taken as alive; ``peer`` is the other end."""

    def __init__(self, wrap: Callable[[socket.socket], socket.socket] = lambda sock: sock) -> None:
        self._ours, self.peer = socket.socketpair()
        self.peer.settimeout(5)
        self.assoc = Association(AE(), MODE_ACCEPTOR)
        self.assoc.requestor.address_info = AddressInformation("127.0.0.1", 11112)  # named in an abort
        self.assoc.dul.socket = AssociationSocket(self.assoc, client_socket=wrap(self._ours))
        self.assoc.dul.event_queue.get()  # Evt5, the connection: acted on long before Sta6
        make_prompt(self.assoc)
        for event, handler in STANDARD_LOG_HANDLERS:  # as with the node's logging (pynetdicom at WARNING)
            self.assoc.unbind(event, handler)
        self.assoc.dul.state_machine.current_state = "Sta6"
        self.dul.is_alive = lambda: True  # type: ignore[method-assign]

    @property
    def dul(self) -> PromptDUL:
        return self.assoc.dul  # type: ignore[return-value]

    def send_response(self) -> None:
        """What the C-STORE handler's return leads to: PromptDIMSE sends a plain response."""
        response = C_STORE()
        response.MessageIDBeingRespondedTo = 1
        response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        response.AffectedSOPInstanceUID = "1.2.3.4"
        response.Status = 0x0000
        self.assoc.requestor.maximum_length = 16384
        self.assoc.dimse.send_msg(response, 1)

    def queued_pdu(self) -> bytes:
        """The PDU pynetdicom's DUL thread would write for what was queued: DT-1's encoding."""
        return P_DATA_TF(self.dul.to_provider_queue.get_nowait()).encode()

    def close(self) -> None:
        self.peer.close()
        self._ours.close()
        self.dul.wake.close()


@pytest.fixture
def established() -> Iterator[_Established]:
    association = _Established()
    yield association
    association.close()


def test_a_plain_response_is_written_at_once_as_pynetdicom_would_write_it(established: _Established) -> None:
    established.dul.is_alive = lambda: False  # type: ignore[method-assign]
    established.send_response()  # the DUL thread gone: queued, as by pynetdicom
    expected = established.queued_pdu()
    established.dul.is_alive = lambda: True  # type: ignore[method-assign]
    established.send_response()
    assert established.dul.to_provider_queue.empty() and established.dul.event_queue.empty()
    assert established.peer.recv(len(expected) + 1) == expected


def _queued_not_written(association: _Established) -> None:
    queued = association.dul.to_provider_queue.qsize()
    association.send_response()
    assert association.dul.to_provider_queue.qsize() == queued + 1
    assert type(association.dul.to_provider_queue.queue[-1]) is P_DATA
    association.peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        association.peer.recv(1)


@pytest.mark.parametrize(
    "unsafe",
    [
        lambda a: setattr(a.dul.state_machine, "current_state", "Sta8"),  # releasing (AR-7 may still send)
        lambda a: a.dul.to_provider_queue.put(P_DATA()),  # something queued before it keeps its place
        lambda a: a.dul.event_queue.put("Evt12"),  # a release request read, not yet acted on
        lambda a: setattr(a.dul, "is_alive", lambda: False),  # the DUL thread gone
        lambda a: a.dul.kill_dul(),
        lambda a: a.assoc.bind(evt.EVT_PDU_SENT, lambda event: None),  # wants pynetdicom's PDU object
        lambda a: a.assoc.bind(evt.EVT_FSM_TRANSITION, lambda event: None),  # wants DT-1's transition
        lambda a: a.assoc.bind(evt.EVT_DATA_SENT, lambda event: None),  # expects the DUL thread
        lambda a: a.dul.send_lock.acquire(),  # the DUL thread in a state machine action
        lambda a: setattr(a.dul.socket, "socket", None),  # closed
    ],
    ids=["Sta8", "queued", "event pending", "DUL gone", "DUL killed", "PDU_SENT", "FSM_TRANSITION", "DATA_SENT", "DUL busy", "closed"],
)
def test_unless_it_is_safe_the_response_is_queued_for_pynetdicoms_dul_thread(
    established: _Established, unsafe: Callable[[_Established], object]
) -> None:
    unsafe(established)
    _queued_not_written(established)


def test_over_tls_the_response_is_queued_for_pynetdicoms_dul_thread() -> None:
    context = ssl.create_default_context()
    association = _Established(lambda sock: context.wrap_socket(sock, server_hostname="peer", do_handshake_on_connect=False))
    try:
        assert isinstance(association.dul.socket.socket, ssl.SSLSocket)  # type: ignore[union-attr]
        _queued_not_written(association)
    finally:
        association.close()


def test_a_failed_write_aborts_the_association_as_pynetdicoms_would(established: _Established) -> None:
    established.peer.close()  # the sender gone: the write fails (EPIPE)
    established.send_response()
    assert established.dul.event_queue.queue[0] == "Evt17"  # what AssociationSocket.send queues on failure
    assert select.select([established.dul.wake], [], [], 0)[0], "the DUL thread is not woken to act on it"
    established.dul.state_machine.do_action(established.dul.event_queue.get())
    assert established.dul.state_machine.current_state == "Sta1"  # AA-4: the association is aborted
    assert type(established.dul.to_user_queue.get_nowait()) is A_P_ABORT


class _FullDisk(io.RawIOBase):
    """A file whose writes fail as on a full disk, after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return len(data)


def _spool_on_a_full_disk(tmp_path: Path, room: int) -> SpoolFile:
    spool = SpoolFile(tmp_path / "spool.dcm")
    spool._file.close()  # type: ignore[union-attr]
    spool._file = io.BufferedWriter(_FullDisk(room))  # type: ignore[assignment]
    return spool


@pytest.mark.parametrize("room", [0, 100, 4000])  # at the preamble, in the File Meta, in the data set
def test_a_spool_write_that_fails_keeps_the_reason_removes_the_file_and_drops_the_rest(tmp_path: Path, room: int) -> None:
    spool = _spool_on_a_full_disk(tmp_path, room)
    fragments = [b"\0" * 128 + b"DICM", b"\2" * 200, *[b"\1" * 16384] * 4]
    for fragment in fragments:  # as pynetdicom writes them: write, then flush the file
        assert spool.write(fragment) == len(fragment)
        spool.file.flush()
    assert isinstance(spool.failure, OSError) and spool.failure.errno == errno.ENOSPC
    assert spool.closed and not (tmp_path / "spool.dcm").exists()
    assert spool_failure(SimpleNamespace(_dataset_file=spool)) is spool.failure
    spool.close()  # pynetdicom closes it after the handler: nothing left to do, no error
    discard_spool(SimpleNamespace(_data_set_file=spool))  # nor for the association's clean-up


def test_a_spool_file_that_cannot_be_created_is_answered_too(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path / "no-such-folder" / "spool.dcm")
    assert isinstance(spool.failure, FileNotFoundError) and spool.closed
    assert spool.write(b"data") == 4
    spool.file.flush()
    spool.close()
    with pytest.raises(AttributeError):
        spool.fileno  # noqa: B018 (nothing open to ask)


def test_a_spool_file_that_is_written_fully_has_no_failure(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path / "spool.dcm")
    spool.write(b"\0" * 128 + b"DICM")
    spool.file.flush()
    assert spool.failure is None and not spool.closed and spool.tell() == 132
    spool.close()
    assert spool.closed and (tmp_path / "spool.dcm").stat().st_size == 132
    assert spool_failure(SimpleNamespace(_dataset_file=spool)) is None
