"""The composition root: every command builds what it needs from the config and runs it.

Nothing is created at import time; each command loads the settings, makes the engine,
the store and the application entity, and passes them down.
"""

from __future__ import annotations

import logging
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer
from pynetdicom import AE
from sqlalchemy import Engine

from dicom_node import __version__
from dicom_node.config import Settings, load_settings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.dicom.contexts import VERIFICATION_CLASS
from dicom_node.dicom.storage import InstanceStore
from dicom_node.dicom.tls import server_context
from dicom_node.errors import ConfigError, DicomNodeError
from dicom_node.ingest.catalog import Catalog, study_summaries
from dicom_node.ingest.committer import GroupCommitter
from dicom_node.ingest.scp import StorageSCP
from dicom_node.logs import configure_logging
from dicom_node.scheduler import build_scheduler

logger = logging.getLogger("dicom_node")

app = typer.Typer(help="dicom-node: a DICOM AI node for head CT. Research use only.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration files.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")

DEFAULT_CONFIG = Path("config/dicom-node.toml")
ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", envvar="DICOM_NODE_CONFIG", help="Settings file (TOML)."),
]


def _settings(path: Path) -> Settings:
    try:
        settings = load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(f"config error: {problem}", err=True)
        raise typer.Exit(2) from exc
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


def _wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def _serve(settings: Settings, with_scheduler: bool) -> None:
    engine = _engine_at_head(settings)
    sessions = session_factory(engine)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    store.prepare()
    catalog = Catalog(engine, settings.storage.duplicate_policy)
    committer = GroupCommitter(catalog.record_batch)
    committer.start()
    scp = StorageSCP(settings.node, store, catalog, committer, server_context(settings.tls))
    server = scp.start()
    scheduler = build_scheduler(settings, sessions) if with_scheduler else None
    if scheduler is not None:
        scheduler.start()
    try:
        _wait_for_signal()
    finally:
        logger.info("shutting down")
        server.shutdown()
        if scheduler is not None:
            scheduler.shutdown(wait=True)
        committer.stop()
        engine.dispose()


@app.command()
def run(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the embedded node in one process: listener plus scheduler ticks."""
    _serve(_settings(config), with_scheduler=True)


@app.command()
def scp(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run the DICOM listener only (scale-out: schedulers and workers run elsewhere)."""
    _serve(_settings(config), with_scheduler=False)


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
    """List the most recently active studies with their state and counts."""
    settings = _settings(config)
    engine = _engine_at_head(settings)
    with session_factory(engine)() as session:
        rows = study_summaries(session, limit)
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
        load_settings(path)
    except ConfigError as exc:
        for problem in exc.problems:
            typer.echo(problem)
        typer.echo(f"{len(exc.problems)} problem(s) in {path}")
        raise typer.Exit(1) from exc
    typer.echo(f"{path}: OK")


@app.command()
def version() -> None:
    """Print the dicom-node version."""
    typer.echo(__version__)


def main() -> None:
    """Console entry point; turns our own errors into a message and exit status 1."""
    try:
        app()
    except DicomNodeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
