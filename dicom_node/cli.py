"""The commands: each loads the settings, checks the database, and runs what it names.

Nothing is created at import time. The serving commands (run, scp, worker) hand the
settings to :class:`~dicom_node.node.Node`, which composes the process; the others read
or change the database through the packages below.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.admin import overview
from dicom_node.admin.destinations import destination_health
from dicom_node.admin.rejections import recent_rejections
from dicom_node.admin.text import (
    unknown_destination_hint,
    STUDY_HEADER,
    config_lines,
    delivery_line,
    disk_lines,
    destination_lines,
    error_lines,
    job_lines,
    node_lines,
    other_configs,
    page_lines,
    rejection_lines,
    retry_refusal,
    study_detail_lines,
    study_line,
    utc,
)
from dicom_node.conformance import write_conformance_statement
from dicom_node.audit import AuditLog
from dicom_node.config import CONFIG_ENV, Settings, load_settings, variables_named
from dicom_node.effective_config import effective_settings, environment_overrides, render as render_settings
from dicom_node.db import migrate
from dicom_node.db.clock import database_now
from dicom_node.db.heartbeat import listener_reload_pids, presence
from dicom_node.db.models import JobState
from dicom_node.db import state
from dicom_node.db.session import create_db_engine, describe_database, session_factory
from dicom_node.dicom.storage import InstanceStore
from dicom_node.dicom.tls import client_context
from dicom_node.disk_guard import disk_guard_warning
from dicom_node.errors import ConfigError, DatabaseNotFoundError, DicomNodeError
from dicom_node.jobs import queue, tick_lease
from dicom_node.logs import configure_logging
from dicom_node.models.loading import missing_packages
from dicom_node.node import Node, SupervisingNode
from dicom_node.retention import run_configured_retention
from dicom_node.send.echo import verify
from dicom_node.send.outbox import cancel_pending, deliveries_of_job, requeue_job_outputs
from dicom_node.supervisor import adopt_supervision, is_supervised
from dicom_node.training import commands as model_commands

app = typer.Typer(help="dicom-node: a DICOM AI node for head CT. Research use only.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
jobs_app = typer.Typer(help="Analysis jobs: list, show, retry, cancel; pending deliveries.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration: check a file, show the effective settings.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(jobs_app, name="jobs")

DEFAULT_CONFIG = Path("config/dicom-node.toml")
ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar=CONFIG_ENV, help=f"Settings file (TOML); or set {CONFIG_ENV}."),
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


def _engine_at_head(settings: Settings, config: Path) -> Engine:
    """The database, checked to be at our schema revision; never a new, empty one (see create_db_engine)."""
    try:
        engine = create_db_engine(settings.database, create=False)
    except DatabaseNotFoundError as exc:  # the same exit status as a database at the wrong revision
        typer.echo(str(exc), err=True)
        raise typer.Exit(3) from exc
    current = migrate.current_revision(engine)
    head = migrate.head_revision()
    if current != head:
        typer.echo(
            f"database {describe_database(settings.database.url)} is at revision {current or '(empty)'}, "
            f"expected {head}: if this is the node's database, run `dicom-node db upgrade --config {config}`; "
            f"if not, give the node's settings with --config or {CONFIG_ENV}",
            err=True,
        )
        raise typer.Exit(3)
    return engine


def _serve(config: Path, *, listener: bool, worker: bool) -> None:
    """One process doing the work: the listener, the worker, or both (a child of `run`: one of them)."""
    supervised = adopt_supervision()  # a child of `run`: dies with it, serves no HTTP
    settings = _settings(config)
    engine = _engine_at_head(settings, config)
    node = Node.build(config, settings, engine, listener=listener, worker=worker, supervised=supervised)
    node.start()
    node.run_until_signal()


def _supervise(config: Path, *, worker: bool) -> None:
    """`run` (and `scp` with several listener processes): the children each serve one role."""
    settings = _settings(config)
    parent = SupervisingNode.build(config, settings, _engine_at_head(settings, config), worker=worker)
    try:
        parent.listen()
    except OSError as exc:
        typer.echo(f"cannot listen on {settings.node.bind_address}:{settings.node.port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from exc
    if status := parent.run(lambda spec: _serve(config, listener=spec.command == "scp", worker=spec.command == "worker")):
        raise typer.Exit(status)


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
        _serve(config, listener=True, worker=False)


@app.command()
def worker(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the scheduler ticks and the analysis worker, without a listener."""
    _serve(config, listener=False, worker=True)


_PEER = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d{1,5})$")


