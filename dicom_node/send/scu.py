"""A C-STORE SCU that negotiates only what it sends and checks every returned status.

A refused presentation context, a failure status, a missing response or a lost
association makes that item a failure, never "sent". A warning status (pynetdicom's
category: 0xB000, 0xB006, 0xB007 and the other warnings of PS3.4 and PS3.7) means the peer
stored the object; it is reported so the outbox can record it.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Callable
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
    ae = AE(ae_title=peer.calling_ae_title)
    # Every step is bounded, TCP connect included (pynetdicom's default waits as long as
    # the kernel does): the outbox lease relies on each attempt ending within a few time-outs.
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = peer.timeout_s
    for sop_class, syntax in sorted(set(pairs.values())):
        ae.add_requested_context(sop_class, proposed_transfer_syntaxes(syntax))
    tls_args = (peer.tls_context, peer.host) if peer.tls_context is not None else None
    assoc = keep_responses_for_senders(ae.associate(
        peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay)]
    ))
    if not assoc.is_established:
        where = f"{peer.ae_title}@{peer.host}:{peer.port}"  # what to check, named in the error
        if assoc.is_rejected:
            why = f"association rejected by {where}"
        elif assoc.rejected_contexts and not assoc.accepted_contexts:
            # pynetdicom aborts an association in which the peer accepted nothing.
            why = f"presentation context refused by the peer {where}"
        else:
            why = f"association aborted or peer unreachable ({where})"
        for item in items:
            emit(SendResult(item.key, False, None, why))
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
