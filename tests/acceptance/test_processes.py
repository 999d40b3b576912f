"""`dicom-node run` as a supervisor: listener processes sharing the port, a worker beside them,
children that die with the parent, and a crashed child restarted while the listener answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select

from dicom_node.db.models import Instance
from tests.support.node import DCMTK_ENV, NODE_AE, NodeConfig, NodeProcess, echo_ok, http_get, metric_value, wait_for
from tests.support.synthetic_ct import SeriesSpec, write_series

STORESCU = "/usr/bin/storescu"


def children(node: NodeProcess) -> dict[str, int]:
    """The supervisor's live children by name ("listener 1", "worker"), from its log.

    Children forked at boot share the parent's command line, so the log is what names them.
    """
    found: dict[str, int] = {}
    for name, pid in re.findall(r'"message": "(.+?) started \(pid (\d+)\)"', node.log()):
        if alive(int(pid)):
            found[name] = int(pid)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def holds_listening_socket(pid: int, port: int) -> bool:
    """True when the process has a descriptor of the socket listening on 127.0.0.1:``port``."""
    inodes = {
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port
    }
    assert inodes, f"nothing listens on port {port}"
    descriptors = Path(f"/proc/{pid}/fd").iterdir()
    return any(os.readlink(fd) in {f"socket:[{inode}]" for inode in inodes} for fd in descriptors)


def test_four_associations_into_two_listener_processes_store_everything_once(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "node", listener_processes=2, quiet_period_s=30.0)
    node = NodeProcess(config).start()
    try:
        wait_for(lambda: sorted(children(node)) == ["listener 1", "listener 2", "worker"], 30, "the children")
        kids = children(node)
        worker, listener = kids["worker"], kids["listener 1"]
        assert nice_of(worker) - nice_of(listener) == 10, "analysis yields the CPU to reception"
        folders = []
        for i in range(4):
            write_series(SeriesSpec(n_slices=10, rows=128, columns=128, seed=i), tmp_path / f"s{i}")
            folders.append(tmp_path / f"s{i}")

        def send(folder: Path) -> int:
            return subprocess.run(
                [STORESCU, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(config.port), str(folder), "+sd"],
                capture_output=True, env=DCMTK_ENV, timeout=300,
            ).returncode  # fmt: skip

        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(send, folders)) == [0, 0, 0, 0]
        engine = create_engine(config.db_url)
        with engine.connect() as connection:
            rows = connection.execute(select(func.count(Instance.id), func.count(func.distinct(Instance.sop_instance_uid)))).one()
        engine.dispose()
        assert tuple(rows) == (40, 40)
        assert len(list(config.storage_root.rglob("*.dcm"))) == 40
    finally:
        assert node.stop() == 0


def test_children_die_with_a_killed_parent(tmp_path: Path) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node")).start()
    wait_for(lambda: len(children(node)) == 2, 30, "the listener and the worker")
    kids = list(children(node).values())
    node.kill9()
    wait_for(lambda: not any(alive(pid) for pid in kids), 10, "the children to die with their parent")
    node.restart()  # the port is free again at once
    node.stop()


def test_only_the_listeners_and_the_supervisor_hold_the_dicom_port(tmp_path: Path) -> None:
    """A worker forked at boot must not keep the listening socket it inherited: while it outlived
    the listeners (finishing a job at stop, or dying slowly after kill -9) the port would still
    accept connections nobody serves, and a restarted node could not bind it."""
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node")).start()
    try:
        wait_for(lambda: sorted(children(node)) == ["listener 1", "worker"], 30, "the listener and the worker")
        kids, port = children(node), node.config.port
        assert node.process is not None and holds_listening_socket(node.process.pid, port)
        assert holds_listening_socket(kids["listener 1"], port)
        assert not holds_listening_socket(kids["worker"], port), "the worker holds the DICOM port"
    finally:
        assert node.stop() == 0


def test_a_crashed_worker_is_restarted_while_the_listener_answers(tmp_path: Path) -> None:
    node = NodeProcess(NodeConfig(workdir=tmp_path / "node")).start()
    try:
        wait_for(lambda: "worker" in children(node), 30, "the worker")
        worker = children(node)["worker"]
        os.kill(worker, signal.SIGKILL)
        assert echo_ok(config_port := node.config.port), "the listener answers while the worker is down"
        wait_for(lambda: children(node).get("worker", worker) != worker, 60, "a new worker")
        assert "worker exited with status -9; restarting it" in node.log()
        assert echo_ok(config_port)
    finally:
        assert node.stop() == 0


@pytest.mark.parametrize(("breakage", "status"), [("configuration", 2), ("database", 3)])
def test_a_child_that_cannot_start_stops_the_node_with_its_status(tmp_path: Path, breakage: str, status: int) -> None:
    """A restart cannot mend a broken configuration (2) or a database that is missing or not
    migrated (3): the node stops with that status, other children included, instead of
    restarting the child for ever; systemd then shows the status and does not restart."""
    config = NodeConfig(workdir=tmp_path / "node")
    node = NodeProcess(config).start()
    try:
        wait_for(lambda: sorted(children(node)) == ["listener 1", "worker"], 30, "the listener and the worker")
        kids = children(node)
        if breakage == "configuration":
            (config.workdir / "dicom-node.toml").write_text("[node\nport = \n", encoding="utf-8")
        else:
            (config.workdir / "node.db").rename(config.workdir / "node.db.moved")
        os.kill(kids["listener 1"], signal.SIGKILL)  # its restart reads the configuration and database again
        assert node.process is not None
        assert node.process.wait(timeout=120) == status, node.log()
        assert f"listener 1 exited with status {status}: stopping the node" in node.log()
        wait_for(lambda: not any(alive(pid) for pid in kids.values()), 30, "every child to stop")
    finally:
        node.stop()


def test_scp_with_two_listener_processes_supervises_them_and_counts_both(tmp_path: Path) -> None:
    """The split deployment's listener unit: `scp` becomes the supervisor, without a worker."""
    config = NodeConfig(workdir=tmp_path / "node", listener_processes=2)
    node = NodeProcess(config, command="scp").start()
    try:
        wait_for(lambda: sorted(children(node)) == ["listener 1", "listener 2"], 30, "two listeners and no worker")
        write_series(SeriesSpec(n_slices=5, rows=128, columns=128), tmp_path / "s")
        done = subprocess.run(
            [STORESCU, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(config.port), str(tmp_path / "s"), "+sd"],
            capture_output=True, env=DCMTK_ENV, timeout=120,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        status, body = http_get(config.metrics_port, "/metrics")
        assert status == 200
        assert metric_value(body, 'dicom_node_instances_received_total{outcome="stored"}') == 5
        assert http_get(config.metrics_port, "/health") == (200, "ready\n")
    finally:
        assert node.stop() == 0
