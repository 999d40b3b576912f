"""What a reload applies (callers, destinations) and what it only names (everything else)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dicom_node.config import load_settings
from dicom_node.live_settings import LiveSettings
from dicom_node.node import OutboxTick, destination_peers
from tests.support.node import NODE_AE, NodeConfig


def test_a_reload_applies_callers_and_destinations_and_names_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = NodeConfig(workdir=tmp_path / "node", extra="[retention]\nenabled = true\n")
    path = config.write()
    live = LiveSettings(path, load_settings(path))
    assert destination_peers(live.current) == {}

    config.allowed_callers = [("NEWSCU", None)]
    config.destinations = [("pacs", "PACS", 11113, ["sr"])]
    config.delivery_timeout_s = 300.0
    config.extra = "[retention]\nenabled = false\n"  # a legal hold: must not look applied
    text = config.write().read_text(encoding="utf-8").replace(f'ae_title = "{NODE_AE}"', 'ae_title = "RENAMED"', 1)
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="dicom_node.live_settings"):
        assert live.reload() is True

    warning = next(r.getMessage() for r in caplog.records if "only after a restart" in r.getMessage())
    for key in ("node.ae_title", "delivery.timeout_s", "retention.enabled"):
        assert key in warning
    assert "destinations" not in warning and "allowed_callers" not in warning
    running = live.current
    assert [c.ae_title for c in running.node.allowed_callers] == ["NEWSCU"]
    assert [d.name for d in running.destinations] == ["pacs"]
    assert running.retention.enabled is True and running.node.ae_title == NODE_AE
    assert live.destination_kinds() == {"pacs": ["sr"]}  # what the worker queues next
    # The sender keeps the running AE title and time-out (the outbox lease is derived from it).
    peers = destination_peers(live.current)
    assert (peers["pacs"].calling_ae_title, peers["pacs"].timeout_s) == (NODE_AE, 10.0)

    config.destinations = []
    path.write_text(config.write().read_text(encoding="utf-8"), encoding="utf-8")
    assert live.reload() is True
    assert destination_peers(live.current) == {} and live.destination_kinds() == {}


def test_destinations_wait_for_the_restart_when_tls_changed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Their TLS context is built from [tls]: with the old trust settings every send would fail."""
    config = NodeConfig(workdir=tmp_path / "node")
    path = config.write()
    live = LiveSettings(path, load_settings(path))
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not read before a restart\n", encoding="utf-8")
    config.destinations = [("pacs", "PACS", 11113, ["sr"])]
    config.extra = f'[tls]\nca_bundle = "{bundle}"\n'
    config.write()
    with caplog.at_level(logging.WARNING, logger="dicom_node.live_settings"):
        assert live.reload() is True
    assert live.current.destinations == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("tls.ca_bundle" in m for m in messages)
    assert any("destinations also wait for a restart" in m for m in messages)


def test_the_outbox_reads_the_destinations_of_the_latest_reload(tmp_path: Path) -> None:
    """Its peers follow the live settings, rebuilt once per accepted reload, not pushed into it."""
    config = NodeConfig(workdir=tmp_path / "node")
    path = config.write()
    live = LiveSettings(path, load_settings(path))
    tick = OutboxTick(live, sessions=None, storage_root=tmp_path, owner="w", audit=None, metrics=None)  # type: ignore[arg-type]
    assert tick.peers() == {}
    config.destinations = [("pacs", "PACS", 11113, ["sr"]), ("archive", "ARCHIVE", 11114, ["seg"])]
    config.write()
    assert live.reload() is True
    first = tick.peers()
    assert sorted(first) == ["archive", "pacs"] and first["archive"].port == 11114
    assert tick.peers() is first  # no reload, no rebuild
    config.destinations = [("pacs", "PACS", 11113, ["sr"])]
    config.write()
    live.reload()
    assert sorted(tick.peers()) == ["pacs"]
    assert sorted(first) == ["archive", "pacs"]  # a tick in flight keeps the peers it started with
