"""The Node composes one process: built from the settings, started, reloaded, stopped (in-process, real sockets)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine
from dicom_node.node import Node
from tests.support.node import NodeConfig, echo_ok, http_get, wait_for


def _audit_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_a_node_with_both_roles_serves_reloads_and_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = NodeConfig(workdir=tmp_path / "node", allowed_callers=[("ECHOSCU", None)])
    path = config.write()
    settings = load_settings(path)
    engine = create_db_engine(settings.database)
    migrate.upgrade(engine, "head")
    node = Node.build(path, settings, engine, listener=True, worker=True)
    node.start()
    try:
        # The device is reported where the model was built (the threshold baseline: numpy).
        assert node.model is not None and node.model.device == "cpu"
        summary = node.startup_summary()
        assert f"listening as DICOMNODE on 127.0.0.1:{config.port}" in summary
        # Our own bind address is a listen_address, never a peer_address (that is the caller's).
        listening = [r for r in caplog.records if r.getMessage() == "listening"]
        assert listening and all(getattr(r, "listen_address", None) == f"127.0.0.1:{config.port}" for r in listening)
        assert not any(hasattr(r, "peer_address") for r in listening)
        assert "model threshold (hu-threshold 1) on cpu; destinations none" in summary
        assert http_get(config.metrics_port, "/health")[0] == 200  # with a listener, on the listener's port
        assert echo_ok(config.port, "ECHOSCU") and not echo_ok(config.port, "NEWSCU")

        # A reload changes only the live settings; the listener reads them at the next association.
        config.allowed_callers = [("NEWSCU", None)]
        config.write()
        assert node.reload() is True
        assert echo_ok(config.port, "NEWSCU") and not echo_ok(config.port, "ECHOSCU")
        assert node.live.current.node.ae_title == "DICOMNODE"

        # The one audit log of this process has the listener's refusals.
        audit_file = config.workdir / "audit.log"
        wait_for(lambda: len([e for e in _audit_events(audit_file) if e["event"] == "rejected"]) == 2, 5, "two rejections")
        assert {e["calling_ae_title"] for e in _audit_events(audit_file) if e["event"] == "rejected"} == {"NEWSCU", "ECHOSCU"}
    finally:
        node.stop()
    assert not echo_ok(config.port, "NEWSCU")  # the port is closed
