"""A PACS re-export sends a slice again under a new SOP Instance UID: the study's new job
still runs, keeps the instance received last at that position, and says so in a warning
(a count, no patient data) instead of dying on "two instances share one slice position"."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.demo import TEST_UID_PREFIX
from tests.acceptance.test_end_to_end import send_study
from tests.support.node import NodeConfig, NodeProcess, cli, wait_for
from tests.support.synthetic_ct import SeriesSpec, write_series


def test_a_slice_sent_again_under_a_new_uid_is_a_warning_not_a_dead_job(tmp_path: Path) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", quiet_period_s=1.0)).start()
    config = str(node.config.workdir / "dicom-node.toml")
    try:
        spec = SeriesSpec(n_slices=8, rows=128, columns=128, pixel_spacing_mm=(1.8, 1.8))
        paths = write_series(spec, tmp_path / "first")
        send_study(node.config.port, tmp_path / "first")
        wait_for(lambda: "succeeded" in cli("jobs", "show", "1", "--config", config).stdout, 120, "the first job")

        again = dcmread(paths[3])
        again.SOPInstanceUID = generate_uid(TEST_UID_PREFIX)
        again.file_meta.MediaStorageSOPInstanceUID = again.SOPInstanceUID
        (tmp_path / "again").mkdir()
        again.save_as(tmp_path / "again" / "slice.dcm")
        send_study(node.config.port, tmp_path / "again")
        wait_for(lambda: any(s in cli("jobs", "show", "2", "--config", config).stdout for s in ("succeeded", "dead")),
                 120, "the second job to end")
        shown = cli("jobs", "show", "2", "--config", config).stdout
        assert "succeeded" in shown and "dead" not in shown, shown
        assert ("warning    1 instances repeating a slice position dropped, the one received last kept "
                "(1 with identical pixel data, 0 with different pixel data)") in shown, shown
        assert spec.patient_name not in shown and spec.patient_id not in shown
    finally:
        node.stop()
