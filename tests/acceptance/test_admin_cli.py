"""The commands an administrator meets in the first hour, through the CLI, with what they say.

Rows are written directly into a migrated database where a running node is not the
point (a dead job, a running job with its lease, deliveries left for a removed
destination); the status page test runs a real node.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread

from dicom_node.config import load_settings
from dicom_node.db import migrate
from dicom_node.db.models import (
    Delivery,
    DeliveryState,
    Job,
    JobState,
    OutputObject,
    Study,
    StudyState,
    utcnow,
)
from dicom_node.db.session import create_db_engine, session_factory
from tests.conftest import RunningNode
from tests.support.node import REPO, NodeConfig, NodeProcess, cli, free_port, wait_for

STUDY = "1.2.826.0.1.3680043.10.1476.99.1001"
RUNNING_STUDY = "1.2.826.0.1.3680043.10.1476.99.1002"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A node with one destination, a succeeded job (with one delivery left for a removed
    destination), a dead job, and a running job under a lease."""
    path = NodeConfig(workdir=tmp_path, destinations=[("pacs", "PACS", 11999, ["seg", "sr", "key_images"])]).write()
    engine = create_db_engine(load_settings(path).database)
    migrate.upgrade(engine)
    now = utcnow()
    with session_factory(engine).begin() as session:
        studies = {}
        for uid in (STUDY, RUNNING_STUDY, STUDY + ".9"):
            studies[uid] = Study(study_instance_uid=uid, state=StudyState.COMPLETE, generation=1,
                                 opened_at=now, last_received_at=now, completed_at=now, completion_reason="quiet")
            session.add(studies[uid])
        session.flush()
        summary = {"hemorrhage": True, "probability": 0.91, "lesions": 1, "total_volume_ml": 7.08,
                   "timings_s": {"load": 0.3, "infer": 1.2}}
        done = Job(study_id=studies[STUDY].id, study_generation=1, model_key="m@1", state=JobState.SUCCEEDED,
                   attempts=1, max_attempts=3, summary=json.dumps(summary), created_at=now, finished_at=now)
        dead = Job(study_id=studies[STUDY + ".9"].id, study_generation=1, model_key="m@1", state=JobState.DEAD,
                   attempts=1, max_attempts=3, last_error="no series qualifies for analysis (1.2.3: modality MR)")
        running = Job(study_id=studies[RUNNING_STUDY].id, study_generation=1, model_key="m@1", state=JobState.RUNNING,
                      attempts=1, max_attempts=3, lease_owner="otherhost:4026531836:4242:cafe0001",
                      started_at=now, lease_expires_at=now + timedelta(seconds=590))
        session.add_all([done, dead, running])
        session.flush()
        output = OutputObject(job_id=done.id, kind="sr", sop_class_uid="1.2.840.10008.5.1.4.1.1.88.34",
                              sop_instance_uid=STUDY + ".5", path="results/x.dcm")
        session.add(output)
        session.flush()
        session.add_all([
            Delivery(output_id=output.id, destination="pacs", state=DeliveryState.SENT, attempts=1, sent_at=now),
            Delivery(output_id=output.id, destination="oldpacs", state=DeliveryState.PENDING, attempts=4,
                     last_error="association aborted or peer unreachable (OLD@10.0.0.9:104)"),
        ])
    engine.dispose()
    return path


def test_status_shows_the_call_the_volume_and_the_delivery_of_each_study(config: Path) -> None:
    out = cli("status", "--config", str(config)).stdout
    line = next(line for line in out.splitlines() if line.startswith(STUDY + " "))
    assert "succeeded" in line and "positive" in line and "0.91" in line and "7.1 mL" in line, line
    assert "oldpacs: 1 pending; pacs: 1 sent" in line, line
    dead = next(line for line in out.splitlines() if line.startswith(STUDY + ".9 "))
    assert "dead" in dead
    # A destination removed from the configuration still shows, with how to drop what waits for it.
    assert "DESTINATION  oldpacs (not configured (`dicom-node jobs cancel-deliveries --to oldpacs`" in out, out
    assert "DESTINATION  pacs (PACS@127.0.0.1:11999): ok; 1 sent" in out, out
    # Every error comes with what to do.
    assert "no series qualifies" in out and "what to do: the study has no series the model can use" in out


