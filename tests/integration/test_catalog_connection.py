"""The catalog keeps one connection for its batches: a connection the database drops costs no instance."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from dicom_node.config import DatabaseSettings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine
from dicom_node.db.writer_lock import WriterLock
from dicom_node.ingest.catalog import Catalog, RecordOutcome, RecordResult
from dicom_node.ingest.instance import ReceivedInstance


def _instance(n: int) -> ReceivedInstance:
    return ReceivedInstance(
        study_instance_uid="1.2.826.0.1.3680043.10.1476.9.1",
        series_instance_uid="1.2.826.0.1.3680043.10.1476.9.1.1",
        sop_instance_uid=f"1.2.826.0.1.3680043.10.1476.9.1.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        modality="CT",
        series_number=1,
        instance_number=n,
        calling_ae_title="STORESCU",
        path=f"a/b/{n}.dcm",
        size_bytes=10,
    )


def test_a_connection_killed_between_batches_is_replaced(postgres_url: str) -> None:
    engine = create_db_engine(DatabaseSettings(url=postgres_url))
    migrate.upgrade(engine, "head")
    catalog = Catalog(engine, "keep_first")
    other = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        (first,) = catalog.record_batch([_instance(1)])
        assert isinstance(first, RecordResult) and first.outcome == RecordOutcome.STORED
        with other.connect() as connection:
            killed = connection.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
        assert killed >= 1, "the catalog's connection was open between batches"
        (second,) = catalog.record_batch([_instance(2)])
        assert isinstance(second, RecordResult) and second.outcome == RecordOutcome.STORED, second
        with other.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM instance")).scalar_one() == 2
    finally:
        catalog.close()
        other.dispose()
        engine.dispose()


def _hold_writer_lock(path: str, seconds: float, ready: multiprocessing.synchronize.Event) -> None:
    with WriterLock(Path(path), timeout_s=5.0).held():
        ready.set()
        time.sleep(seconds)


def test_on_sqlite_a_batch_waits_for_another_listener_holding_the_writer_lock(tmp_path: Path) -> None:
    """Listener processes queue their transactions on the writer lock instead of colliding
    in SQLite and sleeping in its busy handler."""
    engine = create_db_engine(DatabaseSettings(url=f"sqlite:///{tmp_path / 'node.db'}"))
    migrate.upgrade(engine, "head")
    catalog = Catalog(engine, "keep_first")
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    holder = context.Process(target=_hold_writer_lock, args=(str(tmp_path / "node.db.writer-lock"), 0.5, ready))
    holder.start()
    try:
        assert ready.wait(10)
        start = time.monotonic()
        (result,) = catalog.record_batch([_instance(1)])
        waited = time.monotonic() - start
    finally:
        holder.join(10)
        catalog.close()
        engine.dispose()
    assert isinstance(result, RecordResult) and result.outcome == RecordOutcome.STORED
    assert waited > 0.3, f"recorded after {waited:.2f} s while another process held the writer lock for 0.5 s"
