"""INSERT ... ON CONFLICT for the two databases we run on.

SQLAlchemy spells it per dialect; this picks the right one for a connection or session,
so the callers stay dialect-free.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def upsert_insert(bind: Connection | Session, table: Any) -> Any:
    """An INSERT for ``table`` that supports ``on_conflict_do_nothing`` on this database."""
    dialect = bind.get_bind().dialect.name if isinstance(bind, Session) else bind.dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
