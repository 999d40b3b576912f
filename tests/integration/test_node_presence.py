"""Whether the node runs, from the processes' heartbeats in the database (SQLite and PostgreSQL).

With PostgreSQL, listeners and workers on several hosts share the database: the rows of
all of them decide, by the database's clock. A process that stops cleanly says so; one
killed stops renewing and counts as gone after ``STALE_S``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.admin.text import disk_lines, node_lines
from dicom_node.config import DatabaseSettings
from dicom_node.db import migrate
from dicom_node.db.clock import database_now
from dicom_node.db.heartbeat import STALE_S, DiskState, Heartbeat, NodePresence, beat, presence, register, stopped
from dicom_node.db.models import NodeProcess
from dicom_node.db.session import create_db_engine, session_factory


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 'n.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_db_engine(DatabaseSettings(url=url))
    migrate.upgrade(engine)
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


def _add(sessions: sessionmaker[Session], owner: str, role: str, host: str, pid: int, seen_ago_s: float) -> None:
    with sessions.begin() as session:
        now = database_now(session)
        register(session, owner=owner, role=role, detail=None, now=now - timedelta(seconds=seen_ago_s + 60))
        beat(session, owner=owner, now=now - timedelta(seconds=seen_ago_s))
        session.get(NodeProcess, owner).host, session.get(NodeProcess, owner).pid = host, pid  # type: ignore[union-attr]


def test_processes_on_several_hosts_and_one_that_was_killed(sessions: sessionmaker[Session]) -> None:
    _add(sessions, "a:1:10:x", "listener", "scp-host", 10, seen_ago_s=2)
    _add(sessions, "b:1:20:x", "worker", "gpu-host", 20, seen_ago_s=5)
    _add(sessions, "b:1:19:x", "worker", "gpu-host", 19, seen_ago_s=STALE_S + 30)  # killed: stopped renewing
    with sessions() as session:
        seen = presence(session)
    assert [(p.role, p.host, p.pid) for p in seen.alive] == [("worker", "gpu-host", 20), ("listener", "scp-host", 10)]
    [line] = node_lines(seen)
    assert line.startswith("NODE         running (worker pid 20 on gpu-host, listener pid 10 on scp-host; last seen ")
    # The listener's host is lost too: what is left is a worker alone, which receives nothing.
    with sessions.begin() as session:
        session.get(NodeProcess, "a:1:10:x").last_seen_at -= timedelta(seconds=STALE_S + 60)  # type: ignore[union-attr]
    with sessions() as session:
        lines = node_lines(presence(session))
    assert lines[1] == "             no listener runs: nothing is received (start `dicom-node scp`)", lines


def test_not_running_says_since_when_and_how_it_ended(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        assert node_lines(presence(session))[0] == (
            "NODE         not running (no listener or worker has ever started with this database)"
        )
    _add(sessions, "h:1:7:x", "worker", "host", 7, seen_ago_s=STALE_S + 10)
    with sessions() as session:
        lines = node_lines(presence(session))
    assert lines[0].startswith("NODE         not running (no heartbeat since 20") and "; last: worker pid 7 on host)" in lines[0]
    assert "dicom-node run" in lines[1] and "systemctl start dicom-node.target" in lines[1]  # the unit README installs
    # A clean stop is told apart from a process that vanished.
    beat_owner = Heartbeat(sessions, owner="h:1:8:y", role="listener")
    beat_owner.start()
    with sessions() as session:
        assert presence(session).running
    beat_owner.stop()
    with sessions() as session:
        line = node_lines(presence(session))[0]
    assert line.startswith("NODE         not running (stopped at 20") and "last: listener pid" in line, line


def test_a_stopped_process_is_never_alive_even_when_seen_just_now(sessions: sessionmaker[Session]) -> None:
    _add(sessions, "h:1:9:z", "listener", "host", 9, seen_ago_s=0)
    with sessions.begin() as session:
        stopped(session, owner="h:1:9:z", now=database_now(session))
    with sessions() as session:
        assert not presence(session).running


def test_the_disk_guard_s_state_is_a_flag_and_the_page_is_the_one_the_process_serves(sessions: sessionmaker[Session]) -> None:
    """`status` decides "refusing" by the stored flag, not by the words shown beside it."""
    with sessions.begin() as session:
        now = database_now(session)
        register(session, owner="a:1:10:x", role="listener", detail=None, now=now,
                 disk=DiskState("900 MiB free, guard 1000 MiB: refusing C-STORE (A700)", refusing=True),
                 page_url="http://127.0.0.1:9110/")
        register(session, owner="a:1:11:x", role="worker", detail=None, now=now)
    with sessions() as session:
        seen = {p.role: p for p in presence(session).alive}
    assert seen["listener"].refusing_for_disk and seen["listener"].page_url == "http://127.0.0.1:9110/"
    assert not seen["worker"].refusing_for_disk and seen["worker"].disk is None
    # Reworded text, same state: the flag still decides (the text is only shown).
    with sessions.begin() as session:
        beat(session, owner="a:1:10:x", now=database_now(session), disk=DiskState("full (words changed)", refusing=True))
    with sessions() as session:
        listener = next(p for p in presence(session).alive if p.role == "listener")
    assert listener.refusing_for_disk and listener.disk == "full (words changed)"
    assert any(line.startswith("             what to do: free space under storage.root") for line in disk_lines(presence_of(sessions)))
    with sessions.begin() as session:
        beat(session, owner="a:1:10:x", now=database_now(session), disk=DiskState("5000 MiB free, guard 1000 MiB: ok", refusing=False))
    assert not any("what to do" in line for line in disk_lines(presence_of(sessions)))


def presence_of(sessions: sessionmaker[Session]) -> NodePresence:
    with sessions() as session:
        return presence(session)
