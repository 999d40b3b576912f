"""End to end on Orthanc: PACS -> dicom-node -> the same PACS.

Orthanc, started by the test on loopback, stands in for the PACS. It sends the study
to the node with its REST ``/modalities/node/store`` call. The node sends its results
back to Orthanc, and the test reads them back through Orthanc's REST API and checks
them with highdicom.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage

from tests.support.node import NODE_AE, NodeConfig, NodeProcess, free_port
from tests.support.orthanc import Orthanc, require_orthanc
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, write_series

POSITIVE = SeriesSpec(n_slices=40, lesions=[Lesion(center_mm=(25.0, 10.0, 0.0), radius_mm=9.0)], seed=1)
EXPECTED_RESULTS = 4  # SEG, SR and two key images (summary + the lesion's key slice)


@contextmanager
def orthanc_and_node(tmp_path: Path) -> Iterator[tuple[Orthanc, NodeProcess]]:
    """Orthanc knowing the node as modality "node", and a node sending back to Orthanc.

    A context manager rather than a fixture, so that a missing Orthanc fails the test
    (with the message of :func:`require_orthanc`) instead of erroring in setup.
    """
    require_orthanc()
    node_port = free_port()
    pacs = Orthanc(tmp_path / "orthanc", modalities={"node": (NODE_AE, "127.0.0.1", node_port)})
    node: NodeProcess | None = None
    try:
        pacs.start()
        config = NodeConfig(workdir=tmp_path / "node", port=node_port, quiet_period_s=2.0)
        config.allowed_callers.append(("ORTHANC", None))
        config.destinations = [("orthanc", pacs.ae_title, pacs.dicom_port, ["seg", "sr", "key_images"])]
        node = NodeProcess(config)
        node.start()
        yield pacs, node
    finally:
        if node is not None and node.process is not None:
            node.stop()
        pacs.stop()


def wait_for_results(pacs: Orthanc, study_id: str, source_series_id: str, node: NodeProcess) -> list[dict[str, Any]]:
    """The study's series other than the source, once they hold every expected result."""
    deadline, results = time.monotonic() + 120, []
    while time.monotonic() < deadline:
        results = [s for s in pacs.study_series(study_id) if s["ID"] != source_series_id]
        if sum(len(s["Instances"]) for s in results) >= EXPECTED_RESULTS:
            return results
        time.sleep(0.5)
    raise AssertionError(
        f"Orthanc did not receive {EXPECTED_RESULTS} result objects within 120 s; it holds "
        f"{[(s['MainDicomTags'].get('Modality'), len(s['Instances'])) for s in results]}\n"
        f"node log tail:\n{node.log()[-3000:]}\nOrthanc log tail:\n{pacs.log_tail()}"
    )


@pytest.mark.slow
def test_orthanc_sends_a_study_and_gets_seg_sr_and_key_images_back(tmp_path: Path) -> None:
    with orthanc_and_node(tmp_path) as (pacs, node):
        check_round_trip(tmp_path, pacs, node)


def check_round_trip(tmp_path: Path, pacs: Orthanc, node: NodeProcess) -> None:
    uploaded = pacs.upload_files(write_series(POSITIVE, tmp_path / "study"))
    study_id, source_series_id = uploaded[0]["ParentStudy"], uploaded[0]["ParentSeries"]
    assert pacs.lookup_study(POSITIVE.study_instance_uid) == study_id

    sent = pacs.store_to_modality("node", [study_id])
    assert int(sent["InstancesCount"]) == POSITIVE.n_slices and int(sent["FailedInstancesCount"]) == 0, sent

    results = wait_for_results(pacs, study_id, source_series_id, node)
    # Three new series in the same study, one SOP class each: SEG, SR, two key images.
    assert len(results) == 3, [(s["MainDicomTags"].get("Modality"), len(s["Instances"])) for s in results]
    datasets: dict[str, list[Dataset]] = {}
    for series in results:
        instances = [pacs.instance_dataset(instance_id) for instance_id in series["Instances"]]
        classes = {str(ds.SOPClassUID) for ds in instances}
        assert len(classes) == 1, f"series {series['ID']} mixes SOP classes {classes}"
        datasets.setdefault(classes.pop(), []).extend(instances)
    assert sorted(datasets) == sorted([SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage])
    [seg] = datasets[SegmentationStorage]
    [sr] = datasets[Comprehensive3DSRStorage]
    assert len(datasets[SecondaryCaptureImageStorage]) == 2
    for ds in (seg, sr, *datasets[SecondaryCaptureImageStorage]):
        assert ds.StudyInstanceUID == POSITIVE.study_instance_uid
        assert ds.PatientID == POSITIVE.patient_id

    # The SEG marks the planted lesion and references the source series.
    _, planted = head_volume(POSITIVE)
    segmentation = hd.seg.Segmentation.from_dataset(seg)
    voxels = int(np.count_nonzero(segmentation.get_volume().array))
    assert abs(voxels - int(planted.sum())) <= 0.1 * planted.sum(), (voxels, int(planted.sum()))
    assert [s.SeriesInstanceUID for s in seg.ReferencedSeriesSequence] == [POSITIVE.series_instance_uid]

    # The SR measures the planted volume, and its evidence and lesion group reference the SEG.
    report = hd.sr.Comprehensive3DSR.from_dataset(sr)
    [group] = report.content.get_volumetric_roi_measurement_groups()
    volume_ml = {m.name.meaning: float(m.value) for m in group.get_measurements()}["Volume"]
    planted_ml = lesion_volume_ml(POSITIVE, planted)
    assert abs(volume_ml - planted_ml) <= 0.1 * planted_ml, (volume_ml, planted_ml)
    evidence = report.get_evidence()
    assert (seg.StudyInstanceUID, seg.SeriesInstanceUID, seg.SOPInstanceUID, SegmentationStorage) in evidence
    assert {uid[1] for uid in evidence} == {POSITIVE.series_instance_uid, seg.SeriesInstanceUID}
    reference = group.referenced_segment
    assert reference is not None and reference.referenced_sop_instance_uid == seg.SOPInstanceUID
