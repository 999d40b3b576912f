"""The acceptor's two threads per association, waking on events instead of polling every 1 ms.

Why: pynetdicom 3.0 runs two loops per association. The DUL thread (socket and state
machine) sleeps 1 ms whenever a turn found nothing to do; the association thread (which
calls our C-STORE handler) sleeps 1 ms before every look at its message queue. A sender
sends its next instance only after our response, so each C-STORE waits up to three times
in a row: before the request is read, before it is served, before the response goes out.
Each such sleep also wakes a thread that must take the GIL from the thread doing real
work. pynetdicom's own comment on the DUL delay reads "TODO: try and make this event
based"; there is no public setting for either loop.

How: while an association is established (state Sta6, where every C-STORE happens), each
thread blocks on what it actually waits for:

- the DUL thread in ``select()`` on the peer's socket and on a wake-up pipe, written
  whenever something is queued for it to send;
- the association thread on an Event, set whenever a DIMSE message or an ACSE primitive is
  queued for it, or when it is killed.

Every wait ends after :data:`WAIT_S` at the latest, so a condition that nothing signals
(the DUL thread dying, the network time-out, the ARTIM timer) is still seen, as with
polling but about 50 times less often. Negotiation, release and abort keep pynetdicom's
own loops. Nothing here changes what is sent or when a response is allowed: the handler
still runs on the association thread and answers only after its file and row are durable.

Measured (2 shared cores, load 4 to 6): storescu sending 300 CT slices to a bare pynetdicom
handler went from 160-190 to 230-370 instances/s, 2.5 to 2.2 ms of CPU each; an idle
established association costs its two threads about 4 ms of CPU a second instead of 30.

While at it, the socket reads each PDU with ``recv_into`` into one buffer instead of
pynetdicom's 4 KiB pieces (:class:`WholeReadSocket`): less CPU per instance, same bytes.
And pynetdicom's own logging handlers, which format a multi-line report of every PDU and
DIMSE message it sends or receives, are unbound when the ``pynetdicom`` logger would drop
those lines anyway (:func:`quiet_standard_logging`; the node sets it to WARNING): about
0.1 ms of CPU per instance spent formatting text nobody reads. And the C-STORE response is
packed directly (:class:`PromptDIMSE`, :mod:`dicom_node.dicom.dimse`) instead of through a
pydicom Dataset encoded twice: about 0.3 ms less per instance, the same bytes. The File Meta
Information at the head of each spooled data set is packed the same way (:class:`SpoolingMessage`).
And that response is written to the socket by the association thread itself when it is safe
(:meth:`PromptDUL.send_at_once`), instead of queued for the DUL thread to wake, run its state
machine and write: one hand-off between threads less per instance.

Private pynetdicom names this relies on (read in pynetdicom 3.0.4): ``RequestHandler.
_create_association``, ``Association._run_reactor`` / ``_kill`` / ``_is_paused`` /
``_reactor_checkpoint`` / ``_serve_request``, ``DULServiceProvider._is_transport_event`` /
``_process_recv_primitive`` / ``_kill_thread``, the module ``pynetdicom._handlers`` (the
standard logging handlers ``Association._bind_defaults`` binds), ``DIMSEServiceProvider.send_msg``
(what :class:`PromptDIMSE` does instead, for a plain C-STORE response), ``DIMSEServiceProvider.
receive_primitive`` (creates a message only when none is pending) and ``DIMSEMessage.decode_msg``
(which :class:`SpoolingMessage` repeats, writing the File Meta Information itself), and for
:meth:`PromptDUL.send_at_once`: ``StateMachine.do_action`` (wrapped by :class:`LockedStateMachine`)
and ``.dul``, ``fsm.DT_1`` (what the DUL thread does for a P-DATA in Sta6), ``DULServiceProvider.
_send`` (fires ``EVT_PDU_SENT``), ``AssociationSocket.send`` (used as is: fires ``EVT_DATA_SENT``,
queues Evt17 when the write fails) and the DUL's ``event_queue``, ``to_provider_queue`` and
``state_machine.current_state``. tests/unit/test_reactor.py pins the source
of every pynetdicom function involved, so an upgrade that changes one fails loudly there
and this module is re-read before it is trusted again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from tempfile import gettempdir
from typing import Any, BinaryIO

from pydicom.filewriter import write_file_meta_info
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import _MESSAGE_TYPES, C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicom_node.dicom.dimse import encode_file_meta, encode_store_response
from dicom_node.dicom.pdu import encode_command_pdu
from dicom_node.dicom.storage import temporary_name

logger = logging.getLogger(__name__)

#: Longest wait of either thread: how late an unsignalled condition (DUL thread gone,
#: network time-out) may be noticed. Short enough for shutdown, long enough to cost no CPU.
WAIT_S = 0.05
#: pynetdicom's state "association established, data transfer".
ESTABLISHED = "Sta6"
#: What pynetdicom fires as its DUL thread writes a P-DATA: with a handler bound to any, the
#: association thread leaves the writing to it (:meth:`PromptDUL.send_at_once`).
SENDING_EVENTS = (evt.EVT_PDU_SENT, evt.EVT_DATA_SENT, evt.EVT_FSM_TRANSITION)


class SignallingQueue(queue.Queue[Any]):
    """A queue that calls ``signal`` after every ``put``: whoever waits for it wakes at once."""

    def __init__(self, signal: Callable[[], None]) -> None:
        super().__init__()
        self._signal = signal

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._signal()


class WakeUp:
    """A socket pair a thread blocked in ``select()`` can be woken through.

    Sockets rather than a pipe: once closed, a socket object refuses to write (its
    descriptor is -1), so a late wake-up can never land in a descriptor number the process
    has since given to something else. Closed when the association ends (``close``), or
    when garbage-collected at the latest.
    """

    def __init__(self) -> None:
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)

    def fileno(self) -> int:
        """For ``select()``."""
        return self._reader.fileno()

    def set(self) -> None:
        try:
            self._writer.send(b"\0")
        except OSError:  # full of wake-ups already (one is enough), or closed: nobody waits
            pass

    def clear(self) -> None:
        try:
            self._reader.recv(4096)
        except OSError:
            pass

    def close(self) -> None:
        self._writer.close()
        self._reader.close()


class PromptDUL(DULServiceProvider):
    """The DUL thread, blocking in ``select()`` while established instead of sleeping 1 ms a turn.

    It also lets the association thread write a P-DATA-TF itself (:meth:`send_at_once`).
    """

    wake: WakeUp
    #: Held by whoever writes to the socket: the DUL thread for each state machine action
    #: (:class:`LockedStateMachine`), the association thread in :meth:`send_at_once`.
    send_lock: threading.Lock

    def send_at_once(self, pdu: bytes) -> bool:
        """Write ``pdu``, an encoded P-DATA-TF, from the calling thread if that is safe; else False.

        Why: pynetdicom's way (``send_pdu``) queues a P-DATA primitive and wakes the DUL thread,
        which leaves ``select()``, runs the state machine (Sta6 + Evt9, DT-1, Sta6), encodes the
        PDU and writes it. A sender waits for our response before its next instance, so that
        hand-off from thread to thread is on the path of every instance received.

        Safe, checked under :attr:`send_lock` (which the DUL thread holds through every state
        machine action, so none is half done): pynetdicom's plain TCP socket (not TLS: an
        OpenSSL object must not be written by one thread while another reads it), established
        (Sta6, where DT-1 does nothing but write), nothing queued for or by the DUL thread
        (the PDU keeps its place after everything sent before it, and no event pending could
        change the state first), the DUL thread alive, and nobody bound to the events the DUL
        thread's way fires (``EVT_PDU_SENT`` with pynetdicom's PDU object, ``EVT_FSM_TRANSITION``
        for DT-1, ``EVT_DATA_SENT``, whose handlers expect to run on the DUL thread and would
        here run holding the lock). The lock is only tried: when the DUL thread holds it, the
        PDU is queued the usual way, behind whatever it is doing.

        The write is pynetdicom's own ``AssociationSocket.send``: when it fails it queues Evt17
        (transport closed) for the state machine, as when the DUL thread's write fails (and
        swallows the exception, as there); the DUL thread is woken to act on
        it (AA-4: the association is aborted, the sender sees the connection drop). Timers are
        untouched, as by DT-1: the idle timer restarts only when a PDU is received, and ARTIM
        does not run in Sta6. As with the DUL thread's write, a peer that stops reading blocks
        the writer (here the association thread) once the socket's buffers are full. One write
        of pynetdicom's does not take the lock: the A-ABORT its DUL loop sends when an action
        raises, after which the association is over anyway.
        """
        if self._observed_sending() or not self.send_lock.acquire(blocking=False):
            return False
        try:
            if not self._may_send_at_once():
                return False
            self.socket.send(pdu)  # type: ignore[union-attr]
        finally:
            self.send_lock.release()
        if not self.event_queue.empty():  # Evt17 from a failed write: the DUL thread acts on it now
            self.wake.set()
        return True

    def _observed_sending(self) -> bool:
        return any(self.assoc.get_handlers(event) for event in SENDING_EVENTS)

    def _may_send_at_once(self) -> bool:
        connection = self.socket
        return (
            type(connection) is WholeReadSocket  # pynetdicom's own socket class, as make_prompt found it
            and type(connection.socket) is socket.socket  # open, and plain TCP (ssl.SSLSocket is a subclass)
            and self.state_machine.current_state == ESTABLISHED
            and self._nothing_queued()
            and self.is_alive()
        )

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake.set()

    def _is_transport_event(self) -> bool:
        """pynetdicom calls this each turn when nothing was queued to send; first wait for work."""
        if self.state_machine.current_state == ESTABLISHED and self._nothing_queued():
            self._wait_for_peer_or_user()
            # Woken to send: queue its event now, or the next turn would start with a 1 ms sleep.
            if self._process_recv_primitive():
                return False
        return super()._is_transport_event()

    def _nothing_queued(self) -> bool:
        return self.event_queue.empty() and self.to_provider_queue.empty() and not self._kill_thread

    def _wait_for_peer_or_user(self) -> None:
        sock = getattr(self.socket, "socket", None)
        if sock is None or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return  # closed, or TLS bytes already decrypted: pynetdicom's own check handles it
        try:
            select.select([sock, self.wake], [], [], WAIT_S)
        except (OSError, ValueError):  # closed meanwhile: pynetdicom's own check reports it
            return
        self.wake.clear()


class LockedStateMachine(StateMachine):
    """pynetdicom's state machine, holding the DUL's send lock through each action.

    An action may take a primitive off the queue and then write its PDU (DT-1 and the like):
    holding the lock from one to the other is what lets :meth:`PromptDUL.send_at_once` tell,
    by an empty queue, that everything queued before has been written.
    """

    dul: PromptDUL

    def do_action(self, event: str) -> None:
        with self.dul.send_lock:
            super().do_action(event)


class WholeReadSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU into one buffer instead of 4 KiB at a time.

    pynetdicom's ``recv`` calls ``socket.recv(4096)`` in a loop and appends each piece: 128
    system calls and copies for a 512×512 CT slice. ``recv_into`` fills the buffer with as
    many bytes as the kernel holds per call: the same bytes, about a third of the CPU.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes``; fewer only if the peer closed the connection (as pynetdicom's)."""
        sock = self.socket
        assert sock is not None
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        read = 0
        while read < nr_bytes:
            got = sock.recv_into(view[read:], nr_bytes - read)
            if not got:
                break
            read += got
        view.release()
        del buffer[read:]
        return buffer


