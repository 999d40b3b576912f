"""The read-only status page of a running node, opened in Debian's headless Chromium.

A real node receives a positive and a negative demo study and delivers to DCMTK's
storescp; a second destination is down. The page must show each study's call, volume,
stages and delivery, the failing destination with what to do, link to the configured
viewer, carry no patient name or ID, and refuse every method but GET.
"""

from __future__ import annotations

import http.client
import shutil
import subprocess
from pathlib import Path

import pytest

from dicom_node.demo import write_demo_study
from tests.acceptance.test_end_to_end import send_study
from tests.support.node import NodeConfig, NodeProcess, cli, free_port, http_get, wait_for
from tests.support.peers import StoreSCP

CHROMIUM = "/usr/bin/chromium"
VIEWER = "http://viewer.example/viewer?StudyInstanceUIDs={study_uid}"
#: Where the last screenshot is kept for a person to look at (outside the repository).
SCREENSHOT_COPY = Path("/tmp/dicom-node-status-page.png")


def _chromium(*args: str) -> subprocess.CompletedProcess[str]:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: apt-get install -y chromium (tests/run-all.sh does)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars", *args],
        capture_output=True, text=True, timeout=120,
    )


def _request(port: int, method: str) -> tuple[int, str | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, "/")
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("Allow")
    finally:
        connection.close()


def test_status_page_shows_studies_calls_deliveries_and_refuses_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    down_port = free_port()
    config = NodeConfig(
        workdir=tmp_path / "node",
        quiet_period_s=1.0,
        destinations=[("pacs", "DEST", pacs.port, ["seg", "sr", "key_images"]), ("down", "DOWN", down_port, ["sr"])],
        delivery_retry_delay_s=30.0,
    )
    # The viewer link comes from the environment, as a site's environment file would set it.
    monkeypatch.setenv("DICOM_NODE_OBSERVABILITY__VIEWER_URL", VIEWER)
    config_path = config.write()
    node = NodeProcess(config).start()
    try:
        positive = write_demo_study(tmp_path / "pos", positive=True, n_slices=16)
        negative = write_demo_study(tmp_path / "neg", positive=False, n_slices=16)
        send_study(config.port, tmp_path / "pos")
        send_study(config.port, tmp_path / "neg")
        config_arg = ("--config", str(config_path))
        wait_for(lambda: cli("jobs", "list", "--state", "succeeded", *config_arg).stdout.count("succeeded") == 2, 120, "both jobs")
        wait_for(lambda: "retrying" in http_get(config.metrics_port, "/")[1], 60, "the down destination to fail once")

        status, page = http_get(config.metrics_port, "/")
        assert status == 200
        for study in (positive, negative):
            assert study.study_instance_uid in page
            link = VIEWER.replace("{study_uid}", study.study_instance_uid)
            assert f'<a href="{link}"' in page, "each study links to the configured viewer"
        assert '<td class="positive">positive</td>' in page and '<td class="negative">negative</td>' in page
        assert " mL</td>" in page and "<td>0.0 mL</td>" in page, "the volume of each call"
        assert "infer " in page and "finished 20" in page, "the job's stages and times"
        assert "pacs: <span" in page and "down: <span" in page
        assert f"DOWN@127.0.0.1:{down_port}" in page and "retrying" in page
        assert "the destination did not answer: check that it runs and its host and port" in page
        assert "Research use only" in page
        for secret in ("Synthetic^Phantom", "Synthetic", "SYN0001"):
            assert secret not in page, f"patient data {secret!r} on the status page"
        assert "<script" not in page.lower()

        # Read-only: anything but GET is refused, and says what is allowed.
        for method in ("POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"):
            assert _request(config.metrics_port, method) == (405, "GET"), method
        assert http_get(config.metrics_port, "/nothing")[0] == 404

        # The same page in a real browser: what it renders, and a screenshot to look at.
        url = f"http://127.0.0.1:{config.metrics_port}/"
        dom = _chromium("--dump-dom", url)
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "Recent studies" in dom.stdout and positive.study_instance_uid in dom.stdout
        shot = tmp_path / "status-page.png"
        taken = _chromium("--window-size=1400,1000", f"--screenshot={shot}", url)
        assert taken.returncode == 0 and shot.exists(), taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        shutil.copyfile(shot, SCREENSHOT_COPY)

        # The log: a start-up summary, and failed deliveries with the peer and the next try.
        log = node.log()
        assert f"started: config {config_path}; database SQLite file {config.workdir / 'node.db'}; storage" in log
        # `run` supervises a listener process and a worker process: each says what it serves.
        assert f"listening as DICOMNODE on 127.0.0.1:{config.port}" in log
        assert "model threshold (hu-threshold 1) on cpu; destinations pacs, down" in log
        assert f"delivery to down (DOWN@127.0.0.1:{down_port}) failed: connection refused by DOWN@127.0.0.1:{down_port}" in log
        assert "; next try at 20" in log
    finally:
        node.stop()
        pacs.stop()
