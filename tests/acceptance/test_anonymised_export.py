"""Issue 12: anonymised head CT exports, sent by DCMTK storescu to `dicom-node run` on the example settings.

The corpus (:mod:`tests.support.anonymised_export`) has every quirk of the export
that came back with nothing: blank descriptions and body part, no Frame of
Reference, gantry tilt, JPEG Lossless (mixed with JPEG-LS and uncompressed slices
in the positive study), a missing slice, private elements, an empty Manufacturer
and character set, and a stray slice of another patient in the same association.

The node runs ``config/dicom-node.toml`` as shipped (only ports, the quiet period
and the destination are overridden, see :mod:`tests.support.example_node`), with the
product's default models on the CPU. A DCMTK storescp is the PACS. Each result that
arrives must pass dciodvfy with 0 errors, read back with highdicom, and load with
OHIF's parsers; the stray slice must get its own clear outcome.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.dciodvfy import run_dciodvfy
from tests.support import npm
from tests.support.anonymised_export import ExportCase, WrittenExport, corpus, send_folder, write_export
from tests.support.example_node import ExampleNode, JobRow
from tests.support.node import NODE_AE, REPO
from tests.support.peers import Arrived, StoreSCP

#: The first test sets the loop up: write the corpus, start the node, send, wait for RESULTS_TIMEOUT_S.
pytestmark = [pytest.mark.dcmtk, pytest.mark.slow, pytest.mark.timeout(600)]

#: Both studies analysed on 2 CPU cores with the default models, and their results sent
#: (about 60 s on a quiet machine, 2 minutes under a load average of 10).
RESULTS_TIMEOUT_S = 420.0
POLL_S = 0.5
#: Job states after which nothing more happens without an operator.
FINAL_STATES = {"succeeded", "dead", "cancelled", "skipped"}
POSITIVE, NEGATIVE = corpus()
#: OHIF's parsers, pinned, and the script that loads a SEG and an SR with them (see tests/interop/test_viewers.py).
VIEWER_DIR = REPO / "tests" / "interop" / "viewer"
OHIF_SCRIPT = "check_seg_sr.mjs"
#: Node.js running OHIF's parsers over one SEG, one SR and 39 CT slices.
OHIF_TIMEOUT_S = 120


@dataclass
class Loop:
    """The corpus after its trip through the node."""

    node: ExampleNode
    pacs: StoreSCP
    written: dict[str, WrittenExport]
    sent: dict[str, subprocess.CompletedProcess[str]]
    jobs: dict[str, JobRow]
    seconds: float

    def arrived(self, study_instance_uid: str) -> Arrived:
        return self.pacs.results_of(study_instance_uid)


def _settled(node: ExampleNode, pacs: StoreSCP, study_uids: list[str]) -> bool:
    """Every study's job is final, and each result it queued has reached the PACS."""
    jobs = node.jobs()
    for uid in study_uids:
        job = jobs.get(uid)
        if job is None or job.state not in FINAL_STATES:
            return False
        if len(pacs.results_of(uid).files) < job.deliveries:
            return False
    return True