@app.command()
def echo(
    peer: Annotated[str, typer.Argument(help="AE@HOST:PORT of the peer, or the name of a configured destination.")],
    calling_ae: Annotated[
        str | None, typer.Option(help="Our calling AE title (default: [node] ae_title, else DICOMNODE).")
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the peer.")] = 10.0,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar=CONFIG_ENV, help="Settings file, for destination names and our AE title.")
    ] = None,
) -> None:
    """Send a C-ECHO and report the peer's status (exit 0 on success), or why it failed."""
    config = config if config is not None else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    settings = _settings(config) if config is not None else None
    match = _PEER.match(peer)
    if match is None:
        destinations = {d.name: d for d in settings.destinations} if settings else {}
        if peer not in destinations:
            typer.echo(
                f"peer {peer!r} must look like AE@HOST:PORT or name a configured destination; "
                + unknown_destination_hint(config, list(destinations)),
                err=True,
            )
            raise typer.Exit(2)
        d = destinations[peer]
        called, host, port = d.ae_title, d.host, d.port
        # As the sender will: over TLS when the destination wants it.
        tls = client_context(settings.tls) if settings and d.tls else None
    else:
        called, host, port, tls = match["ae"], match["host"], int(match["port"]), None
    ours = calling_ae or (settings.node.ae_title if settings else "DICOMNODE")
    result = verify(host, port, called_ae=called, calling_ae=ours, timeout_s=timeout, tls_context=tls)
    if not result.ok:
        typer.echo(result.reason + (f"; {result.hint}" if result.hint else ""), err=True)
        raise typer.Exit(1)
    typer.echo(result.reason)


@app.command()
def status(
    study_instance_uid: Annotated[
        str | None, typer.Argument(help="One study in full: its jobs, the AI call and its deliveries.")
    ] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(help="How many studies to list.")] = 50,
) -> None:
    """At a glance: jobs, destinations, the last errors, and the recent studies with the AI call."""
    settings = _settings(config)
    engine = _engine_at_head(settings, config)
    sessions = session_factory(engine)
    if study_instance_uid is not None:
        _study_status(sessions, study_instance_uid)
        return
    jobs = state.jobs_by_state(engine)
    with sessions() as session:
        now = database_now(session)
        running = presence(session, now=now)
        read = str(config.resolve())
        others = other_configs(read, running)
        typer.echo("\n".join([*config_lines(read, running), *node_lines(running), *disk_lines(running)]))
        typer.echo("JOBS         " + (", ".join(f"{n} {s}" for s, n in sorted(jobs.items())) or "none"))
        health = destination_health(session, list(settings.destinations))
        for line in destination_lines(health, node_config=others[0] if others else None):
            typer.echo(line)
        ticks = tick_lease.holders(session)
        studies = overview.recent_studies(session, limit)
        # Whether a rejected caller is allowed now is the running node's file's to say, not this one's.
        admits = None if others else settings.node.admits
        rejected = rejection_lines(
            recent_rejections(session, now=now, admits=admits), reload_pids=listener_reload_pids(running)
        )
    for name, (owner, until) in sorted(ticks.items()):
        held = f"{owner} until {until:%H:%M:%S} UTC" if owner and until and until > now else "free (no live holder)"
        typer.echo(f"TICK         {name}: {held}")
    for line in [*rejected, *error_lines(state.recent_errors(engine))]:
        typer.echo(line)
    typer.echo("")
    typer.echo(STUDY_HEADER)
    for study in studies:
        typer.echo(study_line(study))
    if not studies:
        typer.echo("(no studies received yet)")
    if pages := page_lines(settings.observability.page_url(), running):
        typer.echo("\n" + "\n".join(pages))


def _study_status(sessions: sessionmaker[Session], study_instance_uid: str) -> None:
    with sessions() as session:
        detail = overview.study_detail(session, study_instance_uid)
        similar = overview.similar_study_uids(session, study_instance_uid) if detail is None else []
        now = database_now(session)
    if detail is None:
        _unknown_study(study_instance_uid, similar)
    for line in study_detail_lines(detail, now=now):
        typer.echo(line)


def _unknown_study(study_instance_uid: str, similar: list[str]) -> NoReturn:
    """Say that the study is unknown here, and what might be meant; exit 1."""
    hint = f"; did you mean {' or '.join(similar)}?" if similar else "; `dicom-node status` lists the recent studies"
    typer.echo(f"no study {study_instance_uid} was received by this node (this database){hint}", err=True)
    raise typer.Exit(1)


def _sessions(config: Path) -> tuple[Settings, sessionmaker[Session]]:
    settings = _settings(config)
    return settings, session_factory(_engine_at_head(settings, config))


