"""The outbox: one row per (object, destination), served with retries and a dead letter.

Each destination is served on its own thread, so a destination that is down (or slow
to time out) never delays another. A row is marked sent only after the peer returned
a success or warning status for that very object.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.db.clock import Clock, database_now
from dicom_node.db.dialect import upsert_insert
from dicom_node.db.models import Delivery, DeliveryState, Job, OutputObject, Study
from dicom_node.retry import RetryPolicy
from dicom_node.send.scu import Peer, SendItem, SendResult, send

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WrittenObject:
    """An object a job created and wrote under the storage root: what the outbox records and sends."""

    kind: str  # seg | sr | key_images
    sop_class_uid: str
    sop_instance_uid: str
    path: str


@dataclass(frozen=True)
class DueDelivery:
    """A delivery ready to be attempted."""

    id: int
    destination: str
    path: str
    attempts: int
    sop_instance_uid: str
    study_instance_uid: str


def add_deliveries(session: Session, *, output_id: int, destinations: list[str], now: datetime) -> None:
    """Queue ``output_id`` for each destination; an existing row is left as it is (idempotent)."""
    if not destinations:
        return
    session.execute(
        upsert_insert(session, Delivery)
        .values(
            [
                {
                    "output_id": output_id,
                    "destination": name,
                    "state": DeliveryState.PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for name in destinations
            ]
        )
        .on_conflict_do_nothing(index_elements=["output_id", "destination"])
    )


def record_outputs(
    session: Session,
    *,
    job_id: int,
    objects: Iterable[WrittenObject],
    destinations: dict[str, list[str]],
    now: datetime,
) -> None:
    """Insert a job's objects and one outbox row per (object, destination that wants its kind).

    Run in the transaction that marks the job succeeded, so results and their deliveries
    are recorded together or not at all.

    A re-run of the same job (``jobs retry --rerun``) creates objects with the same UIDs:
    their rows are reused and their deliveries queued again, so the destinations get the
    new results in place of the old ones, never a second copy.
    """
    for obj in objects:
        existing = session.scalars(
            select(OutputObject).where(OutputObject.sop_instance_uid == obj.sop_instance_uid)
        ).one_or_none()
        if existing is None:
            existing = OutputObject(
                job_id=job_id,
                kind=obj.kind,
                sop_class_uid=obj.sop_class_uid,
                sop_instance_uid=obj.sop_instance_uid,
                path=obj.path,
                created_at=now,
            )
            session.add(existing)
            session.flush()
            rerun = False
        else:
            existing.job_id, existing.path = job_id, obj.path
            rerun = True
        wanted = [name for name, kinds in destinations.items() if obj.kind in kinds]
        add_deliveries(session, output_id=existing.id, destinations=wanted, now=now)
        if rerun and wanted:
            _requeue(session, output_id=existing.id, destinations=wanted, now=now)


def claim_due(
    session: Session, *, owner: str, now: datetime, lease: timedelta, destinations: list[str], limit: int = 20
) -> dict[str, list[DueDelivery]]:
    """Claim pending deliveries that are due (and not claimed by a live worker), by destination.

    The claim makes several workers share one outbox without sending an object twice: on
    PostgreSQL the rows are locked with SKIP LOCKED while they are claimed; a claim that
    outlives its worker (``lease``) lets another worker retry the row.
    """
    ids = session.execute(
        select(Delivery.id)
        .where(
            Delivery.state == DeliveryState.PENDING,
            Delivery.next_attempt_at <= now,
            Delivery.destination.in_(destinations),
            (Delivery.claimed_until.is_(None)) | (Delivery.claimed_until < now),
        )
        .order_by(Delivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).scalars().all()
    if not ids:
        return {}
    session.execute(update(Delivery).where(Delivery.id.in_(ids)).values(claimed_by=owner, claimed_until=now + lease))
    rows = session.execute(
        select(
            Delivery.id,
            Delivery.destination,
            Delivery.attempts,
            OutputObject.path,
            OutputObject.sop_instance_uid,
            Study.study_instance_uid,
        )
        .join(OutputObject, OutputObject.id == Delivery.output_id)
        .join(Job, Job.id == OutputObject.job_id)
        .join(Study, Study.id == Job.study_id)
        .where(Delivery.id.in_(ids))
        .order_by(Delivery.id)
    ).all()
    grouped: dict[str, list[DueDelivery]] = {}
    for row in rows:
        grouped.setdefault(row.destination, []).append(
            DueDelivery(row.id, row.destination, row.path, row.attempts, row.sop_instance_uid, row.study_instance_uid)
        )
    return grouped


def record_result(
    session: Session, delivery: DueDelivery, result: SendResult, *, owner: str, policy: RetryPolicy, now: datetime
) -> DeliveryState | None:
    """Store the outcome of one attempt and return the delivery's new state.

    None when the row is no longer ours: the claim lapsed and another worker took the
    delivery over (or an operator requeued it); that worker's outcome is the one recorded.
    """
    attempts = delivery.attempts + 1
    status = f"0x{result.status:04X}" if result.status is not None else None
    if result.stored:
        values = {"state": DeliveryState.SENT, "sent_at": now, "last_error": result.detail if result.warning else None}
    elif policy.gives_up_after(attempts):
        values = {"state": DeliveryState.DEAD, "last_error": result.detail}
    else:
        values = {"next_attempt_at": now + policy.delay_after(attempts), "last_error": result.detail}
    recorded = session.execute(
        update(Delivery)
        .where(Delivery.id == delivery.id, Delivery.state == DeliveryState.PENDING, Delivery.claimed_by == owner)
        .values(
            attempts=attempts, last_status=status or result.detail[:64], claimed_by=None, claimed_until=None, **values
        )
    )
    if not recorded.rowcount:
        return None
    return values.get("state", DeliveryState.PENDING)  # type: ignore[return-value]


def renew_claims(session: Session, *, owner: str, destination: str, until: datetime) -> None:
    """Extend ``owner``'s claims on the rows of ``destination`` it has not answered yet.

    A claim only has to outlive the next attempt, not the whole batch: the sender renews
    it after every answer, so a worker killed mid-batch releases its rows within one lease.
    """
    session.execute(
        update(Delivery)
        .where(Delivery.claimed_by == owner, Delivery.destination == destination, Delivery.state == DeliveryState.PENDING)
        .values(claimed_until=until)
    )


def serve_outbox(
    sessions: sessionmaker[Session],
    *,
    peers: dict[str, Peer],
    storage_root: Path,
    policy: RetryPolicy,
    clock: Clock = database_now,
    owner: str,
    lease: timedelta,
    audit: AuditLog | None = None,
) -> dict[str, dict[str, int]]:
    """Claim and attempt every due delivery, each destination on its own thread.

    Returns the resulting states counted per destination. Deliveries for a destination
    that is no longer configured are left alone (and logged). ``lease`` must outlive one
    attempt (association set-up plus one C-STORE); claims are renewed after each answer.
    ``clock`` times claims and retries (the database's; tests pass a fixed one).
    """
    _warn_of_unconfigured(sessions, peers)
    with sessions.begin() as session:
        work = claim_due(session, owner=owner, now=clock(session), lease=lease, destinations=list(peers))
    if not work:
        return {}
    run = _OutboxRun(sessions, storage_root, policy, clock, owner, lease, audit)

    def serve(name: str) -> dict[str, int]:
        return _DestinationBatch(run, name, peers[name], work[name]).serve()

    with ThreadPoolExecutor(max_workers=len(work), thread_name_prefix="outbox") as pool:
        return dict(zip(work, pool.map(serve, work), strict=True))


def _warn_of_unconfigured(sessions: sessionmaker[Session], peers: dict[str, Peer]) -> None:
    """Log each destination that has pending deliveries but is not configured: they wait, and nothing else says so."""
    with sessions() as session:
        waiting = session.execute(
            select(Delivery.destination)
            .where(Delivery.state == DeliveryState.PENDING, Delivery.destination.not_in(list(peers)))
            .distinct()
        ).scalars().all()
    for name in waiting:
        logger.warning("deliveries wait for a destination that is not configured", extra={"destination": name})


@dataclass(frozen=True)
class _OutboxRun:
    """What the destinations' threads of one :func:`serve_outbox` call share."""

    sessions: sessionmaker[Session]
    storage_root: Path
    policy: RetryPolicy
    clock: Clock
    owner: str
    lease: timedelta
    audit: AuditLog | None

    def commit(self, delivery: DueDelivery, result: SendResult) -> tuple[DeliveryState | None, datetime]:
        """Record one answer and renew the claims on the destination's other rows, in one transaction.

        Returns the new state (None: the claim was lost) and the time it was recorded at.
        """
        with self.sessions.begin() as session:
            now = self.clock(session)
            state = record_result(session, delivery, result, owner=self.owner, policy=self.policy, now=now)
            renew_claims(session, owner=self.owner, destination=delivery.destination, until=now + self.lease)
        return state, now


@dataclass
class _DestinationBatch:
    """One destination's claimed deliveries, sent over one association on its own thread."""

    run: _OutboxRun
    name: str
    peer: Peer
    items: list[DueDelivery]
    unanswered: dict[int, DueDelivery] = field(init=False)
    counts: dict[str, int] = field(default_factory=dict)
    #: Study UID -> SOP instance UIDs the peer stored, for the audit.
    sent: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.unanswered = {d.id: d for d in self.items}

    def serve(self) -> dict[str, int]:
        """Send every item and record each answer; the resulting states counted."""
        try:
            send(self.peer, [SendItem(d.id, self.run.storage_root / d.path) for d in self.items], on_result=self.record)
        except Exception as exc:  # a broken peer must not kill the tick: what was not answered failed
            logger.exception("sending failed", extra={"destination": self.name})
            for key in list(self.unanswered):
                self.record(SendResult(key, False, None, f"send error: {exc.__class__.__name__}"))
        logger.info(f"outbox served: {self.counts}", extra={"destination": self.name, "count": len(self.items)})
        self._audit_delivered()
        return self.counts

    def record(self, result: SendResult) -> None:
        """Commit one answer as it arrives.

        A failure later in the batch then cannot make an object that the peer stored
        look unsent (and so be sent again).
        """
        delivery = self.unanswered.pop(result.key)
        state, now = self.run.commit(delivery, result)
        if state is None:
            logger.warning(
                "delivery claim lost to another worker; this attempt is not recorded",
                extra={"destination": self.name, "sop_instance_uid": delivery.sop_instance_uid},
            )
            self.counts["claim_lost"] = self.counts.get("claim_lost", 0) + 1
            return
        self.counts[state.value] = self.counts.get(state.value, 0) + 1
        if result.stored:
            self.sent.setdefault(delivery.study_instance_uid, []).append(delivery.sop_instance_uid)
        else:
            self._warn_of_failure(delivery, result, state, now)

    def _warn_of_failure(self, delivery: DueDelivery, result: SendResult, state: DeliveryState, now: datetime) -> None:
        """Log a failed attempt with what comes next: the time of the next try, or that the outbox gave up."""
        attempts = delivery.attempts + 1
        if state == DeliveryState.DEAD:
            then = f"given up after {attempts} attempts (`dicom-node resend` sends it again)"
        else:
            then = f"next try at {now + self.run.policy.delay_after(attempts):%Y-%m-%d %H:%M:%S} UTC"
        peer = self.peer
        logger.warning(
            f"delivery to {self.name} ({peer.ae_title}@{peer.host}:{peer.port}) failed: {result.detail}; {then}",
            extra={"destination": self.name, "sop_instance_uid": delivery.sop_instance_uid},
        )

    def _audit_delivered(self) -> None:
        """One audit event per study with the objects the peer stored."""
        if self.run.audit is None:
            return
        for study_uid, sop_uids in self.sent.items():
            self.run.audit.record(
                "delivered", study_instance_uid=study_uid, destination=self.name, count=len(sop_uids),
                detail=json.dumps(sop_uids),
            )


@dataclass(frozen=True)
class DeliveryView:
    """One delivery as ``jobs show`` lists it."""

    id: int
    kind: str
    sop_instance_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    last_status: str | None
    last_error: str | None
    next_attempt_at: datetime | None = None
    resends: int = 0
    resent_at: datetime | None = None


def deliveries_of_job(session: Session, job_id: int) -> list[DeliveryView]:
    rows = session.execute(
        select(Delivery, OutputObject.kind, OutputObject.sop_instance_uid)
        .join(OutputObject, OutputObject.id == Delivery.output_id)
        .where(OutputObject.job_id == job_id)
        .order_by(Delivery.destination, OutputObject.id)
    ).all()
    return [
        DeliveryView(
            d.id, kind, uid, d.destination, d.state, d.attempts, d.last_status, d.last_error, d.next_attempt_at,
            d.resends, d.resent_at,
        )
        for d, kind, uid in rows
    ]


def requeue_job_outputs(
    session: Session, *, job_id: int, destinations: dict[str, list[str]], now: datetime
) -> int:
    """Send a job's objects again to ``destinations`` (name -> wanted kinds); returns the row count.

    The objects keep their UIDs, so the destination replaces what it has: a resend never
    creates a second copy.
    """
    outputs = session.execute(select(OutputObject.id, OutputObject.kind).where(OutputObject.job_id == job_id)).all()
    count = 0
    for output_id, kind in outputs:
        wanted = [name for name, kinds in destinations.items() if kind in kinds]
        add_deliveries(session, output_id=output_id, destinations=wanted, now=now)
        if wanted:
            count += _requeue(session, output_id=output_id, destinations=wanted, now=now)
    return count


def _requeue(session: Session, *, output_id: int, destinations: list[str], now: datetime) -> int:
    """Make one object's deliveries to ``destinations`` pending again, from a first attempt.

    A row that was already sent or given up counts as resent (a row just added by this
    resend, never tried, does not).
    """
    match = (Delivery.output_id == output_id, Delivery.destination.in_(destinations))
    session.execute(
        update(Delivery)
        .where(*match, Delivery.state.in_([DeliveryState.SENT, DeliveryState.DEAD, DeliveryState.CANCELLED]))
        .values(resends=Delivery.resends + 1, resent_at=now)
    )
    return int(
        session.execute(
            update(Delivery)
            .where(*match)
            .values(state=DeliveryState.PENDING, attempts=0, next_attempt_at=now, last_error=None)
        ).rowcount
    )


def cancel_pending(session: Session, *, destination: str, now: datetime) -> int:
    """Cancel every pending delivery to ``destination``; returns how many.

    For a destination removed from the configuration: its rows would otherwise wait
    forever (the outbox serves only configured names) and show in ``status``. A claim
    held by a sender right now loses to this: the sender's record finds the row no
    longer pending and records nothing.
    """
    return int(
        session.execute(
            update(Delivery)
            .where(Delivery.destination == destination, Delivery.state == DeliveryState.PENDING)
            .values(
                state=DeliveryState.CANCELLED,
                claimed_by=None,
                claimed_until=None,
                last_error=f"cancelled by an operator at {now:%Y-%m-%d %H:%M:%S} UTC",
            )
        ).rowcount
        or 0
    )
