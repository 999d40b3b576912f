"""SQLAlchemy models of what the node holds.

Only UIDs and technical attributes are stored: no patient names, IDs or birth dates,
so the database can be inspected and backed up without handling patient data.
Jobs and deliveries (later stages) reference :class:`Study` by ``id`` and the study's
``generation``, which grows each time a completed study is reopened by late instances.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import BigInteger, Boolean, DateTime, Enum, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID_LENGTH = 64

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC now: every timestamp in the DB is naive UTC, the same on SQLite and PostgreSQL."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base with a naming convention, so migrations name constraints stably."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class StudyState(StrEnum):
    """Where a study is in its receive life cycle."""

    RECEIVING = "receiving"  # instances are arriving; the quiet period has not passed yet
    COMPLETE = "complete"  # quiet period (or the forced cap) passed; ready for analysis
    REOPENED = "reopened"  # instances arrived after completion; will complete again


class SeriesState(StrEnum):
    """Where a series is in its receive life cycle."""

    RECEIVING = "receiving"  # instances are arriving
    COMPLETE = "complete"  # no new instance for the quiet period


def _state_enum(enum: type[StrEnum], name: str) -> Enum:
    # Stored as plain strings with a CHECK constraint: portable, and readable in psql.
    return Enum(
        enum,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        values_callable=lambda members: [m.value for m in members],
    )


class Study(Base):
    """A study, keyed by its Study Instance UID."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    state: Mapped[StudyState] = mapped_column(
        _state_enum(StudyState, "study_state"), index=True, default=StudyState.RECEIVING
    )
    generation: Mapped[int] = mapped_column(Integer, default=1)
    opened_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)
    completion_reason: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    #: Set by retention when it deletes the results before the instances (see retention.py).
    results_delivered_at: Mapped[datetime | None] = mapped_column(DateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series of a study, keyed by its Series Instance UID."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    # Indexed: the completion scan looks for the few series still receiving among all.
    state: Mapped[SeriesState] = mapped_column(
        _state_enum(SeriesState, "series_state"), index=True, default=SeriesState.RECEIVING
    )
    first_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """A stored SOP instance; ``path`` is relative to the storage root."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae_title: Mapped[str] = mapped_column(String(16))
    study_generation: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class JobState(StrEnum):
    """Where an analysis job is; the database is the queue."""

    QUEUED = "queued"  # waiting for a worker (or for its next attempt, see next_attempt_at)
    RUNNING = "running"  # claimed by a worker under a lease
    SUCCEEDED = "succeeded"  # results built and queued for delivery
    DEAD = "dead"  # gave up after the last attempt; last_error says why
    CANCELLED = "cancelled"  # cancelled by an operator
    SUPERSEDED = "superseded"  # the study was reopened; a newer job replaces this one
    SKIPPED = "skipped"  # not applicable (too little coverage, not a head); reason says why; not a failure


class Job(Base):
    """One analysis of one study generation by one model version.

    The unique constraint makes enqueueing idempotent: a completion scan that runs twice,
    or in two processes, cannot create two jobs for the same thing.
    """

    __tablename__ = "job"
    __table_args__ = (UniqueConstraint("study_id", "study_generation", "model_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    study_generation: Mapped[int] = mapped_column(Integer)
    model_key: Mapped[str] = mapped_column(String(128))
    state: Mapped[JobState] = mapped_column(_state_enum(JobState, "job_state"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)  # JSON: call, probability, lesions
    #: What a succeeded job's results lack and why (an object that could not be built), one per line.
    warnings: Mapped[str | None] = mapped_column(Text)
    #: Why a skipped job was not analysed ("1 slice covering 5 mm; at least 60 mm needed").
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: How often an operator queued the job again (``jobs retry``); its attempts start over each time.
    retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: When an operator last queued it again: ``created_at`` stays the first queueing.
    retried_at: Mapped[datetime | None] = mapped_column(DateTime)

    study: Mapped[Study] = relationship()


class OutputObject(Base):
    """A DICOM object a job produced (SEG, SR, key image), stored under the storage root."""

    __tablename__ = "output_object"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # seg | sr | key_images
    sop_class_uid: Mapped[str] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), unique=True)
    path: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DeliveryState(StrEnum):
    """Where one object is on its way to one destination (the outbox)."""

    PENDING = "pending"  # to be sent at next_attempt_at
    SENT = "sent"  # the destination answered success (or a warning, recorded)
    DEAD = "dead"  # gave up after the last attempt; last_error says why
    CANCELLED = "cancelled"  # replaced by a resend or cancelled with its job


class Delivery(Base):
    """One object to one destination; unique, so delivery is idempotent."""

    __tablename__ = "delivery"
    __table_args__ = (UniqueConstraint("output_id", "destination"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    output_id: Mapped[int] = mapped_column(ForeignKey("output_object.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[DeliveryState] = mapped_column(_state_enum(DeliveryState, "delivery_state"), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_status: Mapped[str | None] = mapped_column(String(64))
    last_error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(128))  # the worker sending it now
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime)  # a dead worker's claim expires
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: How often an operator sent it again (`resend`), and when last: attempts restart at 0.
    resends: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    resent_at: Mapped[datetime | None] = mapped_column(DateTime)

    output: Mapped[OutputObject] = relationship()


class AuditEvent(Base):
    """Who sent what, what we produced, where it went: UIDs, AE titles and counts only.

    No foreign keys: the audit trail outlives the studies that retention deletes.
    """

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(32))  # received | rejected | produced | delivered | deleted
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH), index=True)
    destination: Mapped[str | None] = mapped_column(String(64))
    count: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str | None] = mapped_column(Text)


class TickLease(Base):
    """Which process runs a tick that must run in one place at a time (completion, leases, retention).

    Several worker processes on several hosts each schedule every tick; the holder of a
    tick's row runs it and renews the lease, the others skip. A holder that dies stops
    renewing, and another process takes the tick over when ``until`` has passed.
    """

    __tablename__ = "tick_lease"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str | None] = mapped_column(String(128))
    until: Mapped[datetime | None] = mapped_column(DateTime)


class NodeProcess(Base):
    """A serving process of the node (listener or worker) and when it last said it was alive.

    ``dicom-node status`` and the status page read these rows to say whether the node runs:
    with PostgreSQL, processes on several hosts share one database, so the database is
    the one place that sees them all. A process renews ``last_seen_at`` every few seconds
    and sets ``stopped_at`` when it stops cleanly; one killed stops renewing.
    """

    __tablename__ = "node_process"

    owner: Mapped[str] = mapped_column(String(128), primary_key=True)  # as in leases: host:pid-ns:pid:random
    role: Mapped[str] = mapped_column(String(16))  # listener | worker
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    #: What it serves: "DICOMNODE on 0.0.0.0:104" for a listener, the model for a worker.
    detail: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: The configuration file it read: `status` run with another file says so.
    config_path: Mapped[str | None] = mapped_column(String(1024))
    #: A listener's disk guard at its last beat, as shown: "N MiB free, guard M MiB: ok|refusing C-STORE (A700)".
    disk: Mapped[str | None] = mapped_column(String(255))
    #: Whether that listener refused C-STORE for the guard at its last beat (None: not a listener).
    disk_refusing: Mapped[bool | None] = mapped_column(Boolean)
    #: The status page it serves (or its supervisor serves for it), as started; None: none.
    page_url: Mapped[str | None] = mapped_column(String(255))
    #: Where SIGHUP goes to reload it: the supervisor of `dicom-node run`, else the process itself.
    reload_pid: Mapped[int | None] = mapped_column(Integer)
