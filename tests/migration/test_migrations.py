"""Upgrade an empty database to head, then check the models and the schema agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError

from dicom_node.config import DatabaseSettings
from dicom_node.db import migrate
from dicom_node.db.models import Base
from dicom_node.db.session import create_db_engine
from tests.support.node import NodeConfig, cli


def _assert_schema_matches_models(engine: Engine) -> None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"
    assert migrate.current_revision(engine) == migrate.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {"study", "series", "instance", "alembic_version"} <= tables


def test_sqlite_upgrade_from_empty(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'm.db'}"))
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    _assert_schema_matches_models(engine)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert connection.execute(text("PRAGMA busy_timeout")).scalar() == 30000
        assert connection.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
    engine.dispose()


def test_postgresql_upgrade_from_empty(postgres_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    _assert_schema_matches_models(engine)
    migrate.upgrade(engine)  # running it again is a no-op
    engine.dispose()


def test_db_upgrade_command_is_idempotent(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path).write()
    first = cli("db", "upgrade", "--config", str(config))
    second = cli("db", "upgrade", "--config", str(config))
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    # Each run names the database it worked on (the absolute SQLite path) and what it did.
    database = f"database SQLite file {tmp_path / 'node.db'}"
    assert first.stdout.strip() == f"{database}: schema created at revision {migrate.head_revision()}", first.stdout
    assert second.stdout.strip() == f"{database}: already at revision {migrate.head_revision()} (nothing to do)"


def test_run_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path).write()
    result = cli("run", "--config", str(config), timeout=60)
    assert result.returncode == 3
    assert "dicom-node db upgrade --config" in result.stderr


def test_concurrent_upgrades_on_postgresql_both_succeed(postgres_url: str, tmp_path: Path) -> None:
    """Listeners on several hosts each migrate as they start: the second waits, then finds head."""
    config = NodeConfig(workdir=tmp_path, database_url=postgres_url).write()
    command = [sys.executable, "-m", "dicom_node", "db", "upgrade", "--config", str(config)]
    upgrades = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outcomes = [(p.wait(timeout=120), p.communicate()[1]) for p in upgrades]
    assert all(code == 0 for code, _ in outcomes), outcomes
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    _assert_schema_matches_models(engine)
    engine.dispose()


def _insert_job(connection, study_id: int, generation: int, state: str) -> None:  # type: ignore[no-untyped-def]
    connection.execute(
        text(
            "INSERT INTO job (study_id, study_generation, model_key, state, attempts, max_attempts, "
            "next_attempt_at, created_at) VALUES (:study, :generation, 'm@1', :state, 0, 3, "
            "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
        ),
        {"study": study_id, "generation": generation, "state": state},
    )


def _check_job_state_constraint(engine: Engine) -> None:
    """0007 widens the job state's CHECK constraint for 'skipped', and only for it."""
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO study (study_instance_uid, state, generation, opened_at, last_received_at, created_at) "
                "VALUES ('1.2.3', 'complete', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        study_id = connection.execute(text("SELECT id FROM study")).scalar_one()
        _insert_job(connection, study_id, 1, "skipped")
    with pytest.raises(IntegrityError), engine.begin() as connection:
        _insert_job(connection, study_id, 2, "not-a-state")


def test_skipped_jobs_pass_the_state_constraint_on_sqlite(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'm.db'}"))
    migrate.upgrade(engine)
    _check_job_state_constraint(engine)
    engine.dispose()


def test_skipped_jobs_pass_the_state_constraint_on_postgresql(postgres_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    migrate.upgrade(engine)
    _check_job_state_constraint(engine)
    engine.dispose()


def test_upgrade_names_a_server_database_without_its_password(postgres_url: str) -> None:
    """`db upgrade` says which database it changed; a server's URL is shown with the password masked."""
    url = postgres_url.replace("postgres@", "postgres:s3cret@")  # trust authentication ignores it
    engine = create_db_engine(DatabaseSettings(url=url))
    try:
        first = migrate.upgrade_and_report(engine)
        again = migrate.upgrade_and_report(engine)
    finally:
        engine.dispose()
    shown = url.replace(":s3cret@", ":***@")
    assert first == f"database {shown}: schema created at revision {migrate.head_revision()}"
    assert again == f"database {shown}: already at revision {migrate.head_revision()} (nothing to do)"
    assert "s3cret" not in first + again


def test_upgrade_from_the_previous_revision_says_from_what_to_what(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'old.db'}"))
    try:
        migrate.upgrade(engine, "0007")
        report = migrate.upgrade_and_report(engine)
        _assert_schema_matches_models(engine)
    finally:
        engine.dispose()
    assert report == f"database SQLite file {tmp_path / 'old.db'}: upgraded from revision 0007 to {migrate.head_revision()}"
