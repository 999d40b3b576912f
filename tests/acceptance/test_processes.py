"""`dicom-node run` as a supervisor: listener processes sharing the port, a worker beside them,
children that die with the parent, and a crashed child restarted while the listener answers."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import create_engine, func, select

from dicom_node.db.models import Instance
from tests.support.node import DCMTK_ENV, NODE_AE, NodeConfig, NodeProcess, echo_ok, wait_for
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
