"""The C-STORE SCU and the outbox against real peers: DCMTK storescp and pynetdicom SCPs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import threading

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage
from sqlalchemy import select

from dicom_node.config import DatabaseSettings
from dicom_node.db import migrate
from dicom_node.db.models import Delivery, DeliveryState, Job, JobState, OutputObject, Study, StudyState, utcnow
from dicom_node.db.session import create_db_engine, session_factory
from dicom_node.retry import RetryPolicy
from dicom_node.send.outbox import add_deliveries, claim_due, record_result, serve_outbox
from dicom_node.send.scu import Peer, SendItem, SendResult, send
from tests.support.node import free_port
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import SeriesSpec, write_series

@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_series(SeriesSpec(n_slices=3, rows=64, columns=64), tmp_path / "out")


def _peer(port: int, ae_title: str = "DEST", name: str = "dest") -> Peer:
    return Peer(name=name, ae_title=ae_title, host="127.0.0.1", port=port, calling_ae_title="DICOMNODE", timeout_s=5)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path / "received").start()
    try:
        yield scp
    finally:
        scp.stop()


def _pynetdicom_scp(port: int, status: int, contexts: list[str]):  # type: ignore[no-untyped-def]
    ae = AE("DEST")
    for uid in contexts:
        ae.add_supported_context(uid)
    return ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: status)])


def test_send_to_storescp_stores_every_file(storescp: StoreSCP, files: list[Path]) -> None:
    results = send(_peer(storescp.port), [SendItem(i, p) for i, p in enumerate(files)])
    assert [(r.key, r.stored, r.status) for r in results] == [(0, True, 0), (1, True, 0), (2, True, 0)]
    assert storescp.received() == sorted(str(dcmread(p).SOPInstanceUID) for p in files)


def test_peer_down_fails_every_item(files: list[Path]) -> None:
    port = free_port()
    results = send(_peer(port), [SendItem(1, files[0])])
    # The error names the peer, so the administrator knows which host and port to check.
    assert [(r.stored, r.detail) for r in results] == [
        (False, f"connection refused by DEST@127.0.0.1:{port}: is the peer running, on that host and port?")
    ]


def test_failure_status_is_a_failure_and_warning_is_stored(files: list[Path]) -> None:
    port = free_port()
    server = _pynetdicom_scp(port, 0xA700, [CTImageStorage])
    try:
        [result] = send(_peer(port), [SendItem(1, files[0])])
        assert (result.stored, result.status) == (False, 0xA700)
    finally:
        server.shutdown()
    port = free_port()  # a fresh port: no lingering connection from the first server
    server = _pynetdicom_scp(port, 0xB000, [CTImageStorage])
    try:
        [result] = send(_peer(port), [SendItem(1, files[0])])
        assert (result.stored, result.warning, result.status) == (True, True, 0xB000)
    finally:
        server.shutdown()


def test_refused_sop_class_is_a_failure(files: list[Path]) -> None:
    port = free_port()
    server = _pynetdicom_scp(port, 0x0000, [MRImageStorage])  # accepts MR only, we offer CT
    try:
        [result] = send(_peer(port), [SendItem(1, files[0])])
    finally:
        server.shutdown()
    assert (result.stored, result.detail) == (False, f"presentation context refused by the peer DEST@127.0.0.1:{port}")


# --- the outbox -------------------------------------------------------------------------


@pytest.fixture
def outbox_db(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'o.db'}"))
    migrate.upgrade(engine)
    yield session_factory(engine)
    engine.dispose()


def _queue(sessions, files: list[Path], root: Path, destinations: list[str]) -> list[int]:  # type: ignore[no-untyped-def]
    now = utcnow()
    with sessions.begin() as session:
        study = Study(study_instance_uid="1.2.3", state=StudyState.COMPLETE, generation=1, opened_at=now, last_received_at=now)
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, study_generation=1, model_key="m@1", state=JobState.SUCCEEDED, max_attempts=1)
        session.add(job)
        session.flush()
        ids = []
        for path in files:
            ds = dcmread(path, stop_before_pixels=True)
            out = OutputObject(job_id=job.id, kind="sr", sop_class_uid=ds.SOPClassUID, sop_instance_uid=ds.SOPInstanceUID, path=str(path.relative_to(root)))
            session.add(out)
            session.flush()
            add_deliveries(session, output_id=out.id, destinations=destinations, now=now)
            add_deliveries(session, output_id=out.id, destinations=destinations, now=now)  # idempotent
            ids.append(out.id)
    return ids


POLICY = RetryPolicy(max_attempts=3, initial_delay=timedelta(seconds=10), backoff_factor=2, max_delay=timedelta(minutes=5))


def _states(sessions) -> dict[str, list[str]]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        rows = session.execute(select(Delivery.destination, Delivery.state).order_by(Delivery.id)).all()
    out: dict[str, list[str]] = {}
    for name, state in rows:
        out.setdefault(name, []).append(state.value)
    return out


def test_outbox_serves_destinations_independently_and_retries_until_up(
    outbox_db, files: list[Path], tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    _queue(outbox_db, files, tmp_path, ["up", "down"])
    up = StoreSCP(tmp_path / "up").start()
    down_port = free_port()
    clock = {"now": utcnow()}
    peers = {"up": _peer(up.port, name="up"), "down": _peer(down_port, name="down")}
    try:
        counts = serve_outbox(outbox_db, peers=peers, storage_root=tmp_path, policy=POLICY, clock=lambda _: clock["now"], owner="w", lease=timedelta(minutes=1))
        assert counts == {"up": {"sent": 3}, "down": {"pending": 3}}
        assert _states(outbox_db) == {"up": ["sent"] * 3, "down": ["pending"] * 3}
        # Nothing is due before the backoff; the sent ones are never sent again.
        assert serve_outbox(outbox_db, peers=peers, storage_root=tmp_path, policy=POLICY, clock=lambda _: clock["now"], owner="w", lease=timedelta(minutes=1)) == {}
        late = StoreSCP(tmp_path / "late", port=down_port).start()
        try:
            clock["now"] += timedelta(seconds=11)
            counts = serve_outbox(outbox_db, peers=peers, storage_root=tmp_path, policy=POLICY, clock=lambda _: clock["now"], owner="w", lease=timedelta(minutes=1))
            assert counts == {"down": {"sent": 3}}
            assert len(late.received()) == 3
        finally:
            late.stop()
        assert len(up.received()) == 3, "no duplicate at the destination that was up"
    finally:
        up.stop()


def test_outbox_dead_letters_after_the_last_attempt(outbox_db, files: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _queue(outbox_db, files[:1], tmp_path, ["refuses"])
    port = free_port()
    server = _pynetdicom_scp(port, 0xA900, [CTImageStorage])
    clock = {"now": utcnow()}
    try:
        for _ in range(3):
            serve_outbox(outbox_db, peers={"refuses": _peer(port, name="refuses")}, storage_root=tmp_path, policy=POLICY, clock=lambda _: clock["now"], owner="w", lease=timedelta(minutes=1))
            clock["now"] += timedelta(minutes=10)
    finally:
        server.shutdown()
    with outbox_db() as session:
        delivery = session.scalars(select(Delivery)).one()
    assert (delivery.state, delivery.attempts, delivery.last_status) == (DeliveryState.DEAD, 3, "0xA900")
    assert "failure 0xA900" in delivery.last_error


@pytest.mark.postgres
def test_two_workers_share_the_outbox_without_sending_twice(postgres_url: str, files: list[Path], tmp_path: Path) -> None:
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    migrate.upgrade(engine)
    sessions = session_factory(engine)
    more = write_series(SeriesSpec(n_slices=12, rows=64, columns=64, seed=5), tmp_path / "out" / "more")
    _queue(sessions, files + more, tmp_path, ["pacs"])
    pacs = StoreSCP(tmp_path / "pacs").start()
    peers = {"pacs": _peer(pacs.port, name="pacs")}
    try:
        threads = [
            threading.Thread(
                target=serve_outbox,
                args=(sessions,),
                kwargs={"peers": peers, "storage_root": tmp_path, "policy": POLICY,
                        "owner": f"worker-{i}", "lease": timedelta(minutes=1)},
            )
            for i in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        serve_outbox(sessions, peers=peers, storage_root=tmp_path, policy=POLICY, owner="late", lease=timedelta(minutes=1))
        assert len(pacs.files()) == 15, "every object exactly once"
        assert len(set(pacs.received())) == 15
        assert _states(sessions) == {"pacs": ["sent"] * 15}
    finally:
        pacs.stop()
        engine.dispose()


def test_a_sender_whose_claim_lapsed_does_not_overwrite_the_new_owner(outbox_db, files: list[Path], tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A slow worker's late answer must not mark sent (or dead) a row another worker now holds."""
    sessions = outbox_db
    _queue(sessions, files[:1], tmp_path, ["pacs"])
    now = utcnow()
    with sessions.begin() as session:
        slow = claim_due(session, owner="slow", now=now, lease=timedelta(seconds=10), destinations=["pacs"])["pacs"][0]
    later = now + timedelta(seconds=11)
    with sessions.begin() as session:
        taken = claim_due(session, owner="fast", now=later, lease=timedelta(seconds=10), destinations=["pacs"])
    assert [d.id for d in taken["pacs"]] == [slow.id], "the lapsed claim is taken over"
    with sessions.begin() as session:
        late = record_result(session, slow, SendResult(slow.id, True, 0, "stored"), owner="slow", policy=POLICY, now=later)
    assert late is None
    with sessions() as session:
        row = session.get(Delivery, slow.id)
        assert (row.state, row.claimed_by, row.attempts) == (DeliveryState.PENDING, "fast", 0)
