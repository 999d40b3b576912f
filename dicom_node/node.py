"""The runtime of one node process, composed from the settings (the shape of procrastinate's ``App``).

:meth:`Node.build` makes what a process holds (live settings, store, metrics, one audit
log); :meth:`Node.start` starts its roles: the listener, the worker with its ticks, or
both; :meth:`Node.stop` stops them in reverse. A reload (SIGHUP) only re-reads
:class:`~dicom_node.live_settings.LiveSettings`; the listener, the worker and the outbox
read it when they next need it. :class:`SupervisingNode` is ``dicom-node run``'s parent
process: it binds the port and keeps the children running, each of which builds its own
:class:`Node` with one role (:mod:`dicom_node.supervisor`).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.config import Settings
from dicom_node.db.heartbeat import DiskState, Heartbeat
from dicom_node.db.session import describe_database, session_factory
from dicom_node.dicom.storage import InstanceStore
from dicom_node.dicom.tls import client_context, server_context
from dicom_node.disk_guard import disk_guard_warning
from dicom_node.ingest.catalog import Catalog
from dicom_node.ingest.committer import GroupCommitter
from dicom_node.ingest.scp import StorageSCP
from dicom_node.jobs.recovery import reclaim_at_startup
from dicom_node.live_settings import LiveSettings
from dicom_node.metrics import ChildrenMetrics, Metrics
from dicom_node.models.loading import LoadedModel, load_configured_model
from dicom_node.observability import serve_observability
from dicom_node.pipeline import Pipeline, model_key
from dicom_node.retention import run_configured_retention
from dicom_node.retry import RetryPolicy
from dicom_node.send.outbox import serve_outbox
from dicom_node.send.scu import Peer
from dicom_node.supervisor import ChildSpec, Supervised, Supervisor, child_specs, listening_socket
from dicom_node.ticks import build_scheduler, release_ticks
from dicom_node.worker import Worker

logger = logging.getLogger(__name__)


def destination_peers(settings: Settings) -> dict[str, Peer]:
    """The sender's peers: every configured destination, called as our AE title, over TLS if it wants."""
    return {
        d.name: Peer(
            name=d.name,
            ae_title=d.ae_title,
            host=d.host,
            port=d.port,
            calling_ae_title=settings.node.ae_title,
            timeout_s=settings.delivery.timeout_s,
            tls_context=client_context(settings.tls) if d.tls else None,
        )
        for d in settings.destinations
    }


@dataclass
class OutboxTick:
    """One outbox tick: send every due delivery to the destinations the live settings name now.

    The peers are rebuilt only after a reload (their TLS contexts read files); a tick in
    flight keeps the peers it started with.
    """

    live: LiveSettings
    sessions: sessionmaker[Session]
    storage_root: Path
    owner: str
    audit: AuditLog
    metrics: Metrics
    _peers: dict[str, Peer] = field(default_factory=dict, init=False)
    _generation: int = field(default=-1, init=False)

    def peers(self) -> dict[str, Peer]:
        if self._generation != self.live.generation:
            self._peers, self._generation = destination_peers(self.live.current), self.live.generation
        return self._peers

    def __call__(self) -> object:
        delivery = self.live.current.delivery  # not live: the same as at start-up
        counts = serve_outbox(
            self.sessions,
            peers=self.peers(),
            storage_root=self.storage_root,
            policy=RetryPolicy.from_settings(delivery.retry),
            owner=self.owner,
            # A claim must outlive one attempt: TCP connect, association set-up and one
            # C-STORE, each bounded by the time-out, plus a margin; renewed after every answer.
            lease=timedelta(seconds=delivery.timeout_s * 4),
            audit=self.audit,
        )
        for destination, states in counts.items():
            for delivery_state, n in states.items():
                self.metrics.deliveries.labels(destination, delivery_state).inc(n)
        return counts


def wait_for_signal(
    stop: threading.Event,
    on_hangup: Callable[[], object],
    *,
    poll_s: float,
    check: Callable[[], int | None] = lambda: None,
) -> int | None:
    """Block until SIGTERM or SIGINT sets ``stop`` (None), or ``check`` gives an exit status.

    SIGHUP calls ``on_hangup`` from this loop, not from the signal handler, so that a reload
    never runs inside whatever the main thread was doing when the signal came.
    """
    hangup = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    while not stop.wait(poll_s):
        if hangup.is_set():
            hangup.clear()
            on_hangup()
        if (status := check()) is not None:
            return status
    return None