class SpoolingMessage(DIMSEMessage):
    """pynetdicom's incoming DIMSE message, writing a spooled data set's File Meta Information itself.

    ``decode_msg`` is pynetdicom's, line for line, except where the command set of a C-STORE
    request is complete and its data set is to be spooled to a file
    (``_config.STORE_RECV_CHUNKED_DATASET``): there the same File Meta Information is packed
    by :func:`~dicom_node.dicom.dimse.encode_file_meta` instead of built as a pydicom Dataset
    and written by ``write_file_meta_info``. After that call the message is pynetdicom's
    ``C_STORE_RQ`` (``decode_msg`` changes the class once the command is known), so the data
    set's fragments are written by pynetdicom's own code.

    Made with :func:`spooling_message`: ``DIMSEMessage.__init__`` sets up a message of its own
    class name only.
    """

    #: Where a C-STORE data set is spooled (:func:`_spool`); None: the system's temporary directory.
    spool_directory: Path | None

    def decode_msg(self, primitive: Any, assoc: Association | None = None) -> bool:
        if primitive.__class__ != P_DATA or primitive is None:
            return False
        for context_id, data in primitive.presentation_data_value_list:
            control_header_byte = data[0]
            if control_header_byte & 1:  # a command fragment
                self.encoded_command_set.write(data[1:])
                if control_header_byte & 2:  # the last one
                    self.context_id = context_id
                    self.command_set = decode(self.encoded_command_set, True, True)
                    self.__class__ = _MESSAGE_TYPES[self.command_set.CommandField][1]
                    if self.command_set.CommandDataSetType == 0x0101:
                        return True
                    if _config.STORE_RECV_CHUNKED_DATASET and isinstance(self, C_STORE_RQ):
                        _spool(self, context_id, assoc, self.spool_directory)  # self is a C_STORE_RQ now
            else:  # a data set fragment
                if self._data_set_file:
                    self._data_set_file.write(data[1:])
                    self._data_set_file.file.flush()
                else:
                    self.data_set.write(data[1:])
                if control_header_byte & 2 != 0:
                    return True
        return False


