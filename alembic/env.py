"""Alembic environment: the URL comes from our config, never from alembic.ini.

Run through ``dicom-node db upgrade --config PATH``, which passes an open connection.
Plain ``alembic`` also works: ``DICOM_NODE_CONFIG=/etc/dicom-node/dicom-node.toml alembic
-c /dev/null upgrade head`` reads the same settings file (and its environment overrides).
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from dicom_node.config import load_settings
from dicom_node.db.models import Base
from dicom_node.db.session import create_db_engine


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if url:
        from sqlalchemy import create_engine

        engine = create_engine(url)
    else:
        engine = create_db_engine(load_settings(os.environ["DICOM_NODE_CONFIG"]).database)
    with engine.begin() as conn:
        _run(conn)


def run_migrations_offline() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or load_settings(
        os.environ["DICOM_NODE_CONFIG"]
    ).database.url
    context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
