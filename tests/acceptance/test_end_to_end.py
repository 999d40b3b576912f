"""PACS in, results back: DCMTK storescu -> `dicom-node run` -> DCMTK storescp.

The studies are synthetic head CTs with planted hyperdense lesions of known volume.
Every object that reaches the destination is checked with highdicom and dciodvfy.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import create_engine
from sqlalchemy import text as text_sql

from tests.support.dciodvfy import run_dciodvfy
from tests.support.node import DCMTK_ENV, NODE_AE, NodeConfig, NodeProcess, cli, wait_for
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, write_series

STORESCU = "/usr/bin/storescu"
DCMCJPEG = "/usr/bin/dcmcjpeg"
POSITIVE = SeriesSpec(n_slices=40, lesions=[Lesion(center_mm=(25.0, 10.0, 0.0), radius_mm=9.0)], seed=1)
NEGATIVE = SeriesSpec(n_slices=40, seed=2)


def send_study(port: int, folder: Path, *options: str) -> None:
    result = subprocess.run(
        [STORESCU, *options, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(port), "+sd", str(folder)],
        capture_output=True, text=True, env=DCMTK_ENV, timeout=300,
    )
    assert result.returncode == 0, result.stderr


@dataclass
class Received:
    """What the destination holds for one study, by object kind."""

    segs: list[Dataset]
    srs: list[Dataset]
    key_images: list[Dataset]
    files: list[Path]


def received_for(pacs: StoreSCP, study_uid: str) -> Received:
    segs, srs, kis, files = [], [], [], []
    for path in pacs.files():
        ds = dcmread(path)
        if ds.StudyInstanceUID != study_uid:
            continue
        files.append(path)
        {SegmentationStorage: segs, Comprehensive3DSRStorage: srs, SecondaryCaptureImageStorage: kis}[ds.SOPClassUID].append(ds)
    return Received(segs, srs, kis, files)


def sr_measurements(sr: Dataset) -> dict[str, float]:
    """Lesion measurement values of a TID 1500 report, by concept name."""
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    values: dict[str, float] = {}
    for group in report.content.get_volumetric_roi_measurement_groups():
        for measurement in group.get_measurements():
            values[measurement.name.meaning] = float(measurement.value)
    return values


def assert_valid(files: list[Path]) -> None:
    for path in files:
        result = run_dciodvfy(path)
        assert not result.errors, f"{path.name}: dciodvfy errors {result.errors}"


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[StoreSCP]:
    destination = StoreSCP(tmp_path / "pacs").start()
    try:
        yield destination
    finally:
        destination.stop()


def start_node(tmp_path: Path, pacs: StoreSCP, **options: object) -> NodeProcess:
    config = NodeConfig(
        workdir=tmp_path / "node",
        quiet_period_s=2.0,
        destinations=[("pacs", "DEST", pacs.port, ["seg", "sr", "key_images"])],
        **options,  # type: ignore[arg-type]
    )
    return NodeProcess(config).start()


def test_positive_and_negative_studies_come_back_as_seg_sr_and_key_images(tmp_path: Path, pacs: StoreSCP) -> None:
    node = start_node(tmp_path, pacs)
    try:
        write_series(POSITIVE, tmp_path / "pos")
        write_series(NEGATIVE, tmp_path / "neg")
        send_study(node.config.port, tmp_path / "pos")
        send_study(node.config.port, tmp_path / "neg")
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == 4, 120, "positive results")
        wait_for(lambda: len(received_for(pacs, NEGATIVE.study_instance_uid).files) == 2, 120, "negative results")
        positive = received_for(pacs, POSITIVE.study_instance_uid)
        negative = received_for(pacs, NEGATIVE.study_instance_uid)

        # The SEG marks the planted lesion: voxel count and volume close to what was planted.
        _, planted = head_volume(POSITIVE)
        [seg] = positive.segs
        segmentation = hd.seg.Segmentation.from_dataset(seg)
        mask = segmentation.get_volume().array  # frames along the slice normal
        assert seg.SegmentationType == "BINARY" and int(seg.NumberOfFrames) == POSITIVE.n_slices
        assert abs(int(np.count_nonzero(mask)) - int(planted.sum())) <= 0.1 * planted.sum()
        measurements = sr_measurements(positive.srs[0])
        planted_ml = lesion_volume_ml(POSITIVE, planted)
        assert abs(measurements["Volume"] - planted_ml) <= 0.1 * planted_ml, (measurements, planted_ml)
        assert len(positive.key_images) == 2  # the summary and the lesion's key slice

        # The negative study gets its negative report (and no SEG: send_empty_seg is off).
        assert negative.segs == [] and len(negative.srs) == 1 and len(negative.key_images) == 1
        assert sr_measurements(negative.srs[0]) == {}
        assert "Absent" in str(negative.srs[0].ContentSequence)

        assert_valid(positive.files + negative.files)
        jobs = cli("jobs", "list", "--config", str(node.config.workdir / "dicom-node.toml"))
        assert jobs.stdout.count("succeeded") == 2, jobs.stdout
        assert POSITIVE.patient_name not in node.log() and POSITIVE.patient_id not in node.log()
        assert_audit_trail(node)
    finally:
        node.stop()


def assert_audit_trail(node: NodeProcess) -> None:
    """Who sent what, what we produced and where it went; UIDs and AE titles, no patient data."""
    rejected = AE("INTRUDER")
    rejected.add_requested_context(Verification)
    assert rejected.associate("127.0.0.1", node.config.port, ae_title=NODE_AE).is_rejected
    wait_for(lambda: '"rejected"' in (node.config.workdir / "audit.log").read_text(), 10, "the rejection audit")
    text = (node.config.workdir / "audit.log").read_text()
    events = [json.loads(line) for line in text.splitlines()]
    by_kind = {(e["event"], e.get("study_instance_uid")): e for e in events}
    received = by_kind[("received", POSITIVE.study_instance_uid)]
    assert (received["calling_ae_title"], received["peer_address"], received["count"]) == ("STORESCU", "127.0.0.1", 40)
    assert by_kind[("produced", POSITIVE.study_instance_uid)]["count"] == 4
    delivered = by_kind[("delivered", POSITIVE.study_instance_uid)]
    assert (delivered["destination"], delivered["count"]) == ("pacs", 4)
    assert by_kind[("rejected", None)]["calling_ae_title"] == "INTRUDER"
    assert POSITIVE.patient_name not in text and POSITIVE.patient_id not in text
    engine = create_engine(node.config.db_url)
    with engine.connect() as connection:
        assert connection.execute(text_sql("SELECT count(*) FROM audit_event")).scalar() == len(events)
    engine.dispose()



def test_the_shipped_models_run_the_whole_loop(tmp_path: Path, pacs: StoreSCP) -> None:
    """The product default (classifier gates, whole-stack U-Net draws) on the CPU: valid objects come back.

    The phantom is not what these models learned from (8-bit PNGs of real scans), so this
    checks the loop and the objects, not the call; the model cards hold the metrics (the
    anonymised-export test checks the default's SEG against the planted lesion).
    """
    node = start_node(tmp_path, pacs, model="classifier+unet")
    try:
        write_series(POSITIVE, tmp_path / "pos")
        send_study(node.config.port, tmp_path / "pos")
        config = str(node.config.workdir / "dicom-node.toml")
        wait_for(lambda: "succeeded" in cli("jobs", "list", "--config", config).stdout, 240, "the job")
        show = cli("jobs", "show", "1", "--config", config).stdout
        assert "ich-classifier" in show and "ich-unet-25d" in show, show
        found = re.search(r"^  result     (positive|negative), .* (\d+) lesion\(s\)$", show, re.MULTILINE)
        assert found is not None, show
        summary = {"lesions": int(found.group(2))}
        expected = 1 + 1 + summary["lesions"] + (1 if summary["lesions"] else 0)  # SR, summary, key slices, SEG
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == expected, 60, "the results")
        got = received_for(pacs, POSITIVE.study_instance_uid)
        assert len(got.srs) == 1 and len(got.segs) == (1 if summary["lesions"] else 0)
        assert_valid(got.files)
    finally:
        node.stop()