def test_status_of_one_study_shows_its_jobs_and_deliveries(config: Path) -> None:
    out = cli("status", STUDY, "--config", str(config)).stdout
    assert f"study {STUDY}" in out and "complete, generation 1" in out
    assert "result     positive, probability 0.91, volume 7.08 mL, 1 lesion(s)" in out
    assert "stages     load 0.30 s, infer 1.20 s" in out
    shown = cli("jobs", "show", "1", "--config", str(config)).stdout
    assert re.search(r"-> oldpacs: pending, 4 attempt\(s\), next try 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC, last status association aborted or peer unreachable \(OLD@10.0.0.9:104\)$", shown, re.M), shown
    assert "delivery   oldpacs: 1 pending" in out and "last problem: association aborted or peer unreachable (OLD@10.0.0.9:104)" in out
    unknown = cli("status", STUDY + ".77", "--config", str(config))
    assert unknown.returncode == 1
    assert f"no study {STUDY}.77 was received by this node" in unknown.stderr, unknown.stderr


def test_jobs_show_gives_utc_times_and_the_lease_expiry(config: Path) -> None:
    listed = cli("jobs", "list", "--study", RUNNING_STUDY, "--config", str(config)).stdout
    rows = [line for line in listed.splitlines()[1:] if line.strip()]
    assert len(rows) == 1 and RUNNING_STUDY in rows[0] and "running" in rows[0], listed
    job_id = rows[0].split()[0]
    out = cli("jobs", "show", job_id, "--config", str(config)).stdout
    assert f"study      {RUNNING_STUDY}" in out
    assert "started    20" in out and out.count(" UTC") >= 3
    line = next(line for line in out.splitlines() if line.startswith("  worker"))
    assert "otherhost:4026531836:4242:cafe0001, lease until 20" in line and " UTC (in " in line, line
    missing = cli("jobs", "show", "999", "--config", str(config))
    assert missing.returncode == 1 and "`dicom-node jobs list`" in missing.stderr


def test_resend_says_what_is_wrong_and_what_to_do(config: Path, tmp_path: Path) -> None:
    unknown = cli("resend", STUDY + ".8", "--config", str(config))
    assert unknown.returncode == 1
    assert f"no study {STUDY}.8 was received by this node" in unknown.stderr
    assert f"did you mean {STUDY}" in unknown.stderr, unknown.stderr
    dead = cli("resend", STUDY + ".9", "--config", str(config))
    assert dead.returncode == 1 and "has no results to send: its latest job 2 is dead" in dead.stderr, dead.stderr
    wrong = cli("resend", STUDY, "--to", "nosuch", "--config", str(config))
    assert wrong.returncode == 2
    assert f"no configured destination named 'nosuch' in {config}; configured: pacs" in wrong.stderr
    # As the README prints it: no --to sends to every configured destination.
    ok = cli("resend", STUDY, "--config", str(config))
    assert ok.returncode == 0 and ok.stdout.strip() == "1 deliveries of job 1 queued for pacs", ok.stdout + ok.stderr
    # The attempt count restarts; `jobs show` says it was resent, and when.
    shown = cli("jobs", "show", "1", "--config", str(config)).stdout
    assert re.search(r"-> pacs: pending, 0 attempt\(s\), resent 1 time\(s\), last 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown), shown
    listed = cli("status", "--config", str(config)).stdout
    assert re.search(r"pacs: 1 pending \(resent 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d UTC\)", listed), listed
    bare = NodeConfig(workdir=tmp_path / "bare", database_url=load_settings(config).database.url).write()
    none = cli("resend", STUDY, "--config", str(bare))
    assert none.returncode == 2 and "no destination is configured" in none.stderr and "[[destinations]]" in none.stderr


def test_pending_deliveries_of_a_removed_destination_can_be_cancelled(config: Path) -> None:
    nothing = cli("jobs", "cancel-deliveries", "--to", "nosuch", "--config", str(config))
    assert nothing.returncode == 1
    assert "no pending delivery to 'nosuch'; destinations with pending deliveries: oldpacs" in nothing.stderr
    done = cli("jobs", "cancel-deliveries", "--to", "oldpacs", "--config", str(config))
    assert done.returncode == 0 and done.stdout.strip() == "1 pending deliveries to oldpacs cancelled"
    status = cli("status", "--config", str(config)).stdout
    assert "oldpacs: 1 cancelled" in status and "1 pending" not in status


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "node").write()
    database = tmp_path / "node" / "node.db"
    for command in (("status",), ("jobs", "list"), ("jobs", "show", "1"), ("resend", STUDY)):
        result = cli(*command, "--config", str(config))
        assert result.returncode == 3, (command, result.stderr)  # 3: no database at our schema
        assert f"no database at SQLite file {database}" in result.stderr, result.stderr
        assert "dicom-node db upgrade --config PATH" in result.stderr
    assert not database.exists()
    # An empty file (another database, or one never migrated) is named with its path.
    database.touch()
    empty = cli("status", "--config", str(config))
    assert empty.returncode == 3
    assert f"database SQLite file {database} is at revision (empty)" in empty.stderr
    assert f"run `dicom-node db upgrade --config {config}`" in empty.stderr and "DICOM_NODE_CONFIG" in empty.stderr


