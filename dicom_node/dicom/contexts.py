"""The one table of SOP classes and transfer syntaxes the node speaks.

The listener builds its supported presentation contexts from :data:`STORAGE_CLASSES`
and :data:`ACCEPTED_TRANSFER_SYNTAXES`, and the conformance statement is rendered from
the same rows, so the two never disagree. (The sender proposes, for each object, its own
SOP class and transfer syntax: we create only classes from this table.)
Only transfer syntaxes that pydicom (with the pylibjpeg/pyjpegls plugins this project
installs) can decode are accepted: accepting a syntax we cannot read would turn a
C-STORE success into a later, silent analysis failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.uid import (
    UID,
    Comprehensive3DSRStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)
from pynetdicom.sop_class import Verification


class Role(StrEnum):
    """Why a SOP class is in the table."""

    INPUT = "input"  # images we analyse
    OUTPUT = "output"  # objects we create and send (and accept back)
    FEEDBACK = "feedback"  # accepted from reading stations; never created or sent


@dataclass(frozen=True)
class StorageClass:
    """A storage SOP class we accept as SCP, with what we use it for."""

    uid: UID
    role: Role
    purpose: str


STORAGE_CLASSES: tuple[StorageClass, ...] = (
    StorageClass(CTImageStorage, Role.INPUT, "head CT slices to analyse"),
    StorageClass(
        EnhancedCTImageStorage,
        Role.INPUT,
        "multi-frame head CT: stored; analysis of multi-frame series is not supported yet "
        "(the job fails with that reason)",
    ),
    StorageClass(SecondaryCaptureImageStorage, Role.OUTPUT, "key images with burned-in results"),
    StorageClass(SegmentationStorage, Role.OUTPUT, "hemorrhage segmentations (BINARY SEG)"),
    StorageClass(Comprehensive3DSRStorage, Role.OUTPUT, "TID 1500 measurement reports"),
    StorageClass(EnhancedSRStorage, Role.FEEDBACK, "reports and feedback from reading stations"),
)

#: In our order of preference when we are the one choosing (as SCU).
ACCEPTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEG2000Lossless,
    RLELossless,
)

VERIFICATION_CLASS: UID = UID(Verification)

#: What the listener offers for Verification (C-ECHO carries no data set).
VERIFICATION_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def storage_class_uids() -> tuple[UID, ...]:
    """The SOP Class UIDs of :data:`STORAGE_CLASSES`, in table order."""
    return tuple(row.uid for row in STORAGE_CLASSES)


def is_input_class(uid: str) -> bool:
    """True for the images we analyse (only they open, reopen or extend a study's analysis)."""
    return any(row.uid == uid and row.role is Role.INPUT for row in STORAGE_CLASSES)
