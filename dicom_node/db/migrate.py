"""Run the Alembic migrations shipped with the package against the configured DB."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from dicom_node.errors import DicomNodeError


def script_location() -> Path:
    """The ``alembic/`` folder of the checkout this package runs from.

    dicom-node is installed editable from its checkout (README), so the migrations are
    found beside the package rather than duplicated into it.
    """
    location = Path(__file__).resolve().parents[2] / "alembic"
    if not (location / "env.py").is_file():
        raise DicomNodeError(
            f"migrations not found at {location}: install dicom-node editable from its "
            "checkout (pip install -e .), as the README describes"
        )
    return location


def alembic_config(url: str) -> Config:
    """An Alembic config pointing at our migrations and at ``url``."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    # Alembic's ini interpolation treats '%' specially (URL-encoded passwords).
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


#: Key of the PostgreSQL advisory lock that serialises concurrent upgrades ("dicomnod" in ASCII).
UPGRADE_LOCK_KEY = 0x6469636F6D6E6F64


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``, on that engine's connection.

    On PostgreSQL, every host's listener may run this as it starts (systemd ExecStartPre);
    Alembic itself does not lock, so a transaction-level advisory lock makes the second
    upgrade wait for the first and then find the schema at head.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": UPGRADE_LOCK_KEY})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def upgrade_and_report(engine: Engine, revision: str = "head") -> str:
    """Upgrade as :func:`upgrade` does, and say which database it was and what changed.

    The database is named in full (a SQLite file by its absolute path, a server's URL with
    the password masked): an administrator who ran the command from the wrong directory,
    or with the wrong settings, sees at once that it made a second database.
    """
    from dicom_node.db.session import describe_database

    where = f"database {describe_database(engine.url.render_as_string(hide_password=False))}"
    before = current_revision(engine)
    upgrade(engine, revision)
    after = current_revision(engine)
    if before is None:
        return f"{where}: schema created at revision {after}"
    if before == after:
        return f"{where}: already at revision {after} (nothing to do)"
    return f"{where}: upgraded from revision {before} to {after}"


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    """The newest revision shipped with this version of dicom-node."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(script_location())).get_current_head()
