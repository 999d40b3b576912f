"""A migrated database for tests that talk to the queue tables directly."""

from __future__ import annotations

from collections.abc import Iterator

from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DatabaseSettings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine, session_factory


def migrated_sessions(url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on ``url`` brought to the head revision; the engine is disposed afterwards."""
    engine = create_db_engine(DatabaseSettings(url=url))
    migrate.upgrade(engine)
    yield session_factory(engine)
    engine.dispose()
