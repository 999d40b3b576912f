"""A C-STORE SCU that negotiates only what it sends and checks every returned status.

A refused presentation context, a failure status, a missing response or a lost
association makes that item a failure, never "sent". Opening the association
(:func:`open_association`) is shared with ``dicom-node echo``: both say why it failed
in the same words (connection refused, timed out, rejected with the peer's reason,
aborted), which is what an administrator needs to choose between a stopped peer, a
firewall and an AE title the peer does not know. A warning status (pynetdicom's
category: 0xB000, 0xB006, 0xB007 and the other warnings of PS3.4 and PS3.7) means the peer
stored the object; it is reported so the outbox can record it.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, evt
from pynetdicom.association import Association

from dicom_node.dicom.requestor import keep_responses_for_senders
from dicom_node.dicom.statuses import SUCCESS, is_warning

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    """A destination as the SCU needs it."""

    name: str
    ae_title: str
    host: str
    port: int
    calling_ae_title: str
    timeout_s: float
    tls_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class SendItem:
    """One file to send; ``key`` lets the caller match results (e.g. a delivery id)."""

    key: int
    path: Path


@dataclass(frozen=True)
class SendResult:
    """What the peer answered for one item."""

    key: int
    stored: bool
    status: int | None
    detail: str

    @property
    def warning(self) -> bool:
        return is_warning(self.status)


def _nodelay(event: evt.Event) -> None:
    # Without TCP_NODELAY the small C-STORE command PDUs wait on Nagle's algorithm.
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class AssociationFailure:
    """Why no association was established, in one line that names the peer.

    ``kind`` is one of ``refused`` (nothing listens there), ``unreachable`` (another
    connection error: no route, unknown host), ``timed out`` (no TCP connection, or no
    answer to the request, in time), ``rejected`` (A-ASSOCIATE-RJ, with the peer's result,
    source and reason), ``contexts refused`` (accepted, but none of our presentation
    contexts) and ``aborted`` (the peer dropped the connection before answering).
    """

    kind: str
    reason: str


class _ConnectErrors(logging.Handler):
    """Collects pynetdicom's "TCP Initialisation Error" lines: the only place it reports the
    socket error of a failed connect (refused, timed out, no route). Matched to an
    association by its DUL thread, the thread that connects."""

    PREFIX = "TCP Initialisation Error: "

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: list[tuple[int | None, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.seen.append((record.thread, message.removeprefix(self.PREFIX)))

    def of(self, assoc: Association) -> str:
        ident = assoc.dul.ident
        return next((text for thread, text in self.seen if thread == ident), "")


@contextmanager
def _connect_errors() -> Iterator[_ConnectErrors]:
    """Capture pynetdicom's connect errors while the block runs."""
    logger_ = logging.getLogger("pynetdicom")
    errors = _ConnectErrors()
    logger_.addHandler(errors)
    try:
        yield errors
    finally:
        logger_.removeHandler(errors)


@contextmanager
def pynetdicom_quiet() -> Iterator[None]:
    """Keep pynetdicom's log lines out of ours while the block runs: ``dicom-node echo``
    prints one clear line instead of pynetdicom's raw ERROR lines."""
    logger_ = logging.getLogger("pynetdicom")
    propagate = logger_.propagate
    logger_.propagate = False
    try:
        yield
    finally:
        logger_.propagate = propagate


def _seen(seen: dict[str, object], key: str) -> Callable[[evt.Event], None]:
    def handler(event: evt.Event) -> None:
        seen[key] = getattr(event, "primitive", True)
        if key == "connected":
            _nodelay(event)

    return handler


def open_association(peer: Peer, contexts: Sequence[tuple[str, list[str]]]) -> Association | AssociationFailure:
    """Associate with ``peer`` proposing ``contexts`` (abstract syntax, transfer syntaxes).

    Every step is bounded by ``peer.timeout_s``, TCP connect included (pynetdicom's
    default waits as long as the kernel does): the outbox lease relies on each attempt
    ending within a few time-outs. Returns the established association, or why not.
    """
    ae = AE(ae_title=peer.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = peer.timeout_s
    for abstract_syntax, transfer_syntaxes in contexts:
        ae.add_requested_context(abstract_syntax, transfer_syntaxes)
    tls_args = (peer.tls_context, peer.host) if peer.tls_context is not None else None
    seen: dict[str, object] = {}
    handlers = [(evt.EVT_CONN_OPEN, _seen(seen, "connected")), (evt.EVT_ACSE_RECV, _seen(seen, "response"))]
    started = time.monotonic()
    with _connect_errors() as errors:
        try:
            assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args, evt_handlers=handlers)
        except OSError as exc:  # the host name does not resolve: pynetdicom looks it up before connecting
            where = f"{peer.ae_title}@{peer.host}:{peer.port}"
            return AssociationFailure("unreachable", f"cannot connect to {where}: {exc.strerror or exc}")
    if assoc.is_established:
        return keep_responses_for_senders(assoc)
    elapsed = time.monotonic() - started
    return _failure(peer, assoc, seen, errors.of(assoc), timed_out=elapsed >= peer.timeout_s * 0.9)