class SpoolFile:
    """A spool file as pynetdicom uses its ``NamedTemporaryFile``: ``write``, ``file.flush()``,
    ``close()`` and ``name``; anything else goes to the open file.

    Made here rather than by ``NamedTemporaryFile``, which creates files readable by their
    owner only: a stored instance is this file, linked into place, and gets the mode every
    other stored file gets (0666 less the process's umask: 0640 under the units' UMask=0027).

    A write that fails (the disk filled up while the data set arrived, after the disk guard
    last looked; a quota; an I/O error) must not end the association: pynetdicom would
    abort it, and the sender would see a broken connection instead of a status. So the
    failure is kept in :attr:`failure`, the partial file removed at once (which also gives
    its space back), and the rest of the data set read and dropped; the C-STORE handler
    then answers 0xA700 (:func:`spool_failure`).
    """

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        #: Why the data set could not be spooled; None while every write succeeded.
        self.failure: OSError | None = None
        self._file: BinaryIO | None = None
        try:
            self._file = open(path, "xb")  # noqa: SIM115 (closed by pynetdicom, or by discard_spools)
        except OSError as exc:  # no space for one more inode, say
            self.failure = exc

    @property
    def file(self) -> SpoolFile:
        """What pynetdicom flushes after each fragment: this object, so a failing flush is caught too."""
        return self

    @property
    def closed(self) -> bool:
        return self._file is None or self._file.closed

    def write(self, data: bytes) -> int:
        if self._file is not None:
            try:
                return self._file.write(data)
            except OSError as exc:
                self._fail(exc)
        return len(data)

    def flush(self) -> None:
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Close the file; an error here is not the sender's (pynetdicom closes it after our
        handler answered, when the instance is already durable or already refused)."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()

    def _fail(self, exc: OSError) -> None:
        """Keep the reason, drop the file and what it held; later writes are dropped too."""
        self.failure = exc
        spool, self._file = self._file, None
        with contextlib.suppress(OSError):  # closing flushes what is buffered, which fails again
            spool.close()  # type: ignore[union-attr]
        with contextlib.suppress(OSError):
            os.unlink(self.name)

    def __getattr__(self, name: str) -> Any:
        spool = self.__dict__.get("_file")  # not self._file: that would come back here before __init__ set it
        if spool is None:
            raise AttributeError(name)
        return getattr(spool, name)


