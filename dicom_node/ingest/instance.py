"""What we learn from a received dataset before storing it, and the checks it must pass.

The dataset is parsed once, with large values deferred (they stay on disk), only to
read its identifiers and to prove the byte stream is complete: pydicom accepts a
truncated final element silently, so every top-level element's declared length is
checked against the file size here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicom_node.errors import (
    MissingIdentifierError,
    SOPClassMismatchError,
    UnreadableDatasetError,
)

#: Values above this size are not loaded while checking a dataset (pixel data, mostly).
DEFER_BYTES = 4096
UNDEFINED_LENGTH = 0xFFFFFFFF
_UID_TEXT = re.compile(r"[\x21-\x7e]{1,64}")


@dataclass(frozen=True)
class ReceivedInstance:
    """A received instance, ready to be recorded once its file is durable."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_number: int | None
    instance_number: int | None
    calling_ae_title: str
    received_at: datetime
    path: str = ""
    size_bytes: int = 0


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path, defer_size=DEFER_BYTES)
    except Exception as exc:  # pydicom raises many exception types on hostile bytes
        raise UnreadableDatasetError(f"cannot parse dataset: {type(exc).__name__}") from exc


def _check_complete(ds: Dataset, path: Path) -> None:
    """Every top-level element with a defined length must fit inside the file."""
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # inflated in memory by pydicom; a truncated deflate stream already raised
    size = path.stat().st_size
    for element in ds.values():
        if not isinstance(element, RawDataElement) or element.length == UNDEFINED_LENGTH:
            continue
        if element.value_tell + element.length > size:
            raise UnreadableDatasetError(
                f"dataset truncated: element {element.tag} declares {element.length} bytes"
            )


def _uid(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    text = str(value).strip("\x00 ") if value is not None else ""
    if not text:
        raise MissingIdentifierError(f"{keyword} is missing")
    if not _UID_TEXT.fullmatch(text):
        raise MissingIdentifierError(f"{keyword} is malformed (PS3.5 UI: at most 64 characters)")
    return text


def _int_or_none(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        return None


def read_received(
    path: Path,
    *,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    calling_ae_title: str,
    received_at: datetime,
) -> ReceivedInstance:
    """Parse and check a received file; raise an :class:`InvalidInstanceError` leaf if bad.

    The C-STORE command's Affected SOP Class/Instance UIDs must equal the dataset's
    (PS3.4 B.2.3: otherwise the data set does not match the SOP class).
    """
    ds = _read(path)
    _check_complete(ds, path)
    study = _uid(ds, "StudyInstanceUID")
    series = _uid(ds, "SeriesInstanceUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    sop_class = _uid(ds, "SOPClassUID")
    if sop_class != command_sop_class_uid:
        raise SOPClassMismatchError(
            f"dataset SOP Class {sop_class} differs from the command's {command_sop_class_uid}"
        )
    if sop_instance != command_sop_instance_uid:
        raise SOPClassMismatchError("dataset SOP Instance UID differs from the command's")
    modality = ds.get("Modality")
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=str(modality)[:16] if modality else None,
        series_number=_int_or_none(ds, "SeriesNumber"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        calling_ae_title=calling_ae_title,
        received_at=received_at,
    )
