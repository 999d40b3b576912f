"""The /metrics and /health endpoints of a running node, and `dicom-node status`."""

from __future__ import annotations

import shutil
from pathlib import Path

from sqlalchemy import create_engine, text

from dicom_node.db.state import database_problem
from tests.acceptance.test_end_to_end import send_study
from tests.support.node import NodeConfig, NodeProcess, cli, echo_ok, http_get, metric_value, wait_for
from tests.support.synthetic_ct import SeriesSpec, write_series


def test_metrics_count_what_the_node_did(tmp_path: Path) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", quiet_period_s=1.0)).start()
    try:
        spec = SeriesSpec(n_slices=6, rows=128, columns=128)
        write_series(spec, tmp_path / "s")
        send_study(node.config.port, tmp_path / "s")
        wait_for(lambda: "succeeded" in cli("jobs", "list", "--config", str(node.config.workdir / "dicom-node.toml")).stdout, 60, "the job")
        # An analysed job says why its series counted as a head, as a skipped one says why not.
        shown = cli("jobs", "show", "1", "--config", str(node.config.workdir / "dicom-node.toml")).stdout
        assert "  selected   head: header BodyPartExamined=HEAD" in shown, shown
        status, body = http_get(node.config.metrics_port, "/metrics")
        assert status == 200
        assert metric_value(body, 'dicom_node_instances_received_total{outcome="stored"}') == 6
        assert metric_value(body, 'dicom_node_associations_total{result="accepted"}') >= 2  # echo + store
        assert metric_value(body, "dicom_node_received_bytes_total") > 6 * 128 * 128 * 2
        assert metric_value(body, 'dicom_node_studies{state="complete"}') == 1
        assert metric_value(body, 'dicom_node_jobs{state="succeeded"}') == 1
        assert metric_value(body, "dicom_node_disk_free_bytes") > 0
        assert metric_value(body, 'dicom_node_job_stage_seconds_count{stage="infer"}') == 1
        assert http_get(node.config.metrics_port, "/health") == (200, "ready\n")
        assert spec.patient_name not in body and spec.patient_id not in body
    finally:
        node.stop()


def test_health_reports_not_ready_when_the_database_goes_away(tmp_path: Path, postgres_url: str) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", database_url=postgres_url)).start()
    try:
        assert http_get(node.config.metrics_port, "/health")[0] == 200
        name = postgres_url.rsplit("/", 1)[1]
        admin = create_engine(postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()
        status, body = http_get(node.config.metrics_port, "/health")
        assert status == 503 and "database unavailable" in body, body
    finally:
        node.stop()


def test_health_reports_the_disk_guard(tmp_path: Path) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", min_free_mb=2**40)).start()
    try:
        status, body = http_get(node.config.metrics_port, "/health")
        assert status == 503 and "disk guard" in body, body
        # `status` and the page say so too, not only /health and the log.
        config = str(node.config.workdir / "dicom-node.toml")
        shown = cli("status", "--config", config).stdout
        assert f"guard {2**40} MiB: refusing C-STORE (A700)" in shown and "DISK         listener pid" in shown, shown
        assert "what to do: free space under storage.root" in shown, shown
        page = http_get(node.config.metrics_port, "/")[1]
        assert 'id="disk" class="failing"' in page and "refusing C-STORE (A700)" in page, page
    finally:
        node.stop()


def test_status_with_another_config_than_the_node_names_the_node_s_file(tmp_path: Path) -> None:
    """`status --config OTHER` describes the node that runs: the node's page (not OTHER's port),
    callers rejected judged by no file but the node's, and one line that says the node reads another file."""
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node")).start()
    try:
        node_config = (node.config.workdir / "dicom-node.toml").resolve()
        assert not echo_ok(node.config.port, "NEWSCU")  # rejected by the node's file
        # Another file on the same database: another page port, and NEWSCU allowed in it.
        elsewhere = NodeConfig(workdir=tmp_path / "other", database_url=node.config.db_url,
                               allowed_callers=[("NEWSCU", None)])
        other = elsewhere.write().resolve()
        wait_for(lambda: "REJECTED     NEWSCU" in cli("status", "--config", str(other)).stdout, 10, "the rejection recorded")
        shown = cli("status", "--config", str(other)).stdout
        assert f"CONFIG       {other}" in shown, shown
        assert f"the running node reads {node_config}: destinations below are this file's" in shown, shown
        assert (f"web page: http://127.0.0.1:{node.config.metrics_port}/ (this file says "
                f"http://127.0.0.1:{elsewhere.metrics_port}/: the node serves it once restarted with this file)") in shown, shown
        rejected = next(line for line in shown.splitlines() if line.startswith("REJECTED     NEWSCU"))
        assert "(allowed now)" not in rejected, rejected
        same = cli("status", "--config", str(node_config)).stdout
        assert f"CONFIG       {node_config}" in same and "the running node reads" not in same, same
        assert "DISK         listener pid" in same and ": ok" in same, same
        assert f"web page: http://127.0.0.1:{node.config.metrics_port}/\n" in same, same
    finally:
        node.stop()


def test_metrics_keep_answering_while_the_storage_is_gone(tmp_path: Path) -> None:
    """/health says the storage is away; /metrics still serves every other series meanwhile."""
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node")).start()
    try:
        shutil.rmtree(node.config.storage_root)
        status, body = http_get(node.config.metrics_port, "/metrics")
        assert status == 200 and "dicom_node_associations_total" in body
        assert "dicom_node_disk_free_bytes" not in body
        status, health = http_get(node.config.metrics_port, "/health")
        assert status == 503 and "storage" in health, health
    finally:
        node.stop()


def test_a_database_without_our_schema_is_not_ready(tmp_path: Path) -> None:
    """SQLite answers SELECT 1 even from a new, empty file (one deleted under us, say)."""
    empty = create_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    problem = database_problem(empty)
    empty.dispose()
    assert problem is not None and problem.startswith("database unavailable")
