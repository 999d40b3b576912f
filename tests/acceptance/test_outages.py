"""Outages with a defined behaviour: the database goes away, the disk fills up.

- PostgreSQL stopped (as in a crash or a failover) and started again: while it is down the
  listener answers every C-STORE with 0xA700 and keeps no file, /health says not ready and
  names the database, the ticks skip; when it is back, nothing needs a restart: refused
  instances are accepted when the sender retries, and every study is analysed and
  delivered once.
- The disk guard under load: four associations fill a small file system; instances past
  the guard get 0xA700 and leave nothing behind, the file system never fills, and once
  space is freed the same instances are accepted.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, func, select

from dicom_node.db.models import Instance
from tests.acceptance.test_end_to_end import received_for
from tests.support import postgres
from tests.support.disk import small_tmpfs
from tests.support.node import (
    NodeConfig,
    NodeProcess,
    cli,
    echo_ok,
    http_get,
    metric_value,
    status_code,
    store_files,
    storescu_responses,
    wait_for,
)
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

ALL_OBJECTS = ["seg", "sr", "key_images"]
A700 = 0xA700


def _delivered(node: NodeProcess, pacs: StoreSCP, spec: SeriesSpec, objects: int) -> None:
    wait_for(lambda: len(received_for(pacs, spec.study_instance_uid).files) >= objects, 180, "the results")
    received = received_for(pacs, spec.study_instance_uid)
    uids = [str(ds.SOPInstanceUID) for ds in received.segs + received.srs + received.key_images]
    assert len(uids) == objects == len(set(uids)), "exactly one result set"


@pytest.fixture
def restore_postgres() -> Iterator[None]:
    """Whatever happens in the test, PostgreSQL is running again afterwards."""
    try:
        yield
    finally:
        postgres.start()


def test_database_outage_refuses_with_a700_then_recovers_without_a_restart(
    tmp_path: Path, postgres_url: str, restore_postgres: None
) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = NodeConfig(
        workdir=tmp_path / "node",
        database_url=postgres_url,
        destinations=[("pacs", "DEST", pacs.port, ALL_OBJECTS)],
        quiet_period_s=2.0,
        delivery_retry_delay_s=0.5,
    )
    node = NodeProcess(config).start()
    lesion = [Lesion(center_mm=(20.0, 10.0, 0.0), radius_mm=8.0)]
    before = SeriesSpec(n_slices=8, rows=256, columns=256, pixel_spacing_mm=(0.9, 0.9), lesions=lesion, seed=1)
    during = SeriesSpec(n_slices=8, rows=256, columns=256, pixel_spacing_mm=(0.9, 0.9), lesions=lesion, seed=2)
    try:
        sent_before = write_series(before, tmp_path / "before")
        assert all(status_code(s) == 0 for s in store_files(config.port, sent_before))
        postgres.stop()  # the study sent before completes while the database is away
        down_at = time.monotonic()

        statuses = store_files(config.port, write_series(during, tmp_path / "during"))
        assert [status_code(s) for s in statuses] == [A700] * 8, "refused as out of resources"
        assert all("database" in str(s.ErrorComment).lower() for s in statuses if s is not None), statuses[0]
        stored = [p for p in config.storage_root.rglob("*.dcm") if during.study_instance_uid.split(".")[-1] in str(p)]
        assert not stored and not list((config.storage_root / ".incoming").iterdir()), "nothing kept of a refusal"
        code, body = http_get(config.metrics_port, "/health")
        assert code == 503 and "database" in body.lower(), body
        assert echo_ok(config.port), "the listener keeps answering"
        time.sleep(max(0.0, 6.0 - (time.monotonic() - down_at)))  # a few scans fail meanwhile
        assert node.process is not None and node.process.poll() is None, "the node survived the outage"

        postgres.start()
        wait_for(lambda: http_get(config.metrics_port, "/health")[0] == 200, 60, "health to be ready again")
        assert all(status_code(s) == 0 for s in store_files(config.port, write_series(during, tmp_path / "again")))
        _delivered(node, pacs, before, 4)
        _delivered(node, pacs, during, 4)
        jobs = cli("jobs", "list", "--config", str(config.workdir / "dicom-node.toml")).stdout
        assert jobs.count("succeeded") == 2 and "dead" not in jobs, jobs
        assert "skipped: OperationalError" in node.log(), "the ticks said why they skipped"
    finally:
        postgres.start()
        node.stop()
        pacs.stop()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 88 MiB tmpfs for the storage root: the disk that fills up."""
    with small_tmpfs(tmp_path / "small-disk", 88) as mount:
        yield mount


def test_disk_guard_trips_under_load_refuses_cleanly_and_recovers(tmp_path: Path, small_disk: Path) -> None:
    # The storage root on the small disk, the database elsewhere (as an admin would put it).
    config = NodeConfig(workdir=tmp_path / "node", min_free_mb=16, quiet_period_s=3600, storage_dir=small_disk / "storage")
    ballast = small_disk / "ballast.bin"
    ballast.write_bytes(b"\0" * 44 * 2**20)  # what the operator frees later
    series = [SeriesSpec(n_slices=30, seed=i) for i in range(4)]  # 4 × 30 × 0.5 MB = 60 MB offered
    folders = [write_series(spec, tmp_path / f"s{i}") for i, spec in enumerate(series)]
    node = NodeProcess(config).start()
    try:
        results: dict[int, dict[Path, str]] = {}
        lowest_free: list[int] = []

        def send(i: int) -> None:
            results[i] = storescu_responses(node.config.port, folders[i])

        def watch(stop: threading.Event) -> None:
            while not stop.wait(0.02):
                lowest_free.append(shutil.disk_usage(small_disk).free)

        stop = threading.Event()
        watcher = threading.Thread(target=watch, args=(stop,))
        senders = [threading.Thread(target=send, args=(i,)) for i in range(4)]
        watcher.start()
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(300)
        stop.set()
        watcher.join()

        answers = [a for i in range(4) for a in results[i].values()]
        accepted, refused = answers.count("Success"), answers.count("Refused: OutOfResources")
        assert accepted + refused == 120 and 40 <= accepted <= 90 and refused > 0, Counter(answers)
        assert min(lowest_free) > 8 * 2**20, "the guard kept a margin: the file system never filled"
        engine = create_engine(node.config.db_url)
        with engine.connect() as connection:
            rows = connection.scalar(select(func.count(Instance.id)))
        files = [p for p in (small_disk / "storage").rglob("*.dcm")]
        assert rows == accepted == len(files), "exactly the accepted instances are stored and recorded"
        assert not [p for p in (small_disk / "storage" / ".incoming").iterdir()], "no partial file"
        _, page = http_get(node.config.metrics_port, "/metrics")
        assert metric_value(page, "dicom_node_disk_free_bytes") < 17 * 2**20, "the metric shows the disk at the guard"
        assert echo_ok(node.config.port)

        ballast.unlink()  # the operator frees space
        for i in range(4):
            refused_paths = [p for p, answer in results[i].items() if answer != "Success"]
            if refused_paths:
                again = storescu_responses(node.config.port, refused_paths)
                assert list(again.values()) == ["Success"] * len(refused_paths), again
        with engine.connect() as connection:
            assert connection.scalar(select(func.count(Instance.id))) == 120
        engine.dispose()
        stored = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in (small_disk / "storage").rglob("*.dcm")}
        assert len(stored) == 120
        print(f"\ndisk guard under load: {accepted} accepted, {refused} refused with 0xA700 before space was freed; "
              f"lowest free space {min(lowest_free) / 2**20:.1f} MiB (guard 16 MiB)")
    finally:
        node.stop()
