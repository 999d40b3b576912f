"""What differs between the two databases we run on, for a connection or a session.

SQLAlchemy spells INSERT ... ON CONFLICT per dialect; this picks the right one, so the
callers stay dialect-free.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def dialect_name(bind: Connection | Session) -> str:
    """``"postgresql"`` or ``"sqlite"``: the database behind a connection or a session."""
    return bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name


def upsert_insert(bind: Connection | Session, table: Any) -> Any:
    """An INSERT for ``table`` that supports ``on_conflict_do_nothing`` on this database."""
    return (postgresql.insert if dialect_name(bind) == "postgresql" else sqlite.insert)(table)
