"""Shared fixtures: a real in-process node on loopback, and a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.audit import AuditLog
from dicom_node.config import load_settings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.dicom.storage import InstanceStore
from dicom_node.dicom.tls import server_context
from dicom_node.ingest.catalog import Catalog
from dicom_node.ingest.committer import GroupCommitter
from dicom_node.ingest.scp import StorageSCP
from dicom_node.metrics import Metrics
from tests.support.node import NodeConfig
from tests.support.postgres import PG_ADMIN_URL



@dataclass
class RunningNode:
    """An in-process listener with its database sessions and store."""

    config: NodeConfig
    sessions: sessionmaker[Session]
    store: InstanceStore
    port: int

    def stored_files(self) -> list[Path]:
        """Every file under the storage root, temporary ones included."""
        return sorted(p for p in self.store.root.rglob("*") if p.is_file())


def start_node(
    config: NodeConfig, *, metrics: Metrics | None = None, audit_file: Path | None = None
) -> tuple[RunningNode, object]:
    settings = load_settings(config.write())
    engine = create_db_engine(settings.database)
    migrate.upgrade(engine)
    sessions = session_factory(engine)
    store = InstanceStore(settings.storage.root, settings.storage.min_free_mb * 2**20)
    store.prepare()
    catalog = Catalog(engine, settings.storage.duplicate_policy)
    committer = GroupCommitter(catalog.record_batch)
    committer.start()
    audit = AuditLog(engine, audit_file) if audit_file is not None else None
    server = StorageSCP(
        settings.node, store, catalog, committer, server_context(settings.tls), metrics, audit
    ).start()

    def stop() -> None:
        server.shutdown()
        committer.stop()
        catalog.close()
        engine.dispose()

    return RunningNode(config, sessions, store, config.port), stop


@pytest.fixture
def node_config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(workdir=tmp_path / "node")


@pytest.fixture
def node(node_config: NodeConfig) -> Iterator[RunningNode]:
    """A listener running in this process on a free loopback port, with SQLite."""
    running, stop = start_node(node_config)
    try:
        yield running
    finally:
        stop()  # type: ignore[operator]


@pytest.fixture(scope="session")
def postgres_admin_url() -> str:
    """The local PostgreSQL server (trust auth), or a failure that says it is missing."""
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure means the server is not usable
        raise AssertionError(
            f"PostgreSQL is required on 127.0.0.1:5432 with trust auth ({exc.__class__.__name__})"
        ) from exc
    finally:
        engine.dispose()
    return PG_ADMIN_URL


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    name = f"dicom_node_test_{uuid.uuid4().hex[:12]}"
    # pre_ping: the outage test restarts the server while this engine holds a connection.
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
