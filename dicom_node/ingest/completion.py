"""The stable-study rule: a study is complete after a quiet period, or at a forced cap.

Completion is decided from database state alone (the time of the last received
instance and the time the study was opened), never from association boundaries or
in-memory timers: a PACS often sends one study over several associations, and the
decision must survive a restart and agree across several processes. Each scan is one
conditional UPDATE, so two schedulers running the same scan cannot complete a study
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import case, update
from sqlalchemy.orm import Session

from dicom_node.config import CompletionSettings
from dicom_node.db.models import Series, SeriesState, Study, StudyState


class CompletionReason(StrEnum):
    """Why a study was declared complete."""

    QUIET = "quiet"  # no instance arrived for the quiet period
    FORCED = "forced"  # instances kept arriving past the cap (an endless stream)


@dataclass(frozen=True)
class CompletionRule:
    """The quiet period and the forced-completion cap, as durations."""

    quiet_period: timedelta
    max_open: timedelta

    @classmethod
    def from_settings(cls, settings: CompletionSettings) -> CompletionRule:
        return cls(
            quiet_period=timedelta(seconds=settings.quiet_period_s),
            max_open=timedelta(seconds=settings.max_open_s),
        )

    def decide(
        self, *, now: datetime, opened_at: datetime, last_received_at: datetime
    ) -> CompletionReason | None:
        """The reason a study with these timestamps is complete at ``now``, or None."""
        if last_received_at <= now - self.quiet_period:
            return CompletionReason.QUIET
        if opened_at <= now - self.max_open:
            return CompletionReason.FORCED
        return None


@dataclass(frozen=True)
class CompletedStudy:
    """A study the scan just completed."""

    study_id: int
    study_instance_uid: str
    generation: int
    reason: CompletionReason


def complete_due_studies(session: Session, rule: CompletionRule, now: datetime) -> list[CompletedStudy]:
    """Mark every due study (and its series) complete; return the studies completed now.

    The SQL mirrors :meth:`CompletionRule.decide`.
    """
    quiet_cutoff = now - rule.quiet_period
    open_cutoff = now - rule.max_open
    open_states = (StudyState.RECEIVING, StudyState.REOPENED)
    reason = case(
        (Study.last_received_at <= quiet_cutoff, CompletionReason.QUIET.value),
        else_=CompletionReason.FORCED.value,
    )
    completed = session.execute(
        update(Study)
        .where(Study.state.in_(open_states))
        .where((Study.last_received_at <= quiet_cutoff) | (Study.opened_at <= open_cutoff))
        .values(state=StudyState.COMPLETE, completed_at=now, completion_reason=reason)
        .returning(Study.id, Study.study_instance_uid, Study.generation, Study.completion_reason)
    ).all()
    session.execute(
        update(Series)
        .where(Series.state == SeriesState.RECEIVING)
        .where(
            (Series.last_received_at <= quiet_cutoff)
            | Series.study_id.in_([row.id for row in completed])
        )
        .values(state=SeriesState.COMPLETE, completed_at=now)
    )
    return [
        CompletedStudy(row.id, row.study_instance_uid, row.generation, CompletionReason(row.completion_reason))
        for row in completed
    ]

