"""Ticks that must run once: the database lease on SQLite and on PostgreSQL with racing processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DatabaseSettings
from dicom_node.db.models import utcnow
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.jobs import tick_lease
from dicom_node.ticks import SingletonTick, release_ticks
from tests.support.database import migrated_sessions

TTL = timedelta(seconds=30)


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    url = f"sqlite:///{tmp_path / 't.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    yield from migrated_sessions(url)


def _acquire(sessions: sessionmaker[Session], owner: str, *, after: timedelta = timedelta(0)) -> bool:
    with sessions.begin() as session:
        return tick_lease.acquire(session, "completion", owner=owner, ttl=TTL, now=utcnow() + after)


def test_the_holder_renews_and_the_others_skip(sessions: sessionmaker[Session]) -> None:
    assert _acquire(sessions, "a") is True
    assert _acquire(sessions, "b") is False
    assert _acquire(sessions, "a") is True  # renewal
    assert _acquire(sessions, "b", after=TTL / 2) is False
    with sessions() as session:
        owner, until = tick_lease.holders(session)["completion"]
    assert owner == "a" and until is not None and until > utcnow()


def test_a_silent_holder_loses_the_tick_after_its_lease(sessions: sessionmaker[Session]) -> None:
    assert _acquire(sessions, "a") is True
    assert _acquire(sessions, "b", after=TTL + timedelta(seconds=1)) is True
    assert _acquire(sessions, "a") is False  # "a" came back: "b" holds it now


def test_a_clean_stop_hands_the_tick_over_at_once(sessions: sessionmaker[Session]) -> None:
    assert _acquire(sessions, "a") is True
    release_ticks(sessions, "a")
    assert _acquire(sessions, "b") is True


def test_a_singleton_tick_runs_in_one_of_many_racing_processes(postgres_url: str) -> None:
    """Eight owners (as eight worker processes would) tick 20 rounds at once: one runs each round."""
    for sessions in migrated_sessions(postgres_url):
        ran: list[tuple[int, str]] = []
        lock = threading.Lock()
        barrier = threading.Barrier(8)
        rounds = 20

        def process(owner: str) -> None:
            for round_number in range(rounds):
                def tick(r: int = round_number) -> None:
                    with lock:
                        ran.append((r, owner))

                barrier.wait(timeout=30)
                SingletonTick(sessions, "completion", owner, timedelta(seconds=1), tick)()

        threads = [threading.Thread(target=process, args=(f"worker-{i}",)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        per_round = {r: [o for rr, o in ran if rr == r] for r in range(rounds)}
        assert all(len(owners) == 1 for owners in per_round.values()), per_round
        assert len({o for owners in per_round.values() for o in owners}) == 1  # the holder keeps it


def test_a_tick_is_skipped_not_crashed_when_the_database_is_gone(tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'never-migrated.db'}"))
    ran: list[int] = []
    tick = SingletonTick(session_factory(engine), "leases", "a", timedelta(seconds=1), lambda: ran.append(1))
    assert tick() is None  # no tick_lease table: logged and skipped
    assert ran == []
    engine.dispose()


def test_a_tick_longer_than_its_lease_keeps_it(tmp_path: Path) -> None:
    """The holder renews while its tick runs, so nobody else starts it meanwhile."""
    for sessions in migrated_sessions(f"sqlite:///{tmp_path / 'long.db'}"):
        others: list[bool] = []

        def long_tick() -> None:
            for _ in range(6):  # 3 s, about three times the lease
                time.sleep(0.5)
                with sessions.begin() as session:
                    others.append(tick_lease.acquire(session, "retention", owner="b", ttl=TTL, now=utcnow()))

        # A lease of 0.9 s (three 0.3 s intervals), to keep the test quick.
        tick = SingletonTick(sessions, "retention", "a", timedelta(seconds=0.3), long_tick, min_ttl=timedelta(0))
        assert tick.ttl == timedelta(seconds=0.9)
        tick()
        assert others == [False] * 6