def spool_failure(request: Any) -> OSError | None:
    """Why the data set of a C-STORE request could not be spooled (see :class:`SpoolFile`); None if it was."""
    return getattr(getattr(request, "_dataset_file", None), "failure", None)


def _spool(message: DIMSEMessage, context_id: int, assoc: Association | None, directory: Path | None) -> None:
    """Open the file the data set is written to, and write its preamble and File Meta.

    The file is made in ``directory``, the storage's ``.incoming``, named after its writer
    (:func:`~dicom_node.dicom.storage.temporary_name`), not in the system's temporary
    directory as pynetdicom makes it. Why: the stored file is this file, linked into place,
    which needs the same file system. Under systemd's ``PrivateTmp`` with the storage on its
    own volume, ``/tmp`` is elsewhere, and every instance was written twice (to ``/tmp``,
    then copied). And a crash leaves its file where the storage's sweep removes it, not in
    ``/tmp`` for ever (an abort, a time-out or a failed write: see
    :meth:`PromptDIMSE.discard_spools`). ``None`` (a bare :func:`make_prompt`, in tests):
    the system's temporary directory.
    """
    assert assoc is not None
    message._data_set_file = SpoolFile(Path(directory or gettempdir()) / temporary_name(".dcm"))
    message._data_set_path = Path(message._data_set_file.name)
    message._data_set_file.write(b"\x00" * 128)
    message._data_set_file.write(b"DICM")
    command = message.command_set
    values = {
        "sop_class_uid": command.AffectedSOPClassUID,
        "sop_instance_uid": command.AffectedSOPInstanceUID,
        "transfer_syntax": assoc._accepted_cx[context_id].transfer_syntax[0],
    }
    if not all(values.values()):  # pydicom refuses (raises) as it did: let it
        write_file_meta_info(message._data_set_file, create_file_meta(**values))  # type: ignore[arg-type]
        return
    message._data_set_file.write(
        encode_file_meta(
            sop_class_uid=values["sop_class_uid"],
            sop_instance_uid=values["sop_instance_uid"],
            transfer_syntax_uid=values["transfer_syntax"],
            implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
            implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
        )
    )


