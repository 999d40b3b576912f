"""The stable-study rule as a pure function."""

from __future__ import annotations

from datetime import datetime, timedelta

from dicom_node.ingest.completion import CompletionReason, CompletionRule

RULE = CompletionRule(quiet_period=timedelta(seconds=30), max_open=timedelta(hours=1))
T0 = datetime(2026, 1, 1, 8, 0, 0)


def test_busy_study_is_not_complete() -> None:
    assert RULE.decide(now=T0 + timedelta(seconds=40), opened_at=T0, last_received_at=T0 + timedelta(seconds=20)) is None


def test_quiet_period_completes() -> None:
    now = T0 + timedelta(seconds=60)
    assert RULE.decide(now=now, opened_at=T0, last_received_at=T0 + timedelta(seconds=30)) is CompletionReason.QUIET


def test_quiet_period_boundary_is_inclusive() -> None:
    assert RULE.decide(now=T0 + timedelta(seconds=30), opened_at=T0, last_received_at=T0) is CompletionReason.QUIET


def test_endless_stream_is_forced_at_the_cap() -> None:
    now = T0 + timedelta(hours=1, seconds=1)
    assert RULE.decide(now=now, opened_at=T0, last_received_at=now - timedelta(seconds=1)) is CompletionReason.FORCED


def test_quiet_wins_over_forced_when_both_hold() -> None:
    now = T0 + timedelta(hours=2)
    assert RULE.decide(now=now, opened_at=T0, last_received_at=T0) is CompletionReason.QUIET
