"""Faults around delivery: a destination that is down or refuses, a worker killed mid-job,
a resend, and a compressed series through the whole loop. Real peers only."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import JPEGLosslessSV1
from pynetdicom import AE, evt
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage

from tests.acceptance.test_end_to_end import POSITIVE, assert_valid, received_for, send_study
from tests.support.node import NodeConfig, NodeProcess, cli, free_port, wait_for
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

DCMCJPEG = "/usr/bin/dcmcjpeg"
ALL_OBJECTS = ["seg", "sr", "key_images"]


def _config_path(node: NodeProcess) -> str:
    return str(node.config.workdir / "dicom-node.toml")


def _job_line(node: NodeProcess) -> str:
    return cli("jobs", "list", "--config", _config_path(node)).stdout


def test_destination_down_then_up_gets_the_results(tmp_path: Path) -> None:
    port = free_port()
    config = NodeConfig(workdir=tmp_path / "node", destinations=[("pacs", "DEST", port, ALL_OBJECTS)])
    node = NodeProcess(config).start()
    pacs = StoreSCP(tmp_path / "pacs", port=port)
    try:
        write_series(POSITIVE, tmp_path / "study")
        send_study(config.port, tmp_path / "study")
        wait_for(lambda: "succeeded" in _job_line(node), 120, "the job to succeed")
        # The log line names the peer to check and when the next try is.
        failed = re.compile(rf"delivery to pacs \(DEST@127\.0\.0\.1:{port}\) failed: [^;]+; next try at \d{{4}}-\d\d-\d\d ")
        wait_for(lambda: failed.search(node.log()) is not None, 30, "a failed delivery")
        pacs.start()
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == 4, 60, "delivery after the destination came back")
    finally:
        node.stop()
        pacs.stop()


def test_refused_sop_class_is_retried_then_dead_lettered_with_the_reason(tmp_path: Path) -> None:
    received: list[str] = []
    port = free_port()
    ae = AE("DEST")
    for uid in (Comprehensive3DSRStorage, SecondaryCaptureImageStorage):  # no Segmentation Storage
        ae.add_supported_context(uid)

    def store(event: evt.Event) -> int:
        received.append(str(event.request.AffectedSOPClassUID))
        return 0x0000

    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    config = NodeConfig(
        workdir=tmp_path / "node",
        destinations=[("picky", "DEST", port, ALL_OBJECTS)],
        delivery_max_attempts=2,
        delivery_retry_delay_s=0.5,
    )
    node = NodeProcess(config).start()
    try:
        write_series(POSITIVE, tmp_path / "study")
        send_study(config.port, tmp_path / "study")
        wait_for(lambda: "succeeded" in _job_line(node), 120, "the job to succeed")
        job_id = re.search(r"^\s*(\d+)\s+succeeded", _job_line(node), re.MULTILINE).group(1)  # type: ignore[union-attr]

        def seg_dead() -> bool:
            return bool(re.search(r"delivery\s+seg .* -> picky: dead, 2 attempt", cli("jobs", "show", job_id, "--config", _config_path(node)).stdout))

        wait_for(seg_dead, 60, "the SEG delivery to be dead-lettered")
        show = cli("jobs", "show", job_id, "--config", _config_path(node)).stdout
        assert "presentation context refused by the peer" in show, show
        assert re.search(r"delivery\s+sr .* -> picky: sent", show), show
        assert received.count(Comprehensive3DSRStorage) == 1, "the SR went once, the SEG never"
    finally:
        node.stop()
        server.shutdown()


def test_worker_killed_mid_job_is_reclaimed_and_results_arrive_once(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = NodeConfig(
        workdir=tmp_path / "node",
        destinations=[("pacs", "DEST", pacs.port, ALL_OBJECTS)],
        lease_s=4.0,
        heartbeat_s=1.0,
    )
    listener = NodeProcess(config, command="scp").start()
    worker = NodeProcess(config, command="worker").start()
    spec = SeriesSpec(n_slices=300, lesions=[Lesion(center_mm=(25.0, 10.0, 0.0), radius_mm=9.0)], seed=3)
    try:
        write_series(spec, tmp_path / "big")
        send_study(config.port, tmp_path / "big")
        wait_for(lambda: "job started" in worker.log(), 60, "the worker to start the job")
        worker.kill9()
        assert received_for(pacs, spec.study_instance_uid).files == [], "killed before any result left"
        worker.restart()
        # Same host: the restarted worker sees its predecessor is gone and takes the job back at once.
        wait_for(lambda: "reclaimed from dead process(es) of this host" in worker.log(), 60, "the job to be reclaimed")
        wait_for(lambda: len(received_for(pacs, spec.study_instance_uid).files) == 4, 180, "results after the restart")
        time.sleep(3)  # anything sent twice would arrive now
        got = received_for(pacs, spec.study_instance_uid)
        uids = [str(ds.SOPInstanceUID) for ds in got.segs + got.srs + got.key_images]
        assert len(got.files) == 4 and len(set(uids)) == 4, "exactly one set of results"
        jobs = _job_line(worker)
        assert "running" not in jobs and re.search(r"succeeded\s+2/3", jobs), jobs
    finally:
        worker.stop()
        listener.stop()
        pacs.stop()


def test_resend_replaces_and_does_not_duplicate(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = NodeConfig(workdir=tmp_path / "node", destinations=[("pacs", "DEST", pacs.port, ALL_OBJECTS)])
    node = NodeProcess(config).start()
    try:
        write_series(POSITIVE, tmp_path / "study")
        send_study(config.port, tmp_path / "study")
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == 4, 120, "results")
        first = sorted(str(dcmread(p).SOPInstanceUID) for p in received_for(pacs, POSITIVE.study_instance_uid).files)
        result = cli("resend", POSITIVE.study_instance_uid, "--to", "pacs", "--config", _config_path(node))
        assert result.returncode == 0 and "4 deliveries" in result.stdout, result.stdout + result.stderr
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == 8, 60, "the resend")
        again = sorted(str(dcmread(p).SOPInstanceUID) for p in received_for(pacs, POSITIVE.study_instance_uid).files)
        # Every object arrived a second time with the same SOP Instance UID: the PACS replaces it.
        assert again == sorted(first * 2)
    finally:
        node.stop()
        pacs.stop()


def test_jpeg_lossless_series_goes_through_the_whole_loop(tmp_path: Path) -> None:
    assert Path(DCMCJPEG).exists(), "dcmcjpeg missing: install Debian's dcmtk"
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = NodeConfig(workdir=tmp_path / "node", destinations=[("pacs", "DEST", pacs.port, ALL_OBJECTS)])
    node = NodeProcess(config).start()
    try:
        raw = write_series(POSITIVE, tmp_path / "raw")
        (tmp_path / "jpeg").mkdir()
        for path in raw:
            subprocess.run([DCMCJPEG, "+e1", "+tl", str(path), str(tmp_path / "jpeg" / path.name)], check=True, timeout=60)
        assert dcmread(tmp_path / "jpeg" / raw[0].name).file_meta.TransferSyntaxUID == JPEGLosslessSV1
        send_study(config.port, tmp_path / "jpeg", "-xs")
        wait_for(lambda: len(received_for(pacs, POSITIVE.study_instance_uid).files) == 4, 120, "results")
        got = received_for(pacs, POSITIVE.study_instance_uid)
        assert len(got.segs) == 1 and len(got.srs) == 1
        assert_valid(got.files)
    finally:
        node.stop()
        pacs.stop()
