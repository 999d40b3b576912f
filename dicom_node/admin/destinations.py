"""How each destination is doing: what waits for it, what it took last, its latest failure."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dicom_node.config import Destination
from dicom_node.db.models import Delivery, DeliveryState


@dataclass(frozen=True)
class DestinationHealth:
    """One destination, configured or only left behind in the outbox."""

    name: str
    address: str | None  # AE@host:port, None when no longer configured
    by_state: dict[str, int]
    last_sent_at: datetime | None
    last_error: str | None
    next_attempt_at: datetime | None

    @property
    def verdict(self) -> str:
        """A one-word health: ``ok``, ``retrying``, ``failing`` (dead letters), ``idle`` or ``not configured``."""
        if self.address is None:
            return "not configured"
        if self.by_state.get("dead"):
            return "failing"
        if self.by_state.get("pending") and self.last_error:
            return "retrying"
        return "ok" if self.by_state.get("sent") else "idle"


def destination_health(session: Session, destinations: list[Destination]) -> list[DestinationHealth]:
    """Every configured destination, and every name the outbox still holds rows for."""
    counts: dict[str, dict[str, int]] = {}
    for name, state, n in session.execute(
        select(Delivery.destination, Delivery.state, func.count()).group_by(Delivery.destination, Delivery.state)
    ).all():
        counts.setdefault(name, {})[str(getattr(state, "value", state))] = int(n)
    last_sent = dict(
        session.execute(select(Delivery.destination, func.max(Delivery.sent_at)).group_by(Delivery.destination)).all()
    )
    # The latest failed row of each destination: one per name, however long the backlog.
    latest = (
        select(func.max(Delivery.id))
        .where(Delivery.last_error.is_not(None), Delivery.state.in_((DeliveryState.PENDING, DeliveryState.DEAD)))
        .group_by(Delivery.destination)
    )
    failing = {
        row.destination: row
        for row in session.execute(
            select(Delivery.destination, Delivery.last_error, Delivery.next_attempt_at, Delivery.state).where(
                Delivery.id.in_(latest)
            )
        ).all()
    }
    configured = {d.name: f"{d.ae_title}@{d.host}:{d.port}" for d in destinations}
    result = []
    for name in [d.name for d in destinations] + sorted(set(counts) - set(configured)):
        error = failing.get(name)
        pending = error is not None and str(getattr(error.state, "value", error.state)) == "pending"
        result.append(
            DestinationHealth(
                name=name,
                address=configured.get(name),
                by_state=counts.get(name, {}),
                last_sent_at=last_sent.get(name),
                last_error=error.last_error if error is not None else None,
                next_attempt_at=error.next_attempt_at if pending else None,
            )
        )
    return result