def _study_uids() -> list[str]:
    uids = [case.spec.study_instance_uid for case in (POSITIVE, NEGATIVE)]
    return uids + [case.stray.study_instance_uid for case in (POSITIVE, NEGATIVE) if case.stray is not None]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    tmp = tmp_path_factory.mktemp("anonymised-export")
    written = {case.name: write_export(case, tmp / case.name) for case in (POSITIVE, NEGATIVE)}
    pacs = StoreSCP(tmp / "pacs").start()
    node = ExampleNode(tmp / "node", destination=("DEST", pacs.port))
    try:
        node.start()
        sent = {name: send_folder(node.port, export.folder, NODE_AE) for name, export in written.items()}
        started = time.monotonic()
        deadline = started + RESULTS_TIMEOUT_S
        while not _settled(node, pacs, _study_uids()):
            if node.process is not None and node.process.poll() is not None:
                pytest.fail(f"the node exited with {node.process.returncode}:\n{node.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"not settled within {RESULTS_TIMEOUT_S:.0f} s: {node.jobs()}\n{node.log()[-3000:]}")
            time.sleep(POLL_S)
        yield Loop(node, pacs, written, sent, node.jobs(), time.monotonic() - started)
    finally:
        node.stop()
        pacs.stop()


def _acknowledged(output: str) -> int:
    return output.count("Received Store Response (Success)")


def test_storescu_sent_every_file_unconverted(loop: Loop) -> None:
    for case in (POSITIVE, NEGATIVE):
        result = loop.sent[case.name]
        assert result.returncode == 0, result.stderr[-2000:]
        output = result.stdout + result.stderr
        assert "unable to convert" not in output
        assert _acknowledged(output) == len(loop.written[case.name].files)


@pytest.mark.parametrize("case", [POSITIVE, NEGATIVE], ids=lambda case: case.name)
def test_the_study_is_analysed_once_and_succeeds(loop: Loop, case: ExportCase) -> None:
    job = loop.jobs[case.spec.study_instance_uid]
    assert (job.state, job.attempts) == ("succeeded", 1), job
    assert job.warnings is None, "every object was built"


@pytest.mark.parametrize("case", [POSITIVE, NEGATIVE], ids=lambda case: case.name)
def test_the_image_decided_that_the_silent_header_is_a_head(loop: Loop, case: ExportCase) -> None:
    """No header field names a body part, so the recorded reason names the image rule."""
    decisions = [
        json.loads(line)["message"]
        for line in loop.node.log().splitlines()
        if line.startswith("{") and case.spec.series_instance_uid in line and "series selection" in line
    ]
    assert decisions and all("head: image (skull ring" in message for message in decisions), decisions


def test_the_stray_slice_gets_a_clear_outcome_not_a_failure(loop: Loop) -> None:
    assert POSITIVE.stray is not None
    job = loop.jobs[POSITIVE.stray.study_instance_uid]
    assert job.state == "skipped", job
    assert job.attempts <= 1, "a study too small to analyse is not retried"
    assert job.reason is not None and "1 slice" in job.reason, job
    shown = loop.node.cli("jobs", "show", str(job.id))
    assert shown.returncode == 0, shown.stderr
    assert job.reason in shown.stdout, shown.stdout
    # The example sends nothing for a skipped study; the main study is not touched by it.
    assert job.deliveries == 0 and loop.arrived(POSITIVE.stray.study_instance_uid).files == []


@pytest.mark.parametrize("case", [POSITIVE, NEGATIVE], ids=lambda case: case.name)
def test_sr_seg_and_key_images_arrive(loop: Loop, case: ExportCase) -> None:
    got = loop.arrived(case.spec.study_instance_uid)
    assert len(got.srs) == 1
    assert len(got.key_images) >= 1
    assert len(got.segs) == (1 if case.positive else 0)  # the example does not send an empty SEG


def _all_results(loop: Loop) -> list[Path]:
    return [path for uid in _study_uids() for path in loop.arrived(uid).files]


def test_every_result_passes_dciodvfy(loop: Loop) -> None:
    files = _all_results(loop)
    assert files
    for path in files:
        result = run_dciodvfy(path)
        assert not result.errors, f"{dcmread(path).SOPClassUID.name}: dciodvfy errors {result.errors}"


def _sources(case: ExportCase, loop: Loop) -> dict[str, Dataset]:
    return {ds.SOPInstanceUID: ds for ds in (dcmread(p, stop_before_pixels=True) for p in loop.written[case.name].main)}


def _centroid_mm(slices: list[Dataset], mask: np.ndarray) -> np.ndarray:
    """The centre of the marked pixels in patient millimetres, from each slice's own position and orientation."""
    points = []
    for ds, plane in zip(slices, mask, strict=True):
        rows, columns = np.nonzero(plane)
        if rows.size == 0:
            continue
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        points.append(
            position
            + np.outer(columns * column_spacing, orientation[:3])
            + np.outer(rows * row_spacing, orientation[3:])
        )
    assert points, "the SEG marks nothing"
    return np.concatenate(points).mean(axis=0)


def test_highdicom_reads_the_positive_results_back_on_the_sent_slices(loop: Loop) -> None:
    got = loop.arrived(POSITIVE.spec.study_instance_uid)
    sources = _sources(POSITIVE, loop)
    seg = hd.seg.Segmentation.from_dataset(dcmread(got.segs[0]))
    assert seg.SegmentationType == "BINARY"
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(sources), "the SEG covers exactly the slices that were sent"
    assert POSITIVE.missing_sop_instance_uid not in referenced
    # Frames by source slice (the gap of the missing slice rules out a regular volume).
    order = sorted(sources, key=lambda uid: int(sources[uid].InstanceNumber))
    mask = seg.get_pixels_by_source_instance(source_sop_instance_uids=order, assert_missing_frames_are_empty=True)
    centroid = _centroid_mm([sources[uid] for uid in order], mask.any(axis=-1))
    planted = np.array(POSITIVE.spec.lesions[0].center_mm)
    assert np.linalg.norm(centroid - planted) < POSITIVE.spec.lesions[0].radius_mm, (centroid, planted)
    # The source has no Frame of Reference: the SEG carries one the node made, not none.
    assert seg.FrameOfReferenceUID
    report = hd.sr.Comprehensive3DSR.from_dataset(dcmread(got.srs[0]))
    assert report.content.get_volumetric_roi_measurement_groups(), "the positive report names its lesion"
    for path in got.key_images:
        key_image = dcmread(path)
        assert key_image.StudyInstanceUID == POSITIVE.spec.study_instance_uid
        assert key_image.pixel_array.size > 0


def test_highdicom_reads_the_negative_report(loop: Loop) -> None:
    got = loop.arrived(NEGATIVE.spec.study_instance_uid)
    report = hd.sr.Comprehensive3DSR.from_dataset(dcmread(got.srs[0]))
    assert report.content.get_volumetric_roi_measurement_groups() == []
    assert "Absent" in str(report.ContentSequence)


@pytest.fixture(scope="module")
def ohif_parsers() -> Path:
    """The pinned npm packages, installed once into the cache, with the check script beside them."""
    target = npm.locked_packages(VIEWER_DIR)
    shutil.copy2(VIEWER_DIR / OHIF_SCRIPT, target / OHIF_SCRIPT)
    return target


def test_ohif_parsers_load_the_seg_and_sr(loop: Loop, ohif_parsers: Path) -> None:
    got = loop.arrived(POSITIVE.spec.study_instance_uid)
    ct = loop.written[POSITIVE.name].main
    completed = subprocess.run(
        [npm.tool("node"), str(ohif_parsers / OHIF_SCRIPT), "--seg", str(got.segs[0]), "--sr", str(got.srs[0]), *map(str, ct)],
        capture_output=True, text=True, timeout=OHIF_TIMEOUT_S, check=False,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]

    read: dict[str, Any] = json.loads(completed.stdout)
    assert read["warnings"] == []
    segmentation = read["segmentation"]
    assert len(segmentation["labelmap"]) == len(ct), "one labelmap image per sent slice"
    assert sum(segment["voxelCount"] for segment in segmentation["segments"]) > 0
    assert read["report"]["templateIdentifier"] == "1500"
