"""The DICOM statuses the node returns and reads, in one table built on pynetdicom's.

pynetdicom's :data:`~pynetdicom.status.STORAGE_SERVICE_CLASS_STATUS` holds PS3.4 B.2.3's
codes with their category (Success, Warning, Failure) and name;
:func:`~pynetdicom.status.code_to_category` classifies any code, ranges included. What
the node adds is its own choice: which code it returns for which refusal, and why. The
listener returns these codes (:func:`status_for`), the conformance statement prints this
table, and the sender counts an object as stored when pynetdicom calls the status a
success or a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

from pynetdicom.status import (
    STATUS_SUCCESS,
    STATUS_WARNING,
    STORAGE_SERVICE_CLASS_STATUS,
    code_to_category,
)

from dicom_node.errors import (
    DicomNodeError,
    InvalidInstanceError,
    MissingIdentifierError,
    SeriesConflictError,
    SOPClassMismatchError,
)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000

#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4: rejected-permanent, by the service
#: user, calling AE title not recognised (the listener's own check of its callers).
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
#: The same for a called AE title that is not ours (pynetdicom sends it).
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
#: Rejected-transient, by the service provider (presentation), local limit exceeded: one
#: association more than the maximum (pynetdicom sends it).
REJECT_LIMIT = (0x02, 0x03, 0x02)


@dataclass(frozen=True)
class StoreRefusal:
    """A C-STORE failure status the listener returns: when, and for which errors.

    ``service_status`` and ``meaning`` are PS3.4 Table B.2-1's words for the code
    ("Refused: Out of Resources", "Error: Cannot understand"), which pynetdicom's table
    names too (:attr:`standard_name`); ``when`` is the node's reason for returning it.
    """

    code: int
    service_status: str  # Refused | Error
    meaning: str
    when: str
    errors: tuple[type[DicomNodeError], ...] = ()

    @property
    def category(self) -> str:
        """pynetdicom's category of the code: Failure for every refusal."""
        return code_to_category(self.code)

    @property
    def standard_name(self) -> str:
        """The code's name in pynetdicom's storage status table."""
        return STORAGE_SERVICE_CLASS_STATUS[self.code][1]

    def description(self) -> str:
        """The meaning with the node's reason, as the conformance statement prints it."""
        return f"{self.meaning} ({self.when})"


#: The refusals, in code order. An error that none names is the node's own trouble:
#: out of resources (the caller may retry later).
STORE_REFUSALS = (
    StoreRefusal(
        OUT_OF_RESOURCES, "Refused", "out of resources", "disk guard, a disk that fills while a data set arrives, storage or database unavailable"
    ),
    StoreRefusal(
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "Error",
        "data set does not match SOP class",
        "missing or malformed UIDs, SOP Class/Instance UID differing from the C-STORE command, "
        "a Series Instance UID already recorded under another study",
        (MissingIdentifierError, SOPClassMismatchError, SeriesConflictError),
    ),
    StoreRefusal(
        CANNOT_UNDERSTAND, "Error", "cannot understand", "unparseable or truncated data set", (InvalidInstanceError,)
    ),
)


def status_for(error: DicomNodeError) -> int:
    """The C-STORE status a refusal maps to (see :data:`STORE_REFUSALS`)."""
    for refusal in STORE_REFUSALS:
        if refusal.errors and isinstance(error, refusal.errors):
            return refusal.code
    return OUT_OF_RESOURCES


def is_stored(code: int) -> bool:
    """True when a peer's C-STORE status means it stored the object: success or any warning
    (PS3.4 B.2.3; pynetdicom's categories, ranges included)."""
    return code_to_category(code) in (STATUS_SUCCESS, STATUS_WARNING)


def is_warning(code: int | None) -> bool:
    """True for a warning status: stored, with something the peer wants said."""
    return code is not None and code_to_category(code) == STATUS_WARNING


def named_storage_warnings() -> list[int]:
    """The Storage Service's own warning codes, as pynetdicom's table names them."""
    return sorted(
        code
        for code, (category, _) in STORAGE_SERVICE_CLASS_STATUS.items()
        if category == STATUS_WARNING and code >= 0xB000
    )
