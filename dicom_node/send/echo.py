"""C-ECHO a peer through the sender's own association code, and say why it failed.

"Rejected, aborted or unreachable" leaves an administrator guessing between a firewall,
a wrong port and an AE title the peer does not know; each needs a different fix. The
echo opens its association with :func:`dicom_node.send.scu.open_association`, as every
delivery does, so a successful echo means the sender gets as far, and a failed one is
told in the words a failed delivery uses, with the next step for the one at the keyboard.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from dicom_node.dicom.contexts import VERIFICATION_CLASS, VERIFICATION_TRANSFER_SYNTAXES
from dicom_node.send.scu import AssociationFailure, Peer, open_association, pynetdicom_quiet


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: ``ok``, or why not (``kind`` as in :class:`AssociationFailure`) and what to try."""

    ok: bool
    reason: str
    hint: str = ""
    kind: str = ""


def _hint(failure: AssociationFailure, peer: Peer) -> str:
    if failure.kind == "rejected":
        return (
            f"the peer must know our calling AE title {peer.calling_ae_title!r} (try --calling-ae with one it allows) "
            f"and answer to the called AE title {peer.ae_title!r}"
        )
    if failure.kind == "contexts refused":
        return "enable Verification (C-ECHO) on the peer"
    if failure.kind == "timed out" and "accepted the connection" in failure.reason:
        return "is it a DICOM port? does it want TLS?"
    if failure.kind == "aborted":
        return "check the peer's log for why (a TLS port drops a plain connection, and the other way round)"
    return ""


def verify(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    timeout_s: float,
    tls_context: ssl.SSLContext | None = None,
) -> EchoResult:
    """Associate (over TLS when given a context), send one C-ECHO, release; every step bounded by ``timeout_s``.

    pynetdicom's own log lines are kept out of the output: the result says it all.
    """
    peer = Peer(
        name="echo", ae_title=called_ae, host=host, port=port, calling_ae_title=calling_ae,
        timeout_s=timeout_s, tls_context=tls_context,
    )
    where = f"{called_ae}@{host}:{port}"
    with pynetdicom_quiet():
        assoc = open_association(peer, [(VERIFICATION_CLASS, list(VERIFICATION_TRANSFER_SYNTAXES))])
        if isinstance(assoc, AssociationFailure):
            return EchoResult(False, assoc.reason, _hint(assoc, peer), assoc.kind)
        status = assoc.send_c_echo()
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        text = f"no answer within {timeout_s:g} s (timed out)" if code is None else f"status 0x{int(code):04X}"
        return EchoResult(False, f"C-ECHO to {where} failed: {text}", kind="failed")
    return EchoResult(True, f"C-ECHO to {where}: success")