def spooling_message(spool_directory: Path | None = None) -> DIMSEMessage:
    """A new, still untyped, incoming message that decodes as :class:`SpoolingMessage`,
    spooling a C-STORE data set into ``spool_directory`` (see :func:`_spool`)."""
    message = DIMSEMessage()
    message.__class__ = SpoolingMessage
    message.spool_directory = spool_directory  # type: ignore[attr-defined]
    return message


def discard_spool(item: Any) -> None:
    """Close and remove the spool file of a message or request primitive, if it has one.

    Only ever its ``.incoming`` name: a stored instance was linked (or renamed) from it to its
    own name, which this never touches. A closed spool file was closed by pynetdicom after a
    handler that returned, which removed it then, or by a failed write, which removed it at
    once (:class:`SpoolFile`): it is left alone, so that a served instance, the usual case,
    costs no second close and unlink here.
    """
    spool = getattr(item, "_data_set_file", None) or getattr(item, "_dataset_file", None)
    if spool is None or spool.closed:
        return
    with contextlib.suppress(OSError):
        spool.close()
    with contextlib.suppress(OSError):
        os.unlink(spool.name)


class PromptDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending a plain C-STORE response without building a Dataset.

    Plain: a status only (no Error Comment, no Offending Element), nobody bound to
    ``EVT_DIMSE_SENT`` (whose handlers expect pynetdicom's message object), and a command set
    that fits one PDV. pynetdicom's ``send_msg`` sends exactly this: one P-DATA primitive
    holding one PDV, the last command fragment (control header 0x03), queued for the DUL.
    Here the P-DATA-TF that the DUL thread would make of it is written at once when
    :meth:`PromptDUL.send_at_once` finds that safe, and the primitive queued otherwise.
    """

    #: Where the data sets of C-STORE requests are spooled (:func:`_spool`).
    spool_directory: Path | None

    def receive_primitive(self, primitive: Any) -> None:
        """pynetdicom's, decoding into a :class:`SpoolingMessage` (it makes a message only
        when none is pending, so the one made here is the one it fills)."""
        if self.message is None:
            self.message = spooling_message(self.spool_directory)
        super().receive_primitive(primitive)

    def discard_spools(self) -> None:
        """Close and remove the spool files of requests that will never be served.

        pynetdicom removes a spool file only after the C-STORE handler returned. A data set
        cut off by an abort, a network time-out or a failed send to the peer, and a complete
        request still queued when the association ended, never get there: their partial files
        would stay in ``.incoming`` until the daily sweep (the hourly one spares a live
        process's files). (A failed write to the spool file itself removes it at once and is
        answered: :class:`SpoolFile`.) Called by the association thread once it is done.
        """
        pending = [self.message] if self.message is not None else []
        while not self.msg_queue.empty():
            _, queued = self.msg_queue.get(block=False)
            pending.append(queued)
        for item in pending:
            discard_spool(item)
        self.message = None

    def send_msg(self, primitive: Any, context_id: int) -> None:
        command = self._plain_store_response(primitive)
        if command is None:
            super().send_msg(primitive, context_id)
            return
        if self.dul.send_at_once(encode_command_pdu(context_id, command)):  # type: ignore[attr-defined]
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
        self.dul.send_pdu(pdata)

    def _plain_store_response(self, primitive: Any) -> bytes | None:
        """The encoded command set when :meth:`send_msg` may send it itself, else None."""
        if (
            type(primitive) is not C_STORE
            or primitive.MessageIDBeingRespondedTo is None
            or primitive.ErrorComment is not None
            or primitive.OffendingElement is not None
            or primitive.Status is None
            or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            return None
        try:
            command = encode_store_response(
                message_id_being_responded_to=primitive.MessageIDBeingRespondedTo,
                sop_class_uid=primitive.AffectedSOPClassUID,
                sop_instance_uid=primitive.AffectedSOPInstanceUID,
                status=primitive.Status,
            )
        except (UnicodeEncodeError, struct.error, AttributeError):
            return None
        limit = self.maximum_pdu_size
        return command if limit == 0 or len(command) <= limit - 6 else None


class PromptAssociation(Association):
    """The acceptor's association thread, blocking on an Event instead of sleeping 1 ms a turn."""

    attention: threading.Event

    def kill(self) -> None:
        self.attention.set()
        super().kill()
        if not self.dul.is_alive():  # nobody selects on it any more: give its descriptors back now
            self.dul.wake.close()  # type: ignore[attr-defined]

    def _run_reactor(self) -> None:
        """Serve requests until the association ends; then drop the spool files nobody will serve.

        Here, not in ``run_reactor``: pynetdicom's thread was given its ``run_reactor`` as
        target before :func:`make_prompt` changed the class, so an override there never runs.
        (A data set can only be spooled once the association is established, which is when
        pynetdicom calls this.)
        """
        try:
            self._serve_until_over()
        finally:
            self.dimse.discard_spools()  # type: ignore[attr-defined]

    def _serve_until_over(self) -> None:
        """Serve requests until the association ends, waking as soon as something is queued for us.

        The same checks as pynetdicom's loop, in the same order: a request to serve, a release
        or abort from the peer, the DUL thread gone, the network time-out. While waiting the
        loop counts as paused (pynetdicom's ``_is_paused``): it touches no queue until it has
        passed ``_reactor_checkpoint``, which pynetdicom's send_* methods close while they
        use the association from another thread.
        """
        self._is_paused = False
        while not self._kill:
            self._is_paused = True
            if self.dimse.msg_queue.empty():
                self.attention.wait(WAIT_S)
            # Cleared before the checks: whatever is queued after this wakes the next wait.
            self.attention.clear()
            self._reactor_checkpoint.wait()
            self._is_paused = False
            if not self._reactor_checkpoint.is_set():
                # A send_* call closed the checkpoint as we passed it, and may have read the
                # pause flag before we cleared it: leave the queues to it (pynetdicom's loop
                # has this gap; see dicom_node.dicom.requestor).
                continue
            if not self._turn():
                return

    def _turn(self) -> bool:
        """One look at everything; False once the association is over."""
        context_id, message = self.dimse.get_msg(block=False)
        if message:
            try:
                self._serve_request(message, context_id)  # type: ignore[arg-type]
            finally:
                # pynetdicom removes the spool only after a handler that returned; a request it
                # drops (invalid command set, a SOP class that is not storage, during a release)
                # or whose serving raised would leave its data set in .incoming.
                discard_spool(message)
        if self.is_established and self.acse.is_release_requested():
            self.acse.send_release(is_response=True)
            self.is_released, self.is_established = True, False
            evt.trigger(self, evt.EVT_RELEASED, {})
        elif self.acse.is_aborted():
            self.dul.receive_pdu(wait=False)  # takes the A-ABORT off the queue: EVT_ACSE_RECV fires
            self.is_aborted, self.is_established = True, False
            evt.trigger(self, evt.EVT_ABORTED, {})
        elif self.dul.is_alive() and not self.dul.idle_timer_expired():
            return True
        elif self.dul.is_alive():
            logger.warning("network time-out: no PDU from the peer in time, association ends")
            self._end_after_idle_timeout()
        self.kill()
        return False

    def _end_after_idle_timeout(self) -> None:
        if self.network_timeout_response == "A-RELEASE":
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self.release()
            self._is_paused = False
        else:
            self.abort()


