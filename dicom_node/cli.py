"""The composition root: every command builds what it needs from the config and runs it.

Nothing is created at import time; each command loads the settings, makes the engine,
the store and the application entity, and passes them down.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from pynetdicom import AE
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.conformance import write_conformance_statement
from dicom_node.audit import AuditLog
from dicom_node.config import Settings, load_settings
from dicom_node.db import migrate
from dicom_node.db.clock import database_now
from dicom_node.db.models import JobState
from dicom_node.db import state
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.dicom.contexts import VERIFICATION_CLASS
from dicom_node.dicom.storage import InstanceStore
from dicom_node.dicom.tls import client_context, server_context
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.ingest.catalog import Catalog, study_summaries
from dicom_node.ingest.committer import GroupCommitter
from dicom_node.ingest.scp import StorageSCP
from dicom_node.imaging import geometry, volume
from dicom_node.jobs import queue, tick_lease
from dicom_node.logs import configure_logging
from dicom_node.metrics import ChildrenMetrics, Metrics, StateCollector, serve_http
from dicom_node.models import commands as model_commands
from dicom_node.models.inputs import ImagingFunctions
from dicom_node.models.threshold import ThresholdModel, ThresholdParameters
from dicom_node.pipeline import Model, Pipeline, model_key
from dicom_node.retention import run_retention
from dicom_node.retry import RetryPolicy
from dicom_node.scheduler import Worker, build_scheduler, release_ticks
from dicom_node.send.outbox import deliveries_of_job, requeue_job_outputs, serve_outbox
from dicom_node.send.scu import Peer
from dicom_node.supervisor import (
    ChildSpec,
    Supervisor,
    adopt_supervision,
    child_specs,
    is_supervised,
    listening_socket,
)

logger = logging.getLogger("dicom_node")

app = typer.Typer(help="dicom-node: a DICOM AI node for head CT. Research use only.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
jobs_app = typer.Typer(help="Analysis jobs: list, show, retry, cancel.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(jobs_app, name="jobs")

DEFAULT_CONFIG = Path("config/dicom-node.toml")
ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="DICOM_NODE_CONFIG", help="Settings file (TOML)."),
]


#: Exit status for a configuration problem: the systemd units do not restart into it.
CONFIG_EXIT_STATUS = 2


def _print_problems(exc: ConfigError) -> None:
    for problem in exc.problems:
        typer.echo(f"config error: {problem}", err=True)


def _settings(path: Path) -> Settings:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        _print_problems(exc)
        raise typer.Exit(CONFIG_EXIT_STATUS) from exc
    configure_logging(settings.logging.level, settings.logging.format)
    return settings


def _engine_at_head(settings: Settings) -> Engine:
    engine = create_db_engine(settings.database)
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    if current != head:
        typer.echo(
            f"database is at revision {current or '(empty)'}, expected {head}: "
            "run `dicom-node db upgrade` first",
            err=True,
        )
        raise typer.Exit(3)
    return engine


#: What a reload applies (callers, destinations and routing); every other change waits for a restart.
LIVE_SETTINGS = ("node.allowed_callers", "node.allow_any_caller", "destinations")


@dataclass
class Reloadable:
    """What SIGHUP can change without dropping an association: callers, destinations, routing.

    ``settings`` is what runs: the start-up settings with the live parts of each accepted
    reload. Any other change in the file is named in a warning at every reload until a
    restart, instead of half applying (a new calling AE title on the sender, say).
    """

    path: Path
    settings: Settings
    scp: StorageSCP | None = None
    worker: Worker | None = None
    peers: dict[str, Peer] | None = None

    def reload(self) -> bool:
        """Re-read the config file; an invalid one is refused and the running config stays."""
        try:
            new = load_settings(self.path)
        except ConfigError as exc:
            logger.error(f"configuration reload refused, keeping the running configuration: {'; '.join(exc.problems)}")
            return False
        fixed = [
            key
            for key in _changed_keys(self.settings.model_dump(), new.model_dump())
            if not any(key == live or key.startswith(live + ".") for live in LIVE_SETTINGS)
        ]
        if fixed:
            logger.warning(f"configuration reload: these settings apply only after a restart: {', '.join(fixed)}")
        node = self.settings.node.model_copy(
            update={"allowed_callers": new.node.allowed_callers, "allow_any_caller": new.node.allow_any_caller}
        )
        destinations = new.destinations
        if any(key.startswith("tls.") for key in fixed):
            # A destination's TLS is built from [tls]: new destinations with the old trust
            # settings would fail every send until dead-lettered. They wait for the restart too.
            logger.warning("configuration reload: [tls] changed, so destinations also wait for a restart")
            destinations = self.settings.destinations
        self.settings = self.settings.model_copy(update={"node": node, "destinations": destinations})
        if self.scp is not None:
            self.scp.allow_callers(self.settings.node)
        if self.worker is not None:
            self.worker.destinations = {d.name: list(d.objects) for d in self.settings.destinations}
        if self.peers is not None:
            # In place, for the outbox tick that holds this dict; a name it is sending to stays
            # readable unless that destination was removed.
            fresh = _peers(self.settings)
            self.peers.update(fresh)
            for gone in set(self.peers) - set(fresh):
                del self.peers[gone]
        logger.info(
            f"configuration reloaded: {len(node.allowed_callers)} allowed caller(s), "
            f"{len(self.settings.destinations)} destination(s)"
        )
        return True


def _changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two ``model_dump()`` trees (lists compared whole)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [changed for key in keys for changed in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [prefix.rstrip(".")] if old != new else []


def _wait_for_signal(stop: threading.Event, reloadable: Reloadable) -> None:
    """Block until SIGTERM or SIGINT sets ``stop``; reload the config on SIGHUP meanwhile."""
    hangup = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    while not stop.wait(0.5):
        if hangup.is_set():
            hangup.clear()
            reloadable.reload()


def _imaging() -> ImagingFunctions:
    """The imaging layer's preprocessing, handed to the models (which may not import it)."""
    return ImagingFunctions(geometry.prepare_hu, geometry.prepare_windowed, volume.assemble_volume)


