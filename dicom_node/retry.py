"""The retry policy as data: attempts, an exponential wait with a cap, then a dead letter.

Shared by the job queue and the outbox, so it sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from dicom_node.config import RetrySettings


@dataclass(frozen=True)
class RetryPolicy:
    """How many attempts, and how long to wait before each retry."""

    max_attempts: int
    initial_delay: timedelta
    backoff_factor: float
    max_delay: timedelta

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            initial_delay=timedelta(seconds=settings.initial_delay_s),
            backoff_factor=settings.backoff_factor,
            max_delay=timedelta(seconds=settings.max_delay_s),
        )

    def delay_after(self, attempts: int) -> timedelta:
        """The wait before the next attempt, after ``attempts`` failed ones (1-based)."""
        if attempts < 1:
            raise ValueError("attempts counts failed attempts and starts at 1")
        cap = self.max_delay.total_seconds()
        # Cap the exponent before it overflows: 2.0 ** 1100 is already inf, timedelta(inf) raises.
        exponent = min(attempts - 1, 1000)
        seconds = min(self.initial_delay.total_seconds() * self.backoff_factor**exponent, cap)
        return timedelta(seconds=seconds)

    def gives_up_after(self, attempts: int) -> bool:
        """True when ``attempts`` failed attempts exhaust the policy (dead letter)."""
        return attempts >= self.max_attempts
