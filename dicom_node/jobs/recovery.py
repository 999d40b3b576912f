"""Take back at once what a dead process of this host held: running jobs, outbox claims, ticks.

Without this, a node restarted after ``kill -9`` (or an OOM kill, or a power cut) waits
for the dead process's job lease to expire (``jobs.lease_s``) before the study is
analysed again, with no process behind the ``running`` job meanwhile. A process that
starts can tell which owners of its own host and pid namespace are dead
(:func:`dicom_node.process.is_dead_here`) and reclaims their rows as the lease scan
would, only sooner. Owners it cannot judge keep the lease rule.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from sqlalchemy import select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.db.clock import database_now
from dicom_node.db.models import Delivery, DeliveryState, Job, JobState, TickLease
from dicom_node.jobs.queue import give_back, lost_jobs
from dicom_node.process import is_dead_here
from dicom_node.retry import RetryPolicy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reclaimed:
    """What was taken back from dead owners."""

    owners: list[str] = field(default_factory=list)
    requeued_jobs: list[int] = field(default_factory=list)
    dead_jobs: list[int] = field(default_factory=list)
    deliveries: int = 0
    ticks: int = 0

    def __bool__(self) -> bool:
        return bool(self.requeued_jobs or self.dead_jobs or self.deliveries or self.ticks)


def reclaim_dead_owners(
    session: Session, *, is_dead: Callable[[str], bool], policy: RetryPolicy, now: datetime
) -> Reclaimed:
    """Return the jobs of dead owners to the queue (or dead-letter them), and free their claims."""
    owners = set(session.execute(select(Job.lease_owner).where(Job.state == JobState.RUNNING)).scalars())
    owners |= set(session.execute(select(Delivery.claimed_by).where(Delivery.claimed_by.is_not(None))).scalars())
    owners |= set(session.execute(select(TickLease.owner).where(TickLease.owner.is_not(None))).scalars())
    dead = sorted(owner for owner in owners if owner and is_dead(owner))
    if not dead:
        return Reclaimed()
    requeued, given_up = _reclaim_jobs(session, dead, policy=policy, now=now)
    deliveries = session.execute(
        update(Delivery)
        .where(Delivery.claimed_by.in_(dead), Delivery.state == DeliveryState.PENDING)
        .values(claimed_by=None, claimed_until=None)
    ).rowcount
    ticks = session.execute(
        update(TickLease).where(TickLease.owner.in_(dead)).values(owner=None, until=None)
    ).rowcount
    return Reclaimed(dead, requeued, given_up, int(deliveries or 0), int(ticks or 0))


def _reclaim_jobs(
    session: Session, dead: list[str], *, policy: RetryPolicy, now: datetime
) -> tuple[list[int], list[int]]:
    requeued, given_up = [], []
    for lost in lost_jobs(session, Job.lease_owner.in_(dead)):
        reason = f"worker {lost.lease_owner} died (its process is gone from this host); reclaimed at once"
        state = give_back(session, lost, reason=reason, policy=policy, now=now)
        if state is not None:
            (given_up if state == JobState.DEAD else requeued).append(lost.id)
    return requeued, given_up


def reclaim_at_startup(sessions: sessionmaker[Session], *, owner: str, policy: RetryPolicy) -> Reclaimed:
    """Reclaim what dead processes of this host held, before this process claims anything."""
    try:
        with sessions.begin() as session:
            reclaimed = reclaim_dead_owners(
                session, is_dead=partial(is_dead_here, me=owner), policy=policy, now=database_now(session)
            )
    except SQLAlchemyError as exc:  # the lease scan does it later
        logger.warning(f"start-up reclaim skipped ({exc.__class__.__name__}); the lease scan will do it")
        return Reclaimed()
    if reclaimed:
        logger.warning(
            f"reclaimed from dead process(es) of this host {', '.join(reclaimed.owners)}: "
            f"jobs requeued {reclaimed.requeued_jobs or 'none'}, dead-lettered {reclaimed.dead_jobs or 'none'}, "
            f"{reclaimed.deliveries} delivery claim(s), {reclaimed.ticks} tick lease(s)",
            extra={"stage": "recovery"},
        )
    return reclaimed
