"""Each serving process says in the database that it is alive; ``status`` reads who is.

A pid file or a port probe answers "is the node running?" for one host only. With
PostgreSQL, listeners and workers on several hosts share one database, so the database
is the one place that sees them all: every listener and worker process keeps a row in
``node_process`` and renews ``last_seen_at`` every :data:`BEAT_S` seconds, by the
database's clock (the same clock as the leases). A row not renewed for :data:`STALE_S`
belongs to a process that is gone (killed, host lost); a clean stop sets ``stopped_at``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import Settings
from dicom_node.db.clock import database_now
from dicom_node.db.models import NodeProcess
from dicom_node.process import process_owner

logger = logging.getLogger(__name__)

#: Seconds between two renewals of a process's row.
BEAT_S = 10.0
#: A row not renewed for this long is a process that is gone (three missed beats and a margin).
STALE_S = 3 * BEAT_S + 5
#: The longest a stopping process waits for its "stopped" row to be written.
STOP_WAIT_S = 5.0
#: Rows of processes stopped or gone this long ago are deleted when a process starts.
FORGET_AFTER = timedelta(days=7)
#: Joins the roles of a process that serves more than one: ``listener+worker``.
ROLE_SEPARATOR = "+"


@dataclass(frozen=True)
class DiskState:
    """A listener's disk guard at one beat: the words ``status`` shows, and whether it refuses C-STORE.

    The flag decides; the text only describes (``InstanceStore.guard_state().text()``), so rewording
    the text cannot turn a refusing listener into one that reads as fine.
    """

    text: str
    refusing: bool


def register(
    session: Session,
    *,
    owner: str,
    role: str,
    detail: str | None,
    now: datetime,
    config_path: str | None = None,
    disk: DiskState | None = None,
    reload_pid: int | None = None,
    page_url: str | None = None,
) -> None:
    """Add this process's row (and forget processes gone for a week)."""
    session.execute(delete(NodeProcess).where(NodeProcess.last_seen_at < now - FORGET_AFTER))
    session.add(
        NodeProcess(
            owner=owner, role=role, host=socket.gethostname(), pid=os.getpid(), detail=detail,
            started_at=now, last_seen_at=now, config_path=config_path, **_disk_columns(disk),
            reload_pid=reload_pid or os.getpid(), page_url=page_url,
        )
    )


def beat(session: Session, *, owner: str, now: datetime, disk: DiskState | None = None) -> None:
    """Renew this process's row, with its listener's disk guard as it is now."""
    session.execute(
        update(NodeProcess).where(NodeProcess.owner == owner).values(last_seen_at=now, **_disk_columns(disk))
    )


def _disk_columns(disk: DiskState | None) -> dict[str, str | bool | None]:
    return {"disk": disk.text if disk else None, "disk_refusing": disk.refusing if disk else None}


def stopped(session: Session, *, owner: str, now: datetime) -> None:
    """Mark this process's row as stopped cleanly."""
    session.execute(
        update(NodeProcess).where(NodeProcess.owner == owner).values(last_seen_at=now, stopped_at=now)
    )


@dataclass(frozen=True)
class ProcessSeen:
    """One process as ``status`` shows it."""

    role: str
    host: str
    pid: int
    detail: str | None
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool
    config_path: str | None = None
    disk: str | None = None
    reload_pid: int | None = None
    #: The listener's disk guard refused C-STORE at its last beat.
    refusing_for_disk: bool = False
    #: The status page it serves (its supervisor's under `run`), as it was started.
    page_url: str | None = None

    @property
    def roles(self) -> frozenset[str]:
        """What it serves, each role whole: ``listener+worker`` is both, ``listener`` only the first."""
        return frozenset(self.role.split(ROLE_SEPARATOR))


@dataclass(frozen=True)
class NodePresence:
    """Which processes run now, and when the last one was seen when none does."""

    now: datetime
    alive: list[ProcessSeen]
    #: The most recently seen process that no longer runs (None: never any).
    last_gone: ProcessSeen | None

    @property
    def running(self) -> bool:
        return bool(self.alive)

    def roles(self) -> set[str]:
        """Every role some live process serves (a ``listener+worker`` process counts for both)."""
        return {role for p in self.alive for role in p.roles}


def listener_reload_pids(presence: NodePresence) -> list[int]:
    """The pids SIGHUP goes to for the running listeners to re-read their allowed callers."""
    return sorted({p.reload_pid for p in presence.alive if "listener" in p.roles and p.reload_pid})