#: The handlers pynetdicom binds to every association when ``_config.LOG_HANDLER_LEVEL`` is
#: "standard" (its default): they log at INFO and DEBUG on the ``pynetdicom`` logger.
STANDARD_LOG_HANDLERS: tuple[tuple[evt.NotificationEvent, Callable[[evt.Event], Any]], ...] = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def quiet_standard_logging(assoc: Association) -> None:
    """Unbind pynetdicom's logging handlers from ``assoc`` when their lines would be dropped.

    Why not ``_config.LOG_HANDLER_LEVEL = "none"``: that is process-wide, also silencing the
    associations we request and anyone debugging with the ``pynetdicom`` logger at DEBUG; this
    follows the logger's level at the moment each association is accepted.
    """
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in STANDARD_LOG_HANDLERS:
        assoc.unbind(event, handler)


def make_prompt(assoc: Association, spool_directory: Path | None = None) -> Association:
    """Turn a freshly created acceptor (its threads not started) into the event-driven kind,
    spooling received data sets into ``spool_directory`` (see :func:`_spool`)."""
    attention = threading.Event()
    wake = WakeUp()
    assoc.__class__ = PromptAssociation
    assoc.dul.__class__ = PromptDUL
    assoc.dimse.__class__ = PromptDIMSE
    assoc.dimse.spool_directory = spool_directory  # type: ignore[attr-defined]
    if type(assoc.dul.socket) is AssociationSocket:
        assoc.dul.socket.__class__ = WholeReadSocket
    assoc.attention = attention  # type: ignore[attr-defined]
    assoc.dul.wake = wake  # type: ignore[attr-defined]
    assoc.dul.send_lock = threading.Lock()  # type: ignore[attr-defined]
    assoc.dul.state_machine.__class__ = LockedStateMachine
    assoc.dimse.msg_queue = SignallingQueue(attention.set)
    assoc.dul.to_user_queue = SignallingQueue(attention.set)
    assoc.dul.to_provider_queue = SignallingQueue(wake.set)
    quiet_standard_logging(assoc)
    return assoc


class PromptRequestHandler(RequestHandler):
    """pynetdicom's handler of an incoming connection, making its association event-driven.

    ``AssociationServer(request_handler=...)`` is public; the association it builds comes
    from ``_create_association`` (private), changed here before its threads start.
    """

    def _create_association(self) -> Association:
        return make_prompt(super()._create_association(), getattr(self.server, "spool_directory", None))