def test_status_reads_the_settings_file_from_the_environment(config: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "DICOM_NODE_CONFIG": str(config)}
    result = cli("status", env=env)
    assert result.returncode == 0 and STUDY in result.stdout


def test_demo_writes_a_positive_or_negative_head_ct(tmp_path: Path) -> None:
    positive = cli("demo", str(tmp_path / "pos"), "--slices", "12")
    assert positive.returncode == 0, positive.stderr
    assert "12 CT images written" in positive.stdout and "planted bleed of" in positive.stdout
    negative = cli("demo", "--negative", str(tmp_path / "neg"), "--slices", "12")
    assert negative.returncode == 0 and "no bleed" in negative.stdout
    pos = [dcmread(p) for p in sorted((tmp_path / "pos").iterdir())]
    neg = [dcmread(p) for p in sorted((tmp_path / "neg").iterdir())]
    assert len(pos) == len(neg) == 12 and {ds.Modality for ds in pos} == {"CT"}
    assert pos[0].StudyInstanceUID != neg[0].StudyInstanceUID
    # The storescu line is the one for the node of the settings read, not a fixed 11112.
    assert "/usr/bin/storescu -aet STORESCU -aec DICOMNODE 127.0.0.1 11112 -xs +sd" in positive.stdout, positive.stdout


def test_demo_s_send_line_uses_the_configured_port_and_a_chest_ct_is_skipped(tmp_path: Path) -> None:
    """The printed line, run as printed, reaches the node; `--chest` makes a series that is not a head."""
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node", quiet_period_s=1.0)).start()
    try:
        config = str(node.config.workdir / "dicom-node.toml")
        written = cli("demo", str(tmp_path / "chest"), "--slices", "8", "--chest", "--config", config)
        assert written.returncode == 0 and "chest CT, not a head" in written.stdout, written.stdout + written.stderr
        line = written.stdout.strip().splitlines()[-1].strip()
        assert f" 127.0.0.1 {node.config.port} -xs +sd {tmp_path / 'chest'}" in line and "11112" not in line, line
        sent = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        headers = [dcmread(p) for p in sorted((tmp_path / "chest").iterdir())]
        assert {ds.BodyPartExamined for ds in headers} == {"CHEST"} and len(headers) == 8
        uid = headers[0].StudyInstanceUID
        wait_for(lambda: "skipped" in cli("status", uid, "--config", config).stdout, 120, "the skipped job")
        shown = cli("status", uid, "--config", config).stdout
        assert "not head: header says CHEST" in shown, shown
    finally:
        node.stop()


def test_echo_says_why_it_failed_and_what_to_try(node: RunningNode, tmp_path: Path) -> None:
    """Against a real listener: an unknown calling AE title is rejected with the reason, and
    the hint names --calling-ae; with an allowed one the same command succeeds."""
    peer = f"DICOMNODE@127.0.0.1:{node.port}"
    rejected = cli("echo", peer, "--calling-ae", "NOBODY", "--timeout", "5")
    assert rejected.returncode == 1
    assert f"association rejected by {peer}: Rejected Permanent, by the Service User: Calling AE title not recognised" in rejected.stderr, rejected.stderr
    assert "try --calling-ae" in rejected.stderr and "'NOBODY'" in rejected.stderr
    ok = cli("echo", peer, "--calling-ae", "ECHOSCU")
    assert ok.returncode == 0 and ok.stdout.strip() == f"C-ECHO to {peer}: success"
    closed = free_port()
    refused = cli("echo", f"X@127.0.0.1:{closed}", "--timeout", "3")
    # Refused at once, and said so: not "within 3 s", and none of pynetdicom's own log lines.
    assert refused.returncode == 1
    assert refused.stderr.strip() == f"connection refused by X@127.0.0.1:{closed}: is the peer running, on that host and port?", refused.stderr
    # A configured destination by its name, calling with [node] ae_title from --config.
    config = NodeConfig(workdir=tmp_path / "n", destinations=[("self", "DICOMNODE", node.port, ["sr"])]).write()
    by_name = cli("echo", "self", "--config", str(config))
    assert by_name.returncode == 1 and "our calling AE title 'DICOMNODE'" in by_name.stderr, by_name.stderr
    unknown = cli("echo", "nosuch", "--config", str(config))
    assert unknown.returncode == 2 and "dicom-node.toml: self" in unknown.stderr and "configured destinations in " in unknown.stderr, unknown.stderr


