"""C-ECHO a peer and say why it failed: no connection, a rejection (with its reason), an abort.

"Rejected, aborted or unreachable" leaves an administrator guessing between a firewall,
a wrong port and an AE title the peer does not know; each needs a different fix, and
pynetdicom tells them apart if asked (the connection event, the A-ASSOCIATE-RJ fields).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt

from dicom_node.dicom.contexts import VERIFICATION_CLASS
from dicom_node.dicom.requestor import keep_responses_for_senders


@dataclass(frozen=True)
class EchoResult:
    """The outcome of one C-ECHO: ``ok``, or why not and what to try."""

    ok: bool
    reason: str
    hint: str = ""


def verify(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str,
    timeout_s: float,
    tls_context: ssl.SSLContext | None = None,
) -> EchoResult:
    """Associate (over TLS when given a context), send one C-ECHO, release; every step bounded by ``timeout_s``."""
    seen: dict[str, Any] = {}

    def connected(_event: evt.Event) -> None:
        seen["connected"] = True

    def acse(event: evt.Event) -> None:
        seen["response"] = event.primitive

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context(VERIFICATION_CLASS)
    assoc = ae.associate(
        host,
        port,
        ae_title=called_ae,
        tls_args=(tls_context, host) if tls_context is not None else None,
        evt_handlers=[(evt.EVT_CONN_OPEN, connected), (evt.EVT_ACSE_RECV, acse)],
    )
    where = f"{called_ae}@{host}:{port}"
    if not assoc.is_established:
        return _why_not(assoc, seen, where, calling_ae, timeout_s)
    status = keep_responses_for_senders(assoc).send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        text = "no answer" if code is None else f"status 0x{int(code):04X}"
        return EchoResult(False, f"C-ECHO to {where} failed: {text}")
    return EchoResult(True, f"C-ECHO to {where}: success")


def _why_not(assoc: Any, seen: dict[str, Any], where: str, calling_ae: str, timeout_s: float) -> EchoResult:
    if not seen.get("connected"):
        return EchoResult(
            False,
            f"could not connect to {where.split('@', 1)[1]} within {timeout_s:g} s",
            "check the host and port, that the peer is running, and any firewall in between",
        )
    if assoc.is_rejected:
        response = seen.get("response")
        detail = ""
        if response is not None and hasattr(response, "reason_str"):
            detail = f": {response.result_str}, by the {response.source_str}: {response.reason_str}"
        return EchoResult(
            False,
            f"association rejected by {where}{detail}",
            f"the peer must know our calling AE title {calling_ae!r} (try --calling-ae with one it allows) "
            f"and answer to the called AE title {where.split('@', 1)[0]!r}",
        )
    if assoc.is_aborted and seen.get("response") is not None and not assoc.accepted_contexts:
        return EchoResult(False, f"{where} accepted the association but not Verification", "enable C-ECHO on the peer")
    if "response" not in seen:
        return EchoResult(
            False,
            f"{where} accepted the connection but did not answer the association request within {timeout_s:g} s",
            "is it a DICOM port? does it want TLS?",
        )
    return EchoResult(False, f"{where} aborted the association", "check the peer's log for why")