@jobs_app.command("list")
def jobs_list(
    config: ConfigOption = DEFAULT_CONFIG,
    state: Annotated[JobState | None, typer.Option(help="Only jobs in this state.")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Only the jobs of this Study Instance UID.")] = None,
    limit: Annotated[int, typer.Option(help="How many jobs to list.")] = 50,
) -> None:
    """The newest jobs first: state, attempts and the last error."""
    _, sessions = _sessions(config)
    with sessions() as session:
        jobs = queue.list_jobs(session, limit=limit, state=state, study_instance_uid=study)
    typer.echo(f"{'ID':>6}  {'STATE':<10}  {'TRY':>5}  {'STUDY INSTANCE UID':<64}  GEN  MODEL, OR WHY (error, reason, warning)")
    for job in jobs:
        problem = job.last_error or job.reason or (f"warning: {job.warnings[0]}" if job.warnings else None)
        detail = problem.splitlines()[0][:80] if problem else job.model_key
        typer.echo(
            f"{job.id:>6}  {job.state.value:<10}  {job.attempts:>2}/{job.max_attempts:<2}  "
            f"{job.study_instance_uid:<64}  {job.study_generation:>3}  {detail}"
        )
    if not jobs:
        typer.echo("(no jobs)")


@jobs_app.command("show")
def jobs_show(job_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """One job in full: times (UTC), the lease, why it failed, what it found, where each result went."""
    _, sessions = _sessions(config)
    with sessions() as session:
        found = overview.job_by_id(session, job_id)
        deliveries = deliveries_of_job(session, job_id) if found else []
        now = database_now(session)
    if found is None:
        typer.echo(f"no job {job_id}: `dicom-node jobs list` shows the jobs there are", err=True)
        raise typer.Exit(1)
    job, study_instance_uid = found
    lines = job_lines(job, now=now)
    lines.insert(1, f"  study      {study_instance_uid} (generation {job.study_generation})")
    for line in lines:
        typer.echo(line)
    for d in deliveries:
        typer.echo(delivery_line(d))


@jobs_app.command("cancel-deliveries")
def jobs_cancel_deliveries(
    to: Annotated[str, typer.Option("--to", help="The destination whose pending deliveries to drop.")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Drop every pending delivery to one destination (e.g. one removed from the configuration)."""
    settings, sessions = _sessions(config)
    with sessions.begin() as session:
        count = cancel_pending(session, destination=to, now=database_now(session))
        waiting = state.destinations_with_pending(session)
    if count == 0:
        others = f"; destinations with pending deliveries: {', '.join(waiting)}" if waiting else ""
        typer.echo(f"no pending delivery to {to!r}{others}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{count} pending deliveries to {to} cancelled")
    if to in {d.name for d in settings.destinations}:
        typer.echo(f"note: {to} is still configured, so new results will be queued for it", err=True)


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
def jobs_retry(
    job_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    rerun: Annotated[
        bool, typer.Option("--rerun", help="Also a succeeded job: analyse again and send the new results in place of the old.")
    ] = False,
) -> None:
    """Run a dead, cancelled or skipped job again (attempts start over); a succeeded one only with --rerun."""
    _, sessions = _sessions(config)
    with sessions.begin() as session:
        ok = queue.retry_now(session, job_id, now=database_now(session), include_succeeded=rerun)
        found = None if ok else overview.job_by_id(session, job_id)
    if not ok:
        typer.echo(retry_refusal(job_id, found), err=True)
        raise typer.Exit(1)
    typer.echo(f"job {job_id} queued" + ("; its results are sent again when it succeeds (same UIDs: they replace the old)" if rerun else ""))


@jobs_app.command("cancel")
def jobs_cancel(job_id: int, config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Cancel a queued or running job (a running one finishes its stage, but its results are discarded)."""
    _job_transition(config, job_id, queue.cancel, "cancelled", "queued or running")


@app.command()
def resend(
    study_instance_uid: Annotated[str, typer.Argument(help="The study whose latest results to send again.")],
    config: ConfigOption = DEFAULT_CONFIG,
    to: Annotated[str | None, typer.Option("--to", help="Only this destination (default: every configured one).")] = None,
) -> None:
    """Send a study's latest results again; same UIDs, so destinations replace, never duplicate."""
    settings, sessions = _sessions(config)
    configured = {d.name: list(d.objects) for d in settings.destinations}
    if not configured:
        typer.echo(
            f"no destination is configured in {config}: add a [[destinations]] entry "
            "(name, ae_title, host, port), restart or reload the node, then resend",
            err=True,
        )
        raise typer.Exit(2)
    if to is not None and to not in configured:
        typer.echo(f"no configured destination named {to!r} in {config}; configured: {', '.join(configured)}", err=True)
        raise typer.Exit(2)
    destinations = {name: kinds for name, kinds in configured.items() if to in (None, name)}
    with sessions.begin() as session:
        job_id = queue.latest_succeeded_job(session, study_instance_uid)
        if job_id is None:
            _no_results(session, study_instance_uid)
        count = requeue_job_outputs(
            session, job_id=job_id, destinations=destinations, now=database_now(session)
        )
    typer.echo(f"{count} deliveries of job {job_id} queued for {', '.join(destinations)}")


def _no_results(session: Session, study_instance_uid: str) -> NoReturn:
    """Why a study has nothing to resend: unknown here, or no job has succeeded yet."""
    detail = overview.study_detail(session, study_instance_uid)
    if detail is None:
        _unknown_study(study_instance_uid, overview.similar_study_uids(session, study_instance_uid))
    latest = detail.jobs[0] if detail.jobs else None
    why = f"its latest job {latest.id} is {latest.state}" if latest else "it has no job yet (it completes after the quiet period)"
    typer.echo(
        f"study {study_instance_uid} has no results to send: {why}; see `dicom-node status {study_instance_uid}`",
        err=True,
    )
    raise typer.Exit(1)


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
    engine = _engine_at_head(settings, config)
    sessions = session_factory(engine)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    items = run_configured_retention(
        sessions,
        store,
        settings.retention,
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
    typer.echo(migrate.upgrade_and_report(engine, revision))


@config_app.command("check")
def config_check(
    path: Annotated[Path | None, typer.Argument(help="Settings file to check (default: --config).")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Validate a settings file and print every problem at once (exit 1 if any)."""
    path = path or config
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem)
        overrides = variables_named(exc.problems, os.environ)
        where = f"{path} or the environment ({', '.join(overrides)})" if overrides else str(path)
        typer.echo(f"{len(exc.problems)} problem(s) in {where}")
        raise typer.Exit(1) from exc
    # Not an error of the file: a listener-only host needs no PyTorch.
    for missing in missing_packages(settings.analysis):
        typer.echo(f"warning: {missing}; a worker on this host would refuse to start")
    if guard := disk_guard_warning(settings.storage.root, settings.storage.min_free_mb):
        typer.echo(f"warning: {guard}")
    typer.echo(f"{path}: OK")


@config_app.command("show")
def config_show(
    config: ConfigOption = DEFAULT_CONFIG,
    explain: Annotated[bool, typer.Option("--explain", help="Also what each section and key is for.")] = False,
) -> None:
    """Print the effective settings: every key, its value (secrets masked) and its source."""
    settings = _settings(config)
    overrides = sorted(environment_overrides(os.environ).values())
    typer.echo(f"# settings file: {config.resolve()}")
    typer.echo(f"# environment overrides: {', '.join(overrides) or 'none'}")
    typer.echo(f"# database: {describe_database(settings.database.url)}")
    typer.echo(f"# relative paths: of the file and defaults under {config.resolve().parent}, of the environment under {Path.cwd()}")
    typer.echo(render_settings(effective_settings(config, settings), explain=explain), nl=False)


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
def demo(
    out_dir: Annotated[Path, typer.Argument(help="Folder to write the series into (created if needed).")],
    positive: Annotated[
        bool, typer.Option("--positive/--negative", help="With a planted 7 mL bleed (default), or without.")
    ] = True,
    slices: Annotated[int, typer.Option(help="Number of 5 mm slices.", min=8, max=200)] = 40,
    chest: Annotated[bool, typer.Option("--chest", help="A chest CT (not a head: stored, job skipped).")] = False,
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Write a synthetic head CT series (no patient data) to try the node with."""
    from dicom_node.demo import send_command, write_demo_study

    written = write_demo_study(out_dir, positive=positive and not chest, n_slices=slices, chest=chest)
    what = "chest CT, not a head" if chest else ("planted bleed of %.1f mL" % written.lesion_ml if positive else "no bleed")
    typer.echo(f"{len(written.paths)} CT images written to {out_dir} (study {written.study_instance_uid}, {what})")
    if not config.exists():
        typer.echo(f"no settings file {config}: see `--config` for the storescu line that sends them to your node")
        return
    node = _settings(config).node
    callers = [c.ae_title for c in node.allowed_callers]
    calling = "STORESCU" if "STORESCU" in callers or not callers else callers[0]
    typer.echo(f"send them to the node of {config} with e.g.")
    typer.echo("  " + send_command(out_dir, calling_ae=calling, called_ae=node.ae_title, host=node.bind_address, port=node.port))


@app.command()
def version() -> None:
    """Print the dicom-node version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point; turns our own errors into a message and exit status 1 (2: configuration)."""
    model_commands.register(app)
    try:
        app()
    except ConfigError as exc:  # the configuration, or what it needs, is wrong: retrying cannot help
        _print_problems(exc)
        sys.exit(CONFIG_EXIT_STATUS)
    except DicomNodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