def _missing_packages(settings: Settings) -> list[str]:
    """What the configured model needs that is not installed here (checked without importing it)."""
    if settings.analysis.model != "threshold" and importlib.util.find_spec("torch") is None:
        return [
            f"[analysis] model = {settings.analysis.model!r} needs PyTorch: pip install -e '.[inference]' "
            "(or set model = \"threshold\")"
        ]
    return []


def _model(settings: Settings) -> Model:
    """The configured model. Trained kinds import torch here, in the worker, never in the listener."""
    analysis = settings.analysis
    if analysis.model == "threshold":
        return ThresholdModel(ThresholdParameters(min_lesion_ml=analysis.min_lesion_ml))
    if problems := _missing_packages(settings):
        raise ConfigError(problems)  # exit status 2: systemd does not restart into the same error
    from dicom_node.models.combine import CombinedModel
    from dicom_node.models.registry import load_model, shipped_model_dir
    from dicom_node.models.runner import Runner

    def runner(kind: str, directory: Path | None) -> Runner:
        loaded = load_model(directory or shipped_model_dir(kind), kind=kind)
        device = None if analysis.device == "auto" else analysis.device
        return Runner(loaded, _imaging(), device=device, batch_size=analysis.batch_size)

    directories = {"unet": analysis.unet_dir, "maskrcnn": analysis.maskrcnn_dir}
    if "+" not in analysis.model:
        return runner(analysis.model, directories[analysis.model])  # type: ignore[return-value]
    segmenter = analysis.model.split("+")[1]
    return CombinedModel(
        runner("classifier", analysis.classifier_dir),
        runner(segmenter, directories[segmenter]),
        rule=analysis.combination,
    )


def _peers(settings: Settings) -> dict[str, Peer]:
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


