"""SIGHUP re-reads the config: callers and destinations change, open associations survive,
and an invalid file is refused while the running config stays in force."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.support.node import NODE_AE, NodeConfig, NodeProcess, status_code, store_files, wait_for
from tests.support.synthetic_ct import SeriesSpec, write_series


def _admitted(port: int, calling_ae: str) -> bool:
    ae = AE(calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if assoc.is_established:
        assoc.release()
        return True
    return False


def test_sighup_changes_callers_without_dropping_an_open_association(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "node", allowed_callers=[("ECHOSCU", None), ("TESTSCU", None)])
    node = NodeProcess(config).start()
    try:
        files = write_series(SeriesSpec(n_slices=150, rows=256, columns=256), tmp_path / "s")
        statuses: list[int | None] = []
        sender = threading.Thread(target=lambda: statuses.extend(status_code(s) for s in store_files(config.port, files)))
        sender.start()
        wait_for(lambda: (config.storage_root).exists() and len(list(config.storage_root.rglob("*.dcm"))) >= 10, 60, "the transfer to start")
        config.allowed_callers = [("ECHOSCU", None), ("NEWSCU", "127.0.0.1")]
        config.write()
        node.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: "configuration reloaded" in node.log(), 20, "the reload")
        sender.join(120)
        assert statuses == [0] * 150, "the association open during the reload completed"
        assert _admitted(config.port, "NEWSCU")
        assert not _admitted(config.port, "TESTSCU")

        (config.workdir / "dicom-node.toml").write_text("[node]\nport = 0\n", encoding="utf-8")
        node.process.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
        wait_for(lambda: "configuration reload refused" in node.log(), 20, "the refusal")
        assert "node.port" in node.log()
        assert _admitted(config.port, "NEWSCU"), "the running configuration stays in force"
        assert node.process.poll() is None  # type: ignore[union-attr]
    finally:
        node.stop()
