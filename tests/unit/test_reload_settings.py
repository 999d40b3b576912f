"""What a reload applies (callers, destinations) and what it only names (everything else)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.cli import Reloadable, _peers
from dicom_node.config import load_settings
from tests.support.node import NODE_AE, NodeConfig


def test_a_reload_applies_callers_and_destinations_and_names_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NodeConfig(workdir=tmp_path / "node", extra="[retention]\nenabled = true\n")
    path = config.write()
    reloadable = Reloadable(path, load_settings(path))
    peers = _peers(reloadable.settings)
    reloadable.peers = peers
    assert peers == {}

    config.allowed_callers = [("NEWSCU", None)]
    config.destinations = [("pacs", "PACS", 11113, ["sr"])]
    config.delivery_timeout_s = 300.0
    config.extra = "[retention]\nenabled = false\n"  # a legal hold: must not look applied
    text = config.write().read_text(encoding="utf-8").replace(f'ae_title = "{NODE_AE}"', 'ae_title = "RENAMED"', 1)
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dicom_node.cli"):
        assert reloadable.reload() is True

    warning = next(r.getMessage() for r in caplog.records if "only after a restart" in r.getMessage())
    for key in ("node.ae_title", "delivery.timeout_s", "retention.enabled"):
        assert key in warning
    assert "destinations" not in warning and "allowed_callers" not in warning
    running = reloadable.settings
    assert [c.ae_title for c in running.node.allowed_callers] == ["NEWSCU"]
    assert [d.name for d in running.destinations] == ["pacs"]
    assert running.retention.enabled is True and running.node.ae_title == NODE_AE
    # The sender keeps the running AE title and time-out (the outbox lease is derived from it).
    assert (peers["pacs"].calling_ae_title, peers["pacs"].timeout_s) == (NODE_AE, 10.0)

    config.destinations = []
    path.write_text(config.write().read_text(encoding="utf-8"), encoding="utf-8")
    assert reloadable.reload() is True
    assert peers == {}


def test_destinations_wait_for_the_restart_when_tls_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Their TLS context is built from [tls]: with the old trust settings every send would fail."""
    config = NodeConfig(workdir=tmp_path / "node")
    path = config.write()
    reloadable = Reloadable(path, load_settings(path))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read before a restart\n", encoding="utf-8")
    config.destinations = [("pacs", "PACS", 11113, ["sr"])]
    config.extra = f'[tls]\nca_bundle = "{bundle}"\n'
    config.write()
    with caplog.at_level(logging.WARNING, logger="dicom_node.cli"):
        assert reloadable.reload() is True
    assert reloadable.settings.destinations == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("tls.ca_bundle" in m for m in messages)
    assert any("destinations also wait for a restart" in m for m in messages)