def _scheduler(settings: Settings, engine: Engine, store: InstanceStore, stop: threading.Event, metrics: Metrics):  # type: ignore[no-untyped-def]
    """Completion, leases, dispatch (with the worker) and outbox ticks for this process."""
    sessions = session_factory(engine)
    model = _model(settings)
    audit = AuditLog(engine, settings.audit.file)
    worker = Worker(
        metrics=metrics,
        audit=audit,
        sessions=sessions,
        run_job=Pipeline(settings, sessions, store, model).run,
        destinations={d.name: list(d.objects) for d in settings.destinations},
        lease=timedelta(seconds=settings.jobs.lease_s),
        heartbeat_every=timedelta(seconds=settings.jobs.heartbeat_s),
        policy=RetryPolicy.from_settings(settings.jobs.retry),
    )
    peers = _peers(settings)
    policy = RetryPolicy.from_settings(settings.delivery.retry)

    def outbox() -> object:
        counts = serve_outbox(
            sessions,
            peers=peers,
            storage_root=store.root,
            policy=policy,
            owner=worker.owner,
            # A claim must outlive one attempt: TCP connect, association set-up and one
            # C-STORE, each bounded by the time-out, plus a margin; renewed after every answer.
            lease=timedelta(seconds=settings.delivery.timeout_s * 4),
            audit=audit,
        )
        for destination, states in counts.items():
            for delivery_state, n in states.items():
                metrics.deliveries.labels(destination, delivery_state).inc(n)
        return counts

    def retention() -> object:
        return run_retention(
            sessions,
            store,
            now=_now(sessions),
            received_days=settings.retention.received_days,
            results_days=settings.retention.results_days,
            dry_run=False,
            audit=audit,
        )

    ticks = build_scheduler(
        settings,
        sessions,
        model_key=model_key(model),
        owner=worker.owner,
        worker=worker,
        outbox=outbox,
        retention=retention if settings.retention.enabled else None,
        stop=stop,
    )
    return ticks, worker, peers


def _observability(  # type: ignore[no-untyped-def]
    settings: Settings,
    engine: Engine,
    store: InstanceStore,
    metrics: Metrics | ChildrenMetrics,
    port: int,
    more_problems: Callable[[], list[str]] = list,
):
    """Start /metrics and /health for this process; returns the function that stops them."""
    metrics.add_collector(
        StateCollector(
            studies_by_state=lambda: state.studies_by_state(engine),
            jobs_by_state=lambda: state.jobs_by_state(engine),
            deliveries_by_state=lambda: state.deliveries_by_state(engine),
            disk_free_bytes=store.free_bytes,
        )
    )

    def health() -> list[str]:
        problem = state.database_problem(engine)
        return ([problem] if problem else []) + store.problems() + more_problems()

    address = f"{settings.observability.bind_address}:{port}"
    try:
        server, _ = serve_http(metrics, health, address=settings.observability.bind_address, port=port)
    except OSError as exc:  # e.g. a second worker on this host: run on, without metrics
        logger.error(f"metrics and health not served: {exc.strerror}", extra={"peer_address": address})
        return lambda: None
    logger.info("metrics and health", extra={"peer_address": address})
    return server.shutdown


def _serve(config: Path, *, listener: bool, scheduler: bool) -> None:
    """One process doing the work: listener, scheduler and worker, or some of them."""
    supervised = adopt_supervision()  # a child of `run`: dies with it, serves no HTTP
    settings = _settings(config)
    reloadable = Reloadable(config, settings)
    engine = _engine_at_head(settings)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    store.prepare()
    stop = threading.Event()
    store.sweep_periodically(stop)
    metrics = Metrics()
    stops = []
    if settings.observability.enabled and supervised is None:
        port = settings.observability.port if listener else settings.observability.worker_port
        stops.append(_observability(settings, engine, store, metrics, port))
    if listener:
        catalog = Catalog(engine, settings.storage.duplicate_policy)
        stops.append(catalog.close)  # after the listener and the committer stopped (stops run in reverse)
        committer = GroupCommitter(catalog.record_batch)
        committer.start()
        stops.append(committer.stop)
        audit = AuditLog(engine, settings.audit.file)
        reloadable.scp = StorageSCP(
            settings.node, store, catalog, committer, server_context(settings.tls), metrics, audit
        )
        server = reloadable.scp.start(supervised.listen_socket if supervised else None)
        stops.append(server.shutdown)
    if scheduler:
        ticks, reloadable.worker, reloadable.peers = _scheduler(settings, engine, store, stop, metrics)
        ticks.start()
        owner = reloadable.worker.owner

        def stop_ticks() -> None:
            ticks.shutdown(wait=True)
            release_ticks(session_factory(engine), owner)

        stops.append(stop_ticks)
    for role, running in (("listener", listener), ("worker", scheduler)):
        if running:
            logger.info(f"{role} ready")
    try:
        _wait_for_signal(stop, reloadable)
    finally:
        logger.info("shutting down")
        for halt in reversed(stops):
            halt()
        engine.dispose()


