"""What we learn from a received dataset before storing it, and the checks it must pass.

The dataset is parsed once, with large values deferred (they stay on disk), only to
read its identifiers; then its element headers are walked once more to prove the byte
stream is complete: pydicom accepts a truncated final element, a cut element header
and a missing sequence delimiter silently, so every top-level element's declared
length is checked against the file size, and the last element must end where the
file ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

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
    path: str = ""
    size_bytes: int = 0


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path, defer_size=DEFER_BYTES)
    except Exception as exc:  # pydicom raises many exception types on hostile bytes
        raise UnreadableDatasetError(f"cannot parse dataset: {type(exc).__name__}") from exc


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _check_complete(ds: Dataset, path: Path) -> None:
    """The top-level elements must end exactly where the file ends.

    Two checks on the element headers (values are skipped, not read): every defined
    length fits inside the file, and nothing follows the last complete element.
    pydicom stops silently when fewer than 8 bytes are left, so a stream cut inside
    an element header would otherwise pass for a complete, shorter data set.
    """
    if ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        return  # inflated in memory by pydicom; a truncated deflate stream already raised
    implicit = ds.file_meta.get("TransferSyntaxUID") == ImplicitVRLittleEndian
    size = path.stat().st_size
    try:
        with path.open("rb") as fp:
            read_preamble(fp, False)
            end = fp.tell()
            for _ in data_element_generator(fp, False, True, stop_when=_not_file_meta):
                end = fp.tell()
            fp.seek(end)
            first = fp.read(6)
            fp.seek(end)
            if len(first) == 6:  # as pydicom does: the first VR tells the encoding actually used
                implicit = not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)
            for element in data_element_generator(fp, implicit, True, defer_size=DEFER_BYTES):
                length = getattr(element, "length", UNDEFINED_LENGTH)
                if length != UNDEFINED_LENGTH and element.value_tell + length > size:
                    raise UnreadableDatasetError(
                        f"dataset truncated: element {element.tag} declares {length} bytes"
                    )
                end = fp.tell()
    except UnreadableDatasetError:
        raise
    except Exception as exc:  # the same hostile bytes dcmread read, walked again
        raise UnreadableDatasetError(f"cannot parse dataset: {type(exc).__name__}") from exc
    if end != size:
        raise UnreadableDatasetError(
            f"dataset truncated: {size - end} byte(s) after the last complete element"
        )


def _uid(ds: Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword)
    except Exception as exc:  # an unknown or binary VR: pydicom cannot convert the value
        raise MissingIdentifierError(f"{keyword} is malformed (cannot decode it)") from exc
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
    except Exception:  # noqa: BLE001 - absent, not a number, or a VR pydicom cannot convert: not an identifier
        return None


def _text_or_none(ds: Dataset, keyword: str, max_length: int) -> str | None:
    try:
        value = ds.get(keyword)
        return str(value)[:max_length] if value else None
    except Exception:  # noqa: BLE001 - a VR pydicom cannot convert: recorded as absent, stored as sent
        return None


def read_received(
    path: Path,
    *,
    command_sop_class_uid: str,
    command_sop_instance_uid: str,
    calling_ae_title: str,
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
    return ReceivedInstance(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        modality=_text_or_none(ds, "Modality", 16),
        series_number=_int_or_none(ds, "SeriesNumber"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        calling_ae_title=calling_ae_title,
    )
