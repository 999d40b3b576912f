"""Engine and session factory for SQLite (embedded default) and PostgreSQL (scale-out)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DatabaseSettings, environment_keys
from dicom_node.errors import DatabaseNotFoundError

#: Seconds to wait for a PostgreSQL connection before the attempt counts as failed.
POSTGRESQL_CONNECT_TIMEOUT_S = 10


def _sqlite_pragmas(busy_timeout_ms: int):  # type: ignore[no-untyped-def]
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets the status command and the scheduler read while the listener writes.
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is fsynced before it returns, so an acknowledged instance
        # survives power loss, not only a process crash.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def describe_database(url_text: str) -> str:
    """The database as messages name it: a SQLite file by its absolute path, a server by its
    URL without the password (a relative SQLite path depends on the directory a command runs in)."""
    url = make_url(url_text)
    if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
        return f"SQLite file {Path(url.database).resolve()}"
    return url.render_as_string(hide_password=True)


def _url_source() -> str:
    """Where the database URL came from: the environment wins over the file, so name it when it is set."""
    variable = environment_keys(os.environ).get("database.url") or environment_keys(os.environ).get("database")
    return f"environment variable {variable}" if variable else "[database] url"


def create_db_engine(settings: DatabaseSettings, *, create: bool = True) -> Engine:
    """An engine for ``settings.url``; SQLite gets WAL, synchronous=FULL and a busy timeout.

    ``create=False`` is for commands that only look or act on existing rows (``status``,
    ``jobs``, ``resend``): a missing SQLite file is then an error that names the path,
    instead of a new, empty database (and folder) wherever the command happened to run.
    """
    url = make_url(settings.url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            path = Path(url.database)
            if not create and not path.is_file():
                relative = "" if path.is_absolute() else " (a relative path: relative to the directory the command runs in)"
                raise DatabaseNotFoundError(
                    f"no database at {describe_database(settings.url)}{relative}, from {_url_source()} = "
                    f"{settings.url!r}: give the node's settings with --config or DICOM_NODE_CONFIG, "
                    "or create the database with `dicom-node db upgrade --config PATH`"
                )
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=settings.echo,
            connect_args={"timeout": settings.sqlite_busy_timeout_s, "check_same_thread": False},
        )
        event.listen(
            engine, "connect", _sqlite_pragmas(int(settings.sqlite_busy_timeout_s * 1000))
        )
        return engine
    # libpq waits for a TCP connect as long as the kernel does (minutes across a network
    # partition): /health, a scrape or a C-STORE would hang with it. A URL may set its own.
    connect_args = {} if "connect_timeout" in url.query else {"connect_timeout": POSTGRESQL_CONNECT_TIMEOUT_S}
    return create_engine(url, echo=settings.echo, pool_pre_ping=True, connect_args=connect_args)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (we hand them to log lines)."""
    return sessionmaker(engine, expire_on_commit=False)
