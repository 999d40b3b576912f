"""The one status table: its codes are the standard's (as pynetdicom knows them), and the
listener's mapping from errors to codes and the sender's reading of replies follow it."""

from __future__ import annotations

import pytest
from pynetdicom.status import STATUS_FAILURE

from dicom_node.dicom.statuses import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    STORE_REFUSALS,
    is_stored,
    is_warning,
    named_storage_warnings,
    status_for,
)
from dicom_node.errors import (
    DatabaseUnavailableError,
    DiskFullError,
    InvalidInstanceError,
    MissingIdentifierError,
    SeriesConflictError,
    SOPClassMismatchError,
)


def test_every_refusal_is_a_failure_named_as_the_standard_names_it() -> None:
    for refusal in STORE_REFUSALS:
        assert refusal.category == STATUS_FAILURE
        assert refusal.standard_name.lower().endswith(refusal.meaning.lower()), refusal
        assert refusal.service_status in {"Refused", "Error"}
    assert [r.code for r in STORE_REFUSALS] == sorted(r.code for r in STORE_REFUSALS)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (MissingIdentifierError("SOPInstanceUID is missing"), DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (SOPClassMismatchError("differs"), DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (SeriesConflictError("another study"), DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (InvalidInstanceError("truncated"), CANNOT_UNDERSTAND),
        (DiskFullError("below the guard"), OUT_OF_RESOURCES),
        (DatabaseUnavailableError("down"), OUT_OF_RESOURCES),
    ],
)
def test_each_refusal_maps_to_its_status(error: Exception, code: int) -> None:
    assert status_for(error) == code  # type: ignore[arg-type]


def test_the_sender_counts_success_and_every_warning_as_stored() -> None:
    assert named_storage_warnings() == [0xB000, 0xB006, 0xB007]
    for code in (0x0000, 0xB000, 0xB006, 0xB007, 0xB123, 0x0107, 0x0116):
        assert is_stored(code), hex(code)
    for code in (0xA700, 0xA900, 0xC000, 0xC123, 0x0110, 0x0122, 0x0211, 0xFE00):
        assert not is_stored(code), hex(code)
    assert is_warning(0xB007) and not is_warning(0x0000) and not is_warning(None)