def test_a_settings_file_finds_its_database_from_any_directory(tmp_path: Path) -> None:
    """The README walk: a copy of the example in .dicom-node/, used from another directory.

    Its relative paths are relative to the file, so `status` run elsewhere reads the node's
    database instead of asking for a second one, and creates nothing where it runs.
    """
    walk = tmp_path / "walk"
    config = walk / ".dicom-node" / "dicom-node.toml"
    config.parent.mkdir(parents=True)
    config.write_text((REPO / "config" / "dicom-node.toml").read_text(encoding="utf-8"), encoding="utf-8")
    database = walk / ".dicom-node" / "dicom-node.db"
    upgraded = cli("db", "upgrade", "--config", str(config), cwd=walk)
    assert upgraded.stdout.strip() == f"database SQLite file {database}: schema created at revision {migrate.head_revision()}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = cli("status", "--config", str(config), cwd=elsewhere)
    assert status.returncode == 0, status.stderr
    assert "(no studies received yet)" in status.stdout
    assert list(elsewhere.iterdir()) == [], "a read-only command created something where it ran"
    shown = cli("config", "show", "--config", str(config), cwd=elsewhere).stdout
    assert f'root = "{walk / ".dicom-node" / "storage"}"' in shown, shown
    assert f"# relative paths: of the file and defaults under {config.parent}" in shown


def test_echo_tells_a_silent_port_from_one_that_drops_the_connection(tmp_path: Path) -> None:
    """Two ports that are not DICOM peers, as a firewall or a wrong port looks: one accepts the
    TCP connection and says nothing (timed out, after the time-out), one closes it at once (aborted)."""
    silent = socket.create_server(("127.0.0.1", 0))  # listens; the kernel completes the handshake
    dropping = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def drop() -> None:
        dropping.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = dropping.accept()
            except TimeoutError:
                continue
            connection.close()

    dropper = threading.Thread(target=drop, daemon=True)
    dropper.start()
    try:
        config = NodeConfig(workdir=tmp_path).write()  # JSON logging: pynetdicom's lines would show as JSON
        port = silent.getsockname()[1]
        timed_out = cli("echo", f"X@127.0.0.1:{port}", "--timeout", "2", "--config", str(config))
        assert timed_out.returncode == 1
        assert timed_out.stderr.strip() == (
            f"X@127.0.0.1:{port} accepted the connection but did not answer the association request within 2 s "
            "(timed out); is it a DICOM port? does it want TLS?"
        ), timed_out.stderr
        port = dropping.getsockname()[1]
        aborted = cli("echo", f"X@127.0.0.1:{port}", "--timeout", "5", "--config", str(config))
        assert aborted.returncode == 1
        assert aborted.stderr.startswith(f"association aborted by X@127.0.0.1:{port} before it was accepted; check the peer's log")
        assert len(aborted.stderr.strip().splitlines()) == 1, aborted.stderr
    finally:
        stop.set()
        dropper.join(timeout=5)
        silent.close()
        dropping.close()


def test_echo_by_name_says_which_settings_it_looked_the_name_up_in(tmp_path: Path) -> None:
    """Without --config: the checkout's config/dicom-node.toml, as the other commands; outside
    a checkout, that no settings were read (not just "unknown destination")."""
    env = {k: v for k, v in os.environ.items() if k != "DICOM_NODE_CONFIG"}
    env["PYTHONPATH"] = str(REPO)
    nowhere = cli("echo", "pacs", env=env, cwd=tmp_path)
    assert nowhere.returncode == 2 and "no settings file was read (pass --config or set DICOM_NODE_CONFIG" in nowhere.stderr, nowhere.stderr
    here = cli("echo", "pacs", env=env)
    assert here.returncode == 2 and "configured destinations in config/dicom-node.toml: none" in here.stderr, here.stderr


def test_problems_set_by_the_environment_name_their_variables(tmp_path: Path) -> None:
    """The database URL from DICOM_NODE_DATABASE__URL says so when the file is missing; `config
    check` names every variable behind its problems, a misspelt section included."""
    missing = tmp_path / "nowhere" / "node.db"
    env = {**os.environ, "DICOM_NODE_DATABASE__URL": f"sqlite:///{missing}"}
    status = cli("status", "--config", str(REPO / "config" / "dicom-node.toml"), env=env)
    assert status.returncode == 3, status.stderr
    assert f"from environment variable DICOM_NODE_DATABASE__URL = 'sqlite:///{missing}'" in status.stderr, status.stderr
    env = {**os.environ, "DICOM_NODE_NODEX__PORT": "1", "DICOM_NODE_NODE__PORT": "abc"}
    check = cli("config", "check", str(REPO / "config" / "dicom-node.toml"), env=env)
    assert check.returncode == 1
    assert check.stdout.strip().splitlines()[-1].endswith(
        "or the environment (DICOM_NODE_NODEX__PORT, DICOM_NODE_NODE__PORT)"
    ), check.stdout
