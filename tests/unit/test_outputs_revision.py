"""Series descriptions of results that replace earlier ones: say so, within LO's 64 characters."""

from __future__ import annotations

from datetime import datetime

import pytest

from dicom_node.outputs.revision import MAX_DESCRIPTION, replacing_description

WHEN = datetime(2026, 12, 3, 20, 30)


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("AI ICH REPORT", "AI ICH REPORT (replaces results of 2026-12-03 20:30)"),
        ("AI ICH REPORT - RESEARCH USE ONLY", "AI ICH REPORT - RESEARCH USE ONLY (replaces 2026-12-03 20:30)"),
        ("AI ICH SEGMENTATION - RESEARCH USE ONLY", "AI ICH SEGMENTATION - RESEARCH USE ONLY (replaces 2026-12-03)"),
        ("AI ICH KEY IMAGES - RESEARCH USE ONLY", "AI ICH KEY IMAGES - RESEARCH USE ONLY (replaces 2026-12-03)"),
        ("X" * 64, "X" * 45 + " (replaces earlier)"),
    ],
)
def test_the_longest_wording_that_fits_is_used(configured: str, expected: str) -> None:
    described = replacing_description(configured, WHEN)
    assert described == expected
    assert len(described) <= MAX_DESCRIPTION
