"""`dicom-node run` started as a process, fed by DCMTK's echoscu and storescu.

The peers are Debian's DCMTK binaries, called by absolute path (pynetdicom installs
console scripts of the same names), with TCP_NODELAY=1 as NOTES.md explains.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGLosslessSV1
from sqlalchemy import create_engine, select

from dicom_node.db.models import Instance, Study
from tests.support.node import (
    CT_3SLICE,
    DCMTK_ENV,
    NODE_AE,
    NodeConfig,
    NodeProcess,
    cli,
    dataset_bytes,
    shared_data,
    wait_for,
)
from tests.support.synthetic_ct import SeriesSpec, write_series

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"
DCMCJPEG = "/usr/bin/dcmcjpeg"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[NodeProcess]:
    for tool in (STORESCU, ECHOSCU, DCMCJPEG):
        assert Path(tool).exists(), f"{tool} missing: install Debian's dcmtk (tests/run-all.sh does)"
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", quiet_period_s=2.0)).start()
    try:
        yield node
    finally:
        node.stop()


def storescu(port: int, files: list[Path], *options: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [STORESCU, "-v", *options, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
    )


def acknowledged(storescu_output: str) -> list[Path]:
    """The files storescu got a Success response for, in order."""
    done, current = [], None
    for line in storescu_output.splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif line.startswith("I: Received Store Response (Success)") and current is not None:
            done.append(current)
            current = None
    return done


def db_instances(node: NodeProcess) -> dict[str, Instance]:
    engine = create_engine(node.config.db_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(Instance)).all()
        return {row.sop_instance_uid: row for row in rows}
    finally:
        engine.dispose()


def assert_stored_as_sent(node: NodeProcess, files: list[Path]) -> None:
    """Each file is on disk (data set byte-identical) and recorded in the DB."""
    rows = db_instances(node)
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        row = rows.get(ds.SOPInstanceUID)
        assert row is not None, f"{path.name} acknowledged but not in the database"
        stored = node.config.storage_root / row.path
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path.name} changed on disk"


def study_state(node: NodeProcess, study_uid: str) -> str | None:
    engine = create_engine(node.config.db_url)
    try:
        with engine.connect() as connection:
            return connection.execute(
                select(Study.state).where(Study.study_instance_uid == study_uid)
            ).scalar()
    finally:
        engine.dispose()


def test_echoscu(running: NodeProcess) -> None:
    result = subprocess.run(
        [ECHOSCU, "-v", "-aet", "ECHOSCU", "-aec", NODE_AE, "127.0.0.1", str(running.config.port)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "Received Echo Response (Success)" in result.stderr + result.stdout


def test_real_ge_slices_are_stored_byte_identical(running: NodeProcess) -> None:
    files = sorted(shared_data(CT_3SLICE).glob("*.dcm"))
    assert len(files) == 3
    # -xi proposes Implicit VR LE only: these files are Implicit VR, so storescu sends them unconverted.
    result = storescu(running.config.port, files, "-xi")
    assert result.returncode == 0, result.stderr
    assert acknowledged(result.stderr + result.stdout) == files
    assert_stored_as_sent(running, files)


def test_synthetic_300_slice_head_ct_is_stored_and_completes(running: NodeProcess, tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=300)
    files = write_series(spec, tmp_path / "ct300")
    result = storescu(running.config.port, [tmp_path / "ct300"], "+sd")
    assert result.returncode == 0, result.stderr
    assert len(acknowledged(result.stderr + result.stdout)) == 300
    assert_stored_as_sent(running, files)
    assert len(db_instances(running)) == 300
    wait_for(lambda: study_state(running, spec.study_instance_uid) == "complete", 30, "study completion")
    status = cli("status", "--config", str(running.config.workdir / "dicom-node.toml"))
    assert re.search(rf"{re.escape(spec.study_instance_uid)}\s+complete\s+1\s+1\s+300\b", status.stdout), status.stdout
    # `run` supervises its worker, which holds the once-only ticks: the holder is run's child.
    holder = re.search(r"^TICK\s+completion: [^:]+:\d+:(\d+):\w+ until", status.stdout, re.MULTILINE)
    assert holder, status.stdout
    parent = Path(f"/proc/{holder.group(1)}/stat").read_text().rsplit(")", 1)[1].split()[1]
    assert running.process is not None and int(parent) == running.process.pid, status.stdout
    # Logs and paths carry UIDs, never the patient's name or ID.
    log = running.log()
    assert spec.study_instance_uid in log
    for secret in (spec.patient_name, spec.patient_id, "Phantom"):
        assert secret not in log and secret not in status.stdout
        assert not any(secret in str(p) for p in running.config.storage_root.rglob("*"))


def test_jpeg_lossless_series_is_stored_compressed_and_decodes(running: NodeProcess, tmp_path: Path) -> None:
    originals = write_series(SeriesSpec(n_slices=5, rows=256, columns=256), tmp_path / "raw")
    compressed = []
    for path in originals:
        target = tmp_path / "jpeg" / path.name
        target.parent.mkdir(exist_ok=True)
        subprocess.run([DCMCJPEG, "+e1", "+tl", str(path), str(target)], check=True, timeout=60)
        compressed.append(target)
    assert dcmread(compressed[0]).file_meta.TransferSyntaxUID == JPEGLosslessSV1
    result = storescu(running.config.port, compressed, "-xs")
    assert result.returncode == 0, result.stderr
    assert_stored_as_sent(running, compressed)
    rows = db_instances(running)
    for original in originals:
        ds = dcmread(original)
        stored = dcmread(running.config.storage_root / rows[ds.SOPInstanceUID].path)
        assert stored.file_meta.TransferSyntaxUID == JPEGLosslessSV1, "no transcoding on ingest"
        np.testing.assert_array_equal(stored.pixel_array, ds.pixel_array)


def test_kill_9_mid_transfer_loses_nothing_acknowledged(running: NodeProcess, tmp_path: Path) -> None:
    spec = SeriesSpec(n_slices=300)
    files = write_series(spec, tmp_path / "ct")
    sender = subprocess.Popen(
        [STORESCU, "-v", "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(running.config.port), "+sd", str(tmp_path / "ct")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=DCMTK_ENV,
    )
    wait_for(lambda: len(db_instances(running)) >= 60, 120, "60 instances to arrive")
    running.kill9()
    output, _ = sender.communicate(timeout=60)
    done = acknowledged(output)
    assert 60 <= len(done) < 300, "the kill should land mid-transfer"
    running.restart()
    assert_stored_as_sent(running, done)
    # Only acknowledged instances count; the one in flight may or may not have a row.
    assert len(db_instances(running)) in (len(done), len(done) + 1)
    assert list((running.config.storage_root / ".incoming").iterdir()) == []
    # The PACS resends the study (as it would after a failure); nothing is duplicated.
    result = storescu(running.config.port, [tmp_path / "ct"], "+sd")
    assert result.returncode == 0, result.stderr
    assert len(db_instances(running)) == 300
    assert_stored_as_sent(running, files)
    assert len(list(running.config.storage_root.rglob("*.dcm"))) == 300
    wait_for(lambda: study_state(running, spec.study_instance_uid) == "complete", 30, "completion after restart")