def _failure(peer: Peer, assoc: Association, seen: dict[str, object], error: str, *, timed_out: bool) -> AssociationFailure:
    where = f"{peer.ae_title}@{peer.host}:{peer.port}"
    if "connected" not in seen:
        if "refused" in error.lower():
            return AssociationFailure("refused", f"connection refused by {where}: is the peer running, on that host and port?")
        if "timed out" in error.lower() or (timed_out and not error):
            return AssociationFailure(
                "timed out", f"no connection to {where} within {peer.timeout_s:g} s (timed out): check the host, the port and any firewall"
            )
        return AssociationFailure("unreachable", f"cannot connect to {where}: {error or 'no connection'}")
    response = seen.get("response")
    if assoc.is_rejected:
        detail = ""
        if response is not None and hasattr(response, "reason_str"):
            detail = f": {response.result_str}, by the {response.source_str}: {response.reason_str}"
        return AssociationFailure("rejected", f"association rejected by {where}{detail}")
    if response is not None and assoc.rejected_contexts and not assoc.accepted_contexts:
        # pynetdicom aborts an association in which the peer accepted nothing.
        return AssociationFailure("contexts refused", f"presentation context refused by the peer {where}")
    if response is None and timed_out:
        return AssociationFailure(
            "timed out",
            f"{where} accepted the connection but did not answer the association request within {peer.timeout_s:g} s (timed out)",
        )
    return AssociationFailure("aborted", f"association aborted by {where} before it was accepted")


def _syntax_pair(item: SendItem) -> tuple[str, str]:
    meta = dcmread(item.path, stop_before_pixels=True, specific_tags=[]).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)


def _accepted(assoc: Association, sop_class: str) -> bool:
    return any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts)


def _one(assoc: Association, item: SendItem) -> SendResult:
    # A decoded data set, not a path: pynetdicom then encodes it in whichever transfer
    # syntax the peer accepted, whatever its process-wide STORE_SEND_CHUNKED_DATASET says.
    status = assoc.send_c_store(dcmread(item.path))
    code: Any = getattr(status, "Status", None)
    if code is None:
        return SendResult(item.key, False, None, "no response (association lost or timed out)")
    code = int(code)
    comment = str(getattr(status, "ErrorComment", "") or "")
    if code == SUCCESS:
        return SendResult(item.key, True, code, "success")
    if is_warning(code):
        return SendResult(item.key, True, code, f"warning 0x{code:04X} {comment}".strip())
    return SendResult(item.key, False, code, f"failure 0x{code:04X} {comment}".strip())


def proposed_transfer_syntaxes(syntax: str) -> list[str]:
    """What the SCU proposes for an object stored in ``syntax`` (the conformance statement
    renders its SCU table from this too).

    Implicit VR Little Endian is the default every peer supports (PS3.5 10.1); pynetdicom
    re-encodes an uncompressed data set into whichever of the two the peer accepts.
    """
    if syntax == ExplicitVRLittleEndian:
        return [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    return [syntax]


def send(
    peer: Peer, items: list[SendItem], on_result: Callable[[SendResult], None] | None = None
) -> list[SendResult]:
    """Send ``items`` over one association; one result per item, in order.

    ``on_result`` is called with each result as soon as the peer answered (to record it
    at once). A failure to send one item (an unreadable file, a lost association) fails
    that item, not the ones already stored.
    """
    results: list[SendResult] = []

    def emit(result: SendResult) -> None:
        results.append(result)
        if on_result is not None:
            on_result(result)

    if not items:
        return results
    pairs: dict[int, tuple[str, str]] = {}
    for item in items:
        try:
            pairs[item.key] = _syntax_pair(item)
        except Exception as exc:  # unreadable file: that item fails, the others go
            emit(SendResult(item.key, False, None, f"cannot read the object: {exc.__class__.__name__}"))
    items = [item for item in items if item.key in pairs]
    if not items:
        return results
    contexts = [(sop_class, proposed_transfer_syntaxes(syntax)) for sop_class, syntax in sorted(set(pairs.values()))]
    assoc = open_association(peer, contexts)
    if isinstance(assoc, AssociationFailure):  # the reason names the peer: what to check
        for item in items:
            emit(SendResult(item.key, False, None, assoc.reason))
        return results
    try:
        for item in items:
            if not assoc.is_established:
                emit(SendResult(item.key, False, None, "association lost before sending"))
            elif not _accepted(assoc, pairs[item.key][0]):
                emit(SendResult(item.key, False, None, "presentation context refused by the peer"))
            else:
                try:
                    emit(_one(assoc, item))
                except Exception as exc:  # e.g. the peer aborted between the check and the send
                    emit(SendResult(item.key, False, None, f"send failed: {exc.__class__.__name__}"))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
