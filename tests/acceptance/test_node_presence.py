"""`status` and the status page of a real node: is it running, and whom did it turn away?

`dicom-node run` (a listener process and a worker process) against its database;
callers with an unknown calling AE title and with a wrong called AE title are rejected
by the real listener, through `dicom-node echo`.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.support.node import NodeConfig, NodeProcess, cli, http_get, wait_for


def test_status_says_whether_the_node_runs_and_whom_it_turned_away(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "node")
    path = str(config.write())
    assert cli("db", "upgrade", "--config", path).returncode == 0
    never = cli("status", "--config", path).stdout
    assert "NODE         not running (no listener or worker has ever started with this database)" in never, never

    node = NodeProcess(config).start()
    try:
        status = lambda: cli("status", "--config", path).stdout  # noqa: E731
        wait_for(lambda: "worker pid" in status(), 60, "the worker's heartbeat in status")
        out = status()
        assert re.search(r"^NODE         running \(listener pid \d+, worker pid \d+ on \S+; last seen \d+ s ago\)$", out, re.M), out
        assert "no worker runs" not in out and "no listener runs" not in out

        listener = f"DICOMNODE@127.0.0.1:{config.port}"
        for _ in range(2):
            unknown = cli("echo", listener, "--calling-ae", "NOBODY", "--timeout", "5")
            assert unknown.returncode == 1 and "association rejected" in unknown.stderr, unknown.stderr
        wrong = cli("echo", f"OTHERAE@127.0.0.1:{config.port}", "--calling-ae", "ECHOSCU", "--timeout", "5")
        assert wrong.returncode == 1 and "association rejected" in wrong.stderr, wrong.stderr

        out = status()
        assert re.search(
            r"^REJECTED     NOBODY from 127\.0\.0\.1: calling AE title or host not allowed; 2 time\(s\) in 24 h, last 20\S+ \S+ UTC$",
            out, re.M,
        ), out
        assert "what to do: if 'NOBODY' at 127.0.0.1 should send, add it to [[node.allowed_callers]]" in out
        assert re.search(r"^REJECTED     ECHOSCU from 127\.0\.0\.1: called AE title 'OTHERAE' is not ours; 1 time\(s\)", out, re.M), out

        code, page = http_get(config.metrics_port, "/")
        assert code == 200
        assert 'Node: <span class="ok">running</span> (listener pid ' in page, page[:2000]
        assert "<td>NOBODY</td><td>127.0.0.1</td><td>calling AE title or host not allowed</td><td>2</td>" in page
        assert "<td>ECHOSCU</td><td>127.0.0.1</td><td>called AE title &#x27;OTHERAE&#x27; is not ours</td><td>1</td>" in page

        # The hint names the pid a reload goes to (`run`'s supervisor); after adding the caller
        # and reloading it, the old rejections read as allowed now, not as a problem to fix.
        assert f"`kill -HUP {node.process.pid}`" in out and "systemctl reload dicom-node-scp" in out, out
        config.allowed_callers = [*config.allowed_callers, ("NOBODY", None)]
        config.write()
        os.kill(node.process.pid, signal.SIGHUP)
        wait_for(lambda: cli("echo", listener, "--calling-ae", "NOBODY", "--timeout", "5").returncode == 0, 30, "the reload")
        out = status()
        assert re.search(r"^REJECTED     NOBODY from .* \(allowed now\)$", out, re.M), out
        assert "what to do: nothing if the node has reloaded since the last rejection" in out, out
    finally:
        assert node.stop() == 0

    after = cli("status", "--config", path).stdout
    assert re.search(r"^NODE         not running \(stopped at 20\S+ \S+ UTC; last: (listener|worker) pid \d+ on \S+\)$", after, re.M), after