def _supervise(config: Path, *, worker: bool) -> None:
    """Bind the port, run the listener processes (and the worker) as children, serve /metrics and /health.

    See :mod:`dicom_node.supervisor` for the process model and what happens when a child exits.
    """
    settings = _settings(config)
    engine = _engine_at_head(settings)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    store.prepare()
    node = settings.node
    try:
        sock = listening_socket(node.bind_address, node.port)
    except OSError as exc:
        typer.echo(f"cannot listen on {node.bind_address}:{node.port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    metrics_dir = Path(tempfile.mkdtemp(prefix="dicom-node-metrics-"))
    supervisor = Supervisor(child_specs(node.listener_processes, worker=worker), config.resolve(), sock, metrics_dir)
    stops: list[Callable[[], None]] = []
    status = 0
    engine.dispose()  # no pooled connection may cross the fork into the children

    def run_forked(spec: ChildSpec) -> None:
        _serve(config, listener=spec.command == "scp", scheduler=spec.command == "worker")

    try:
        supervisor.start(run_forked)
        if settings.observability.enabled:
            children = ChildrenMetrics(metrics_dir)
            stops.append(
                _observability(settings, engine, store, children, settings.observability.port, supervisor.problems)
            )
        status = _supervise_until_signal(supervisor) or 0
    finally:
        logger.info("shutting down")
        sock.close()  # the listeners keep their copies until they exit
        supervisor.stop()
        for halt in stops:
            halt()
        engine.dispose()
        shutil.rmtree(metrics_dir, ignore_errors=True)
    if status:
        raise typer.Exit(status)


def _supervise_until_signal(supervisor: Supervisor) -> int | None:
    """Watch the children until SIGTERM or SIGINT (None), or a child's fatal exit status; pass SIGHUP on."""
    stop = threading.Event()
    hangup = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    signal.signal(signal.SIGHUP, lambda *_: hangup.set())
    while not stop.wait(0.2):
        if hangup.is_set():
            hangup.clear()
            supervisor.signal_all(signal.SIGHUP)
        if (status := supervisor.check()) is not None:
            return status
    return None


@app.command()
def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the embedded node: one command and one config; the listener(s) and the worker run as
    separate processes under it, so analysis never takes the CPU a C-STORE needs."""
    _supervise(config, worker=True)


@app.command()
def scp(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the DICOM listener only; a GPU crash in a worker never drops an association.

    With ``[node] listener_processes`` above 1, that many listener processes share the port.
    """
    if not is_supervised() and _settings(config).node.listener_processes > 1:
        _supervise(config, worker=False)
    else:
        _serve(config, listener=True, scheduler=False)


@app.command()
def worker(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the scheduler ticks and the analysis worker, without a listener."""
    _serve(config, listener=False, scheduler=True)


_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="AE@HOST:PORT of the peer to verify.")],
    calling_ae: Annotated[str, typer.Option(help="Our calling AE title.")] = "DICOMNODE",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
) -> None:
    """Send a C-ECHO and report the peer's status (exit 0 on success)."""
    match = _PEER.match(peer)
    if match is None:
        typer.echo("peer must look like AE@HOST:PORT", err=True)
        raise typer.Exit(2)
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(VERIFICATION_CLASS)
    assoc = ae.associate(match["host"], int(match["port"]), ae_title=match["ae"])
    if not assoc.is_established:
        typer.echo(f"association with {peer} failed (rejected, aborted or unreachable)", err=True)
        raise typer.Exit(1)
    status = assoc.send_c_echo()
    assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        typer.echo(f"C-ECHO to {peer} failed: status {code!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"C-ECHO to {peer}: success")


@app.command()
def status(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="How many studies to list.")] = 50,
) -> None:
    """At a glance: queue depth, destinations, the last errors, and recent studies."""
    settings = _settings(config)
    engine = _engine_at_head(settings)
    jobs = state.jobs_by_state(engine)
    typer.echo("JOBS         " + (", ".join(f"{n} {s}" for s, n in sorted(jobs.items())) or "none"))
    outbox = state.deliveries_by_state(engine)
    names = sorted({d.name for d in settings.destinations} | {name for name, _ in outbox})
    for name in names:
        counts = ", ".join(f"{n} {s}" for (dest, s), n in sorted(outbox.items()) if dest == name) or "nothing yet"
        configured = "" if name in {d.name for d in settings.destinations} else " (not configured)"
        typer.echo(f"DESTINATION  {name}{configured}: {counts}")
    with session_factory(engine)() as session:
        ticks = tick_lease.holders(session)
        now = database_now(session)
    for name, (owner, until) in sorted(ticks.items()):
        held = f"{owner} until {until:%H:%M:%S} UTC" if owner and until and until > now else "free (no live holder)"
        typer.echo(f"TICK         {name}: {held}")
    for what, why in state.recent_errors(engine):
        typer.echo(f"ERROR        {what}: {why.splitlines()[0][:160]}")
    with session_factory(engine)() as session:
        rows = study_summaries(session, limit)
    typer.echo("")
    header = f"{'STUDY INSTANCE UID':<64}  {'STATE':<9}  GEN  SERIES  INSTANCES  LAST RECEIVED (UTC)  COMPLETED"
    typer.echo(header)
    for row in rows:
        completed = f"{row.completed_at:%Y-%m-%d %H:%M:%S} ({row.completion_reason})" if row.completed_at else "-"
        typer.echo(
            f"{row.study_instance_uid:<64}  {row.state.value:<9}  {row.generation:>3}  "
            f"{row.series_count:>6}  {row.instance_count:>9}  {row.last_received_at:%Y-%m-%d %H:%M:%S}  {completed}"
        )
    if not rows:
        typer.echo("(no studies received yet)")


def _now(sessions: sessionmaker[Session]) -> datetime:
    """Now by the database's clock, which every process's leases and times agree on."""
    with sessions() as session:
        return database_now(session)


def _sessions(config: Path):  # type: ignore[no-untyped-def]
    settings = _settings(config)
    return settings, session_factory(_engine_at_head(settings))


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = DEFAULT_CONFIG,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option(help="How many jobs to list.")] = 50,
) -> None:
    """The newest jobs first: state, attempts and the last error."""
    _, sessions = _sessions(config)
    with sessions() as session:
        jobs = queue.list_jobs(session, limit=limit, state=state)
    typer.echo(f"{'ID':>6}  {'STATE':<10}  {'TRY':>5}  {'STUDY INSTANCE UID':<64}  GEN  MODEL / LAST ERROR")
    for job in jobs:
        detail = job.last_error.splitlines()[0][:80] if job.last_error else job.model_key
        typer.echo(
            f"{job.id:>6}  {job.state.value:<10}  {job.attempts:>2}/{job.max_attempts:<2}  "
            f"{job.study_instance_uid:<64}  {job.study_generation:>3}  {detail}"
        )
    if not jobs:
        typer.echo("(no jobs)")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """One job in full: why it failed, what it found, where each result went."""
    _, sessions = _sessions(config)
    with sessions() as session:
        job = queue.get_job(session, job_id)
        deliveries = deliveries_of_job(session, job_id) if job else []
    if job is None:
        typer.echo(f"no job {job_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"job {job.id}: {job.state.value}, attempt {job.attempts} of {job.max_attempts}")
    typer.echo(f"  study      {job.study_instance_uid} (generation {job.study_generation})")
    typer.echo(f"  model      {job.model_key}")
    typer.echo(f"  created    {job.created_at:%Y-%m-%d %H:%M:%S} UTC; finished {job.finished_at or '-'}")
    if job.state == JobState.QUEUED and job.attempts:
        typer.echo(f"  next try   {job.next_attempt_at:%Y-%m-%d %H:%M:%S} UTC")
    if job.lease_owner:
        typer.echo(f"  worker     {job.lease_owner}")
    if job.last_error:
        typer.echo(f"  error      {job.last_error}")
    if job.summary:
        typer.echo(f"  result     {job.summary}")
    for d in deliveries:
        why = f" ({d.last_error})" if d.last_error else ""
        typer.echo(
            f"  delivery   {d.kind:<10} {d.sop_instance_uid} -> {d.destination}: {d.state.value}, "
            f"{d.attempts} attempt(s), last status {d.last_status or '-'}{why}"
        )


def _job_transition(config: Path, job_id: int, change: Callable[..., bool], done: str, refused: str) -> None:
    """Apply one operator transition to a job and report it (exit 1 when refused)."""
    _, sessions = _sessions(config)
    with sessions.begin() as session:
        ok = change(session, job_id, now=database_now(session))
    if not ok:
        typer.echo(f"job {job_id} is not {refused}", err=True)
        raise typer.Exit(1)
    typer.echo(f"job {job_id} {done}")


@jobs_app.command("retry")
def jobs_retry(job_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run a dead, cancelled or finished job again (attempts start over)."""
    _job_transition(config, job_id, queue.retry_now, "queued", "dead, cancelled or succeeded")


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Cancel a queued or running job (a running one finishes its stage, but its results are discarded)."""
    _job_transition(config, job_id, queue.cancel, "cancelled", "queued or running")


@app.command()
def resend(
    study_instance_uid: Annotated[str, typer.Argument(help="The study whose latest results to send again.")],
    config: ConfigOption = DEFAULT_CONFIG,
    to: Annotated[str | None, typer.Option("--to", help="Only this destination (by name).")] = None,
) -> None:
    """Send a study's latest results again; same UIDs, so destinations replace, never duplicate."""
    settings, sessions = _sessions(config)
    destinations = {d.name: list(d.objects) for d in settings.destinations if to in (None, d.name)}
    if not destinations:
        typer.echo(f"no configured destination named {to!r}", err=True)
        raise typer.Exit(2)
    with sessions.begin() as session:
        job_id = queue.latest_succeeded_job(session, study_instance_uid)
        if job_id is None:
            typer.echo(f"no successful job for study {study_instance_uid}", err=True)
            raise typer.Exit(1)
        count = requeue_job_outputs(
            session, job_id=job_id, destinations=destinations, now=database_now(session)
        )
    typer.echo(f"{count} deliveries of job {job_id} queued for {', '.join(destinations)}")


@app.command("retention")
def retention_command(
    config: ConfigOption = DEFAULT_CONFIG,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")] = False,
) -> None:
    """Delete studies whose results were delivered more than the configured days ago (only while enabled)."""
    settings = _settings(config)
    if not settings.retention.enabled:
        if not dry_run:
            # A node that never chose a retention period must not lose data to a default one.
            typer.echo("retention is disabled ([retention] enabled = false): nothing deleted", err=True)
            raise typer.Exit(1)
        typer.echo("retention is disabled ([retention] enabled = false); if it were enabled:")
    engine = _engine_at_head(settings)
    sessions = session_factory(engine)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    items = run_retention(
        sessions,
        store,
        now=_now(sessions),
        received_days=settings.retention.received_days,
        results_days=settings.retention.results_days,
        dry_run=dry_run,
        audit=None if dry_run else AuditLog(engine, settings.audit.file),
    )
    verb = "would delete" if dry_run else "deleted"
    for item in items:
        typer.echo(
            f"{verb} {item.study_instance_uid}: {item.instances} instance(s), {item.results} result(s)"
            f"{', and the study' if item.delete_study else ''} (delivered {item.delivered_at:%Y-%m-%d %H:%M} UTC)"
        )
    if not items:
        typer.echo("nothing is due for deletion")


@db_app.command("upgrade")
def db_upgrade(
    config: ConfigOption = DEFAULT_CONFIG,
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or upgrade the database schema (safe to run on every start)."""
    settings = _settings(config)
    engine = create_db_engine(settings.database)
    migrate.upgrade(engine, revision)
    typer.echo(f"database at revision {migrate.current_revision(engine)}")


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="Settings file to check.")]) -> None:
    """Validate a settings file and print every problem at once (exit 1 if any)."""
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem)
        overrides = sorted(name for name in os.environ if name.upper().startswith("DICOM_NODE_") and "__" in name)
        where = f"{path} or the environment ({', '.join(overrides)})" if overrides else str(path)
        typer.echo(f"{len(exc.problems)} problem(s) in {where}")
        raise typer.Exit(1) from exc
    # Not an error of the file: a listener-only host needs no PyTorch.
    for missing in _missing_packages(settings):
        typer.echo(f"warning: {missing}; a worker on this host would refuse to start")
    typer.echo(f"{path}: OK")


@app.command()
def conformance(
    config: ConfigOption = DEFAULT_CONFIG,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write the statement to this file instead of standard output."),
    ] = None,
) -> None:
    """Render the DICOM Conformance Statement (PS3.2, Markdown) of this configuration."""
    text = write_conformance_statement(_settings(config), output)
    if output is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"conformance statement written to {output}", err=True)


@app.command()
def version() -> None:
    """Print the dicom-node version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point; turns our own errors into a message and exit status 1 (2: configuration)."""
    model_commands.register(app, _imaging())
    try:
        app()
    except ConfigError as exc:  # the configuration, or what it needs, is wrong: retrying cannot help
        _print_problems(exc)
        sys.exit(CONFIG_EXIT_STATUS)
    except DicomNodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
