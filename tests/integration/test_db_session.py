"""A PostgreSQL server that accepts TCP but never answers does not hang the node."""

from __future__ import annotations

import socket
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from dicom_node.config import DatabaseSettings
from dicom_node.db import session as db_session


def test_a_silent_server_fails_the_connection_within_the_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(db_session, "POSTGRESQL_CONNECT_TIMEOUT_S", 2)
    with socket.socket() as silent:  # listens (the kernel completes the handshake) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        engine = db_session.create_db_engine(DatabaseSettings(url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/x"))
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        elapsed = time.monotonic() - started
        engine.dispose()
    assert elapsed < 10, f"took {elapsed:.1f} s"