@dataclass
class Node:
    """One process doing the work: the listener, the worker (with the ticks), or both."""

    config: Path
    live: LiveSettings
    engine: Engine
    store: InstanceStore
    metrics: Metrics
    #: One per process: the listener's and the worker's events go through the same lock.
    audit: AuditLog
    listener: bool
    worker: bool
    #: Set in a child of ``dicom-node run``: the shared socket; the supervisor serves HTTP.
    supervised: Supervised | None = None
    model: LoadedModel | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _stops: list[Callable[[], None]] = field(default_factory=list, init=False)

    @classmethod
    def build(
        cls,
        config: Path,
        settings: Settings,
        engine: Engine,
        *,
        listener: bool,
        worker: bool,
        supervised: Supervised | None = None,
    ) -> Node:
        """Compose the process from ``settings`` (read from ``config``); nothing runs yet."""
        return cls(
            config=config,
            live=LiveSettings(config, settings),
            engine=engine,
            store=InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20),
            metrics=Metrics(),
            audit=AuditLog(engine, settings.audit.file),
            listener=listener,
            worker=worker,
            supervised=supervised,
        )

    def start(self) -> None:
        """Prepare the store, serve HTTP (unless supervised), then start the listener and the worker."""
        settings = self.live.current
        self.store.prepare()
        if self.listener and self.supervised is None:  # under `run`, its parent says it once for all children
            _warn_of_disk_guard(settings)
        self.store.sweep_periodically(self._stop)
        # First in, last out: the row says "stopped" only once everything after it has stopped.
        heartbeat = Heartbeat.of_serving_process(
            session_factory(self.engine), settings, listener=self.listener, worker=self.worker,
            config_path=self.config, disk=self._disk_state, page_url=self._page_url(),
            reload_pid=os.getppid() if self.supervised is not None else None,  # `run` passes SIGHUP on
        )
        heartbeat.start()
        self._stops.append(heartbeat.stop)
        if settings.observability.enabled and self.supervised is None:
            self._stops.append(
                serve_observability(lambda: self.live.current, self.engine, self.store, self.metrics, self._page_port())
            )
        if self.listener:
            self._start_listener(settings)
        if self.worker:
            self._start_worker(settings)
        logger.info(self.startup_summary())
        for role, running in (("listener", self.listener), ("worker", self.worker)):
            if running:
                logger.info(f"{role} ready")

    def _start_listener(self, settings: Settings) -> None:
        catalog = Catalog(
            self.engine,
            settings.storage.duplicate_policy,
            writer_lock_timeout_s=settings.database.sqlite_busy_timeout_s,
        )
        self._stops.append(catalog.close)  # after the listener and the committer stopped (stops run in reverse)
        committer = GroupCommitter(catalog.record_batch)
        committer.start()
        self._stops.append(committer.stop)
        scp = StorageSCP(
            lambda: self.live.current.node,
            self.store,
            catalog,
            committer,
            server_context(settings.tls),
            self.metrics,
            self.audit,
        )
        server = scp.start(self.supervised.listen_socket if self.supervised else None)
        self._stops.append(server.shutdown)

    def _start_worker(self, settings: Settings) -> None:
        """The model, the worker and its ticks; a dead process's jobs are reclaimed before the first claim."""
        self.model = load_configured_model(settings.analysis)
        sessions = session_factory(self.engine)
        policy = RetryPolicy.from_settings(settings.jobs.retry)
        worker = Worker(
            metrics=self.metrics,
            audit=self.audit,
            sessions=sessions,
            run_job=Pipeline(settings, sessions, self.store, self.model.model).run,
            destinations=self.live.destination_kinds,
            lease=timedelta(seconds=settings.jobs.lease_s),
            heartbeat_every=timedelta(seconds=settings.jobs.heartbeat_s),
            policy=policy,
        )
        ticks = build_scheduler(
            settings,
            sessions,
            model_key=model_key(self.model.model),
            owner=worker.owner,
            worker=worker,
            outbox=OutboxTick(self.live, sessions, self.store.root, worker.owner, self.audit, self.metrics),
            retention=self._retention_tick(sessions) if settings.retention.enabled else None,
            stop=self._stop,
        )
        # Before the first claim: what a dead process of this host held runs again now, not after its lease.
        reclaim_at_startup(sessions, owner=worker.owner, policy=policy)
        ticks.start()

        def stop_ticks() -> None:
            ticks.shutdown(wait=True)
            release_ticks(sessions, worker.owner)

        self._stops.append(stop_ticks)

    def _retention_tick(self, sessions: sessionmaker[Session]) -> Callable[[], object]:
        retention = self.live.current.retention
        return lambda: run_configured_retention(sessions, self.store, retention, dry_run=False, audit=self.audit)

    def startup_summary(self) -> str:
        """One line that answers "which files, which database, which model" when reading a log later."""
        settings = self.live.current
        parts = [f"config {self.config.resolve()}", f"database {describe_database(settings.database.url)}"]
        parts.append(f"storage {self.store.root.resolve()} ({self.store.free_bytes() / 2**30:.1f} GiB free)")
        if self.listener:
            parts.append(f"listening as {settings.node.ae_title} on {settings.node.bind_address}:{settings.node.port}")
        if self.model is not None:
            model = self.model.model  # which weights, not only which kinds: a job's outputs carry the same names
            parts.append(f"model {settings.analysis.model} ({model.name} {model.version}) on {self.model.device}")
            names = ", ".join(d.name for d in settings.destinations) or "none (results are kept, not sent)"
            parts.append(f"destinations {names}")
        if page := self._page_url():
            parts.append(f"status page {page}")
        return "started: " + "; ".join(parts)

    def _page_url(self) -> str | None:
        """The status page this process serves (or its supervisor serves for it); None when off."""
        return self.live.current.observability.page_url(self._page_port())

    def _disk_state(self) -> DiskState:
        """The disk guard for the heartbeat: the store's words for it and whether it refuses,
        both from one reading of the free space."""
        state = self.store.guard_state()
        return DiskState(state.text(), refusing=state.refusing)

    def _page_port(self) -> int:
        """Where this process's /metrics and status page are served: a worker alone has a port
        of its own; under `run` the supervisor serves every child's on the listener's port."""
        observability = self.live.current.observability
        return observability.port if self.listener or self.supervised is not None else observability.worker_port

    def reload(self) -> bool:
        """SIGHUP: re-read the live part of the settings (see :class:`LiveSettings`)."""
        return self.live.reload()

    def run_until_signal(self) -> None:
        """Serve until SIGTERM or SIGINT (SIGHUP reloads), then stop."""
        try:
            wait_for_signal(self._stop, self.reload, poll_s=0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop what :meth:`start` started, last started first, and close the database pool."""
        logger.info("shutting down")
        self._stop.set()
        for halt in reversed(self._stops):
            halt()
        self._stops.clear()
        self.engine.dispose()


def _warn_of_disk_guard(settings: Settings) -> None:
    """Log at start-up a disk guard that refuses every C-STORE from the first (see :mod:`dicom_node.disk_guard`)."""
    if warning := disk_guard_warning(settings.storage.root, settings.storage.min_free_mb):
        logger.warning(warning, extra={"stage": "startup"})


@dataclass
class SupervisingNode:
    """``dicom-node run``'s parent: binds the port, runs the children, serves /metrics and /health.

    See :mod:`dicom_node.supervisor` for the process model and what happens when a child exits.
    """

    config: Path
    settings: Settings
    engine: Engine
    store: InstanceStore
    worker: bool
    listen_socket: socket.socket | None = None

    @classmethod
    def build(cls, config: Path, settings: Settings, engine: Engine, *, worker: bool) -> SupervisingNode:
        store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
        store.prepare()
        _warn_of_disk_guard(settings)
        return cls(config, settings, engine, store, worker)

    def listen(self) -> None:
        """Bind the DICOM port for the listener children to share (OSError when it is taken)."""
        self.listen_socket = listening_socket(self.settings.node.bind_address, self.settings.node.port)

    def run(self, serve_child: Callable[[ChildSpec], None]) -> int:
        """Fork the children (each runs ``serve_child``), watch them until a signal; the exit status.

        SIGTERM or SIGINT stop the node (0); a child's fatal exit status stops it with that
        status; SIGHUP is passed on to every child.
        """
        metrics_dir = Path(tempfile.mkdtemp(prefix="dicom-node-metrics-"))
        specs = child_specs(self.settings.node.listener_processes, worker=self.worker)
        supervisor = Supervisor(specs, self.config.resolve(), self.listen_socket, metrics_dir)
        stops: list[Callable[[], None]] = []
        self.engine.dispose()  # no pooled connection may cross the fork into the children
        try:
            supervisor.start(serve_child)
            if self.settings.observability.enabled:
                stops.append(self._serve_children_metrics(supervisor, metrics_dir))
            hangup = partial(supervisor.signal_all, signal.SIGHUP)  # each child reloads its own part
            return wait_for_signal(threading.Event(), hangup, poll_s=0.2, check=supervisor.check) or 0
        finally:
            logger.info("shutting down")
            if self.listen_socket is not None:
                self.listen_socket.close()  # the listeners keep their copies until they exit
            supervisor.stop()
            for halt in stops:
                halt()
            self.engine.dispose()
            shutil.rmtree(metrics_dir, ignore_errors=True)

    def _serve_children_metrics(self, supervisor: Supervisor, metrics_dir: Path) -> Callable[[], None]:
        """/metrics with the children's counters summed; /health also says which child is not running."""
        settings = self.settings
        children = ChildrenMetrics(metrics_dir)
        port = settings.observability.port
        return serve_observability(lambda: settings, self.engine, self.store, children, port, supervisor.problems)
