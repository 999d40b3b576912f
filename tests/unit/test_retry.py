"""The retry policy: exponential backoff with a cap, and when it gives up."""

from __future__ import annotations

from datetime import timedelta

import pytest

from dicom_node.config import RetrySettings
from dicom_node.retry import RetryPolicy


def test_backoff_grows_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy.from_settings(RetrySettings(max_attempts=10, initial_delay_s=30, backoff_factor=2, max_delay_s=200))
    assert [policy.delay_after(n).total_seconds() for n in range(1, 6)] == [30, 60, 120, 200, 200]


def test_gives_up_at_max_attempts() -> None:
    policy = RetryPolicy(3, timedelta(seconds=1), 2.0, timedelta(seconds=10))
    assert [policy.gives_up_after(n) for n in (1, 2, 3, 4)] == [False, False, True, True]


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        RetryPolicy(3, timedelta(seconds=1), 2.0, timedelta(seconds=10)).delay_after(0)


def test_many_attempts_do_not_overflow() -> None:
    policy = RetryPolicy(1000, timedelta(seconds=30), 2.0, timedelta(hours=1))
    assert policy.delay_after(999) == timedelta(hours=1)
