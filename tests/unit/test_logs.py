"""Log set-up: one JSON object per line, and only the scheduler noise that means nothing dropped."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from dicom_node.logs import configure_logging


@pytest.fixture
def json_logs(capfd: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """The captured stderr; each test configures logging itself (pytest resets handlers set up earlier)."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    yield capfd
    root.handlers[:], level = saved
    root.setLevel(level)
    logging.getLogger("apscheduler.scheduler").filters.clear()


def _lines(capfd: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in capfd.readouterr().err.splitlines() if line.startswith("{")]


def test_a_long_dispatch_tick_is_not_reported_but_any_other_late_tick_is(json_logs: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    scheduler = logging.getLogger("apscheduler.scheduler")
    skipped = 'Execution of job "{}" skipped: maximum number of running instances reached (1)'
    scheduler.warning(skipped.format("dispatch (trigger: interval[0:00:02], next run at: 2026-11-24 04:50:02 UTC)"))
    scheduler.warning(skipped.format("completion (trigger: interval[0:00:05], next run at: 2026-11-24 04:50:05 UTC)"))
    messages = [str(line["message"]) for line in _lines(json_logs)]
    assert len(messages) == 1 and "completion" in messages[0]


def test_context_travels_as_fields(json_logs: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    logging.getLogger("dicom_node.test").info("stored", extra={"sop_instance_uid": "1.2.3", "stage": "receive"})
    (line,) = _lines(json_logs)
    assert (line["message"], line["sop_instance_uid"], line["level"]) == ("stored", "1.2.3", "INFO")
