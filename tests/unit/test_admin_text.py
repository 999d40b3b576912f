"""`jobs show` lines: UTC times, the lease and its expiry, and an outcome told from an error."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from dicom_node.admin.destinations import DestinationHealth
from dicom_node.admin.overview import JobLine
from dicom_node.admin.text import delivery_line, destination_lines, job_lines
from dicom_node.db.models import DeliveryState
from dicom_node.send.outbox import DeliveryView

NOW = datetime(2026, 12, 3, 20, 0, 0)
JOB = JobLine(
    id=5, state="running", study_generation=1, attempts=1, max_attempts=3, model_key="m@1",
    created_at=NOW - timedelta(seconds=40), started_at=NOW - timedelta(seconds=30), finished_at=None,
    next_attempt_at=NOW, lease_owner="host:1:42:ab", lease_expires_at=NOW + timedelta(seconds=570),
    last_error=None, summary={},
)


def test_a_running_job_shows_its_worker_and_when_the_lease_expires() -> None:
    lines = job_lines(JOB, now=NOW)
    assert "  queued     2026-12-03 19:59:20 UTC" in lines and "  finished   -" in lines
    assert "  worker     host:1:42:ab, lease until 2026-12-03 20:09:30 UTC (in 570 s)" in lines
    expired = job_lines(replace(JOB, lease_expires_at=NOW - timedelta(seconds=12)), now=NOW)
    assert any(line.endswith("(expired 12 s ago: the lease scan reclaims it)") for line in expired)


def test_a_skipped_job_gives_its_reason_not_an_error() -> None:
    """`skipped` (not applicable) is an outcome: no "error", no "what to do"."""
    skipped = replace(JOB, state="skipped", lease_owner=None, reason="not head: header says CHEST (BodyPartExamined)")
    lines = job_lines(skipped, now=NOW)
    assert "  skipped    not head: header says CHEST (BodyPartExamined)" in lines
    assert not any(line.startswith(("  error", "  what to do")) for line in lines)
    dead = job_lines(replace(skipped, state="dead", reason=None, last_error="no series qualifies for analysis (x)"), now=NOW)
    assert "  error      no series qualifies for analysis (x)" in dead
    assert any(line.startswith("  what to do the study has no series the model can use") for line in dead)


def test_a_destination_unknown_here_is_not_to_be_cancelled_when_the_node_reads_another_file() -> None:
    pacs = DestinationHealth("pacs", None, {"pending": 3}, None, None, None)
    alone = destination_lines([pacs])
    assert "jobs cancel-deliveries --to pacs" in alone[0], alone
    elsewhere = destination_lines([pacs], node_config="/srv/node/dicom-node.toml")
    assert "cancel-deliveries" not in elsewhere[0], elsewhere
    assert "the running node reads /srv/node/dicom-node.toml: `dicom-node status --config /srv/node/dicom-node.toml`" in elsewhere[0]


def test_a_delivery_s_error_is_shown_once_and_whole() -> None:
    """A refused connection has no DICOM status: the stored status is the error's first 64
    characters; the line shows the whole error once, not the cut copy and then the whole."""
    error = "connection refused by ARCHIVE@127.0.0.1:11499: is the peer running, on that host and port?"
    refused = DeliveryView(1, "sr", "1.2.3", "archive", DeliveryState.PENDING, 2, error[:64], error, NOW)
    line = delivery_line(refused)
    assert line.endswith(f"last status {error}") and line.count("connection refused") == 1, line
    answered = DeliveryView(2, "seg", "1.2.4", "pacs", DeliveryState.DEAD, 3, "0xA700", "failure 0xA700: out of resources")
    assert delivery_line(answered).endswith("last status 0xA700 (failure 0xA700: out of resources)")


def test_advice_names_the_job_and_a_job_running_again_needs_none() -> None:
    """No literal ID to fill in; a job the lease scan requeued runs again by itself."""
    broken = replace(JOB, state="dead", lease_owner=None, attempts=1,
                     last_error="series 1.2.3 cannot be assembled into a volume: slice spacing is irregular")
    assert any(line.startswith("  what to do") and "`dicom-node jobs retry 5`" in line for line in job_lines(broken, now=NOW))
    assert not any(" ID`" in line for line in job_lines(broken, now=NOW))
    crashed = "worker host:1:42:ab died (its process is gone from this host); reclaimed at once"
    again = job_lines(replace(JOB, state="queued", lease_owner=None, attempts=1, last_error=crashed), now=NOW)
    assert "  what to do none: it runs again by itself; the run that failed used one of its attempts (1 of 3 used)" in again
    last = job_lines(replace(JOB, state="dead", lease_owner=None, attempts=3, last_error=crashed), now=NOW)
    assert "  what to do it used its last attempt (3 of 3): `dicom-node jobs retry 5` runs it again" in last