def presence(session: Session, *, now: datetime | None = None) -> NodePresence:
    """The processes alive now (renewed within :data:`STALE_S`, not stopped) and the last one gone."""
    now = now or database_now(session)
    rows = session.execute(select(NodeProcess).order_by(NodeProcess.last_seen_at.desc())).scalars().all()
    fresh = now - timedelta(seconds=STALE_S)
    seen = [
        ProcessSeen(
            r.role, r.host, r.pid, r.detail, r.started_at, r.last_seen_at, r.stopped_at,
            alive=r.stopped_at is None and r.last_seen_at >= fresh, config_path=r.config_path, disk=r.disk,
            reload_pid=r.reload_pid, refusing_for_disk=bool(r.disk_refusing), page_url=r.page_url,
        )
        for r in rows
    ]
    alive = sorted((p for p in seen if p.alive), key=lambda p: (p.host, p.role, p.pid))
    gone = next((p for p in seen if not p.alive), None)
    return NodePresence(now, alive, gone)


class Heartbeat:
    """The thread that keeps one process's row fresh; ``start`` registers it, ``stop`` marks it stopped.

    A failed renewal (the database away for a moment) is logged once and retried at the
    next beat: the node's work never depends on its heartbeat.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        owner: str,
        role: str,
        detail: str | None = None,
        config_path: Path | None = None,
        disk: Callable[[], DiskState | None] = lambda: None,
        reload_pid: int | None = None,
        page_url: str | None = None,
    ) -> None:
        self.sessions = sessions
        self.page_url = page_url
        self.reload_pid = reload_pid
        self.owner = owner
        self.role = role
        self.detail = detail
        self.config_path = str(config_path.resolve()) if config_path is not None else None
        self.disk = disk
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of_serving_process(
        cls,
        sessions: sessionmaker[Session],
        settings: Settings,
        *,
        listener: bool,
        worker: bool,
        config_path: Path | None = None,
        disk: Callable[[], DiskState | None] = lambda: None,
        reload_pid: int | None = None,
        page_url: str | None = None,
    ) -> Heartbeat:
        """The heartbeat of a listener and/or worker process, with what it serves as its detail.

        ``disk`` is called at every beat (a listener's guard; None for a worker): free space
        changes while the process runs, and a full disk must show in ``status``.
        """
        node = settings.node
        parts = [f"{node.ae_title} on {node.bind_address}:{node.port}"] if listener else []
        if worker:
            parts.append(f"model {settings.analysis.model}")
        role = ROLE_SEPARATOR.join(name for name, on in (("listener", listener), ("worker", worker)) if on)
        return cls(
            sessions, owner=process_owner(), role=role, detail="; ".join(parts) or None,
            config_path=config_path, disk=disk if listener else (lambda: None), reload_pid=reload_pid,
            page_url=page_url,
        )

    def start(self) -> None:
        try:
            with self.sessions.begin() as session:
                register(
                    session, owner=self.owner, role=self.role, detail=self.detail, now=database_now(session),
                    config_path=self.config_path, disk=self._disk(), reload_pid=self.reload_pid,
                    page_url=self.page_url,
                )
        except Exception:  # noqa: BLE001 - the heartbeat is information, not a condition of serving
            logger.warning("heartbeat not registered; `status` may say the node is not running", exc_info=True)
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{self.role}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.wait(BEAT_S):
            try:
                with self.sessions.begin() as session:
                    beat(session, owner=self.owner, now=database_now(session), disk=self._disk())
                failing = False
            except Exception:  # noqa: BLE001
                if not failing:
                    logger.warning("heartbeat not renewed (database unavailable?)", exc_info=True)
                failing = True
        try:
            with self.sessions.begin() as session:
                stopped(session, owner=self.owner, now=database_now(session))
        except Exception:  # noqa: BLE001
            logger.warning("heartbeat: stop not recorded; `status` says not running once the row is stale", exc_info=True)

    def _disk(self) -> DiskState | None:
        try:
            return self.disk()
        except OSError:  # the store's file system away: /health says so; the beat goes on
            return None

    def stop(self) -> None:
        """Record the stop from the heartbeat's own thread, waiting at most :data:`STOP_WAIT_S`:
        a database that is away must not hold up the shutdown (the row then goes stale)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=STOP_WAIT_S)
