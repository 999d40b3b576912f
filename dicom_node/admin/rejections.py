"""Associations the listener turned away, as ``status`` and the status page show them.

A PACS whose AE title is missing from ``[[node.allowed_callers]]``, or that calls the node
by a wrong AE title, sends nothing and says little; the administrator's first question
is "did it even reach us?". The listener records each rejection in the audit trail (see
:meth:`dicom_node.ingest.scp.StorageSCP._record_rejection`); this groups the recent ones
by caller, address and reason. AE titles and IP addresses are not patient data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.db.models import AuditEvent

#: How far back ``status`` looks for rejected associations.
WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Rejection:
    """Associations from one caller and address, rejected for one reason, within the window."""

    calling_ae_title: str
    peer_address: str
    reason: str
    count: int
    first_at: datetime
    last_at: datetime
    #: Rejected as not allowed, but the configuration read now admits it (added since).
    allowed_now: bool = False


def recent_rejections(
    session: Session,
    *,
    now: datetime,
    window: timedelta = WINDOW,
    limit: int = 10,
    admits: Callable[[str, str], bool] | None = None,
) -> list[Rejection]:
    """The callers rejected since ``now - window``, the most recent first.

    ``admits`` (the allowed-callers check of the configuration read): a caller it admits
    now is marked, so that a caller added and reloaded stops reading as a problem.
    """
    last = func.max(AuditEvent.at)
    rows = session.execute(
        select(
            AuditEvent.calling_ae_title, AuditEvent.peer_address, AuditEvent.detail,
            func.count(), func.min(AuditEvent.at), last,
        )
        .where(AuditEvent.event == "rejected", AuditEvent.at >= now - window)
        .group_by(AuditEvent.calling_ae_title, AuditEvent.peer_address, AuditEvent.detail)
        .order_by(last.desc())
        .limit(limit)
    ).all()
    return [
        Rejection(
            calling or "", address or "", reason or "", int(count), first, latest,
            allowed_now=bool(admits and "not allowed" in (reason or "") and admits(calling or "", address or "")),
        )
        for calling, address, reason, count, first, latest in rows
    ]


def reload_hint(reload_pids: list[int]) -> str:
    """How to reload the running listener: the unit under systemd, else the pid SIGHUP goes to."""
    signal = f"`kill -HUP {' '.join(map(str, reload_pids))}`" if reload_pids else "SIGHUP to `dicom-node run` or `scp`"
    return f"`systemctl reload dicom-node-scp` (or `dicom-node`) under systemd, else {signal}"


def advice_for(rejection: Rejection, *, reload_pids: list[int] | None = None) -> str:
    """What to do about a rejection, by its reason (the wording of the listener's record)."""
    if rejection.allowed_now:
        return (
            "nothing if the node has reloaded since the last rejection: the configuration now allows "
            f"this caller; else reload: {reload_hint(reload_pids or [])}"
        )
    if "not allowed" in rejection.reason:
        return (
            f"if {rejection.calling_ae_title!r} at {rejection.peer_address} should send, add it to "
            f"[[node.allowed_callers]] and reload: {reload_hint(reload_pids or [])}"
        )
    if "called AE title" in rejection.reason:
        return "the caller addresses another AE title: set our [node] ae_title as the called AE title in that PACS"
    if "association limit" in rejection.reason:
        return "too many associations at once: raise [node] max_associations, or have the sender open fewer"
    return "see the log line 'association rejected' for details"
