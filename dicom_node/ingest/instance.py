"""What we learn from a received dataset before storing it, and the checks it must pass.

The file is read in one pass over its element headers (values above a few kB, pixel data
mostly, are skipped, not read): the few identifiers we record are kept as they go by, and
the same pass proves the byte stream is complete. pydicom accepts a truncated final
element, a cut element header and a missing sequence delimiter silently, so every
top-level element's declared length is checked against the file size, and the last
element must end where the file ends. (Before, ``dcmread`` parsed the file and a second
walk checked it: two passes over every header of every instance.)

The identifiers are then read from their raw bytes when they are what the standard says
(the expected VR, a single value): UI, CS and IS values are plain ASCII whatever the
Specific Character Set, and pydicom's conversion (a DataElement, value validation, a
MultiValue check) cost about half of the parse. Anything else (another or unknown VR,
several values, a value deferred for its size) goes through pydicom as before, so odd files
get exactly the answer they got before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from dicom_node.errors import (
    MissingIdentifierError,
    SOPClassMismatchError,
    UnreadableDatasetError,
)
from dicom_node.uid_syntax import is_receivable_uid

#: Values above this size are not loaded while checking a dataset (pixel data, mostly).
DEFER_BYTES = 4096
UNDEFINED_LENGTH = 0xFFFFFFFF


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


#: The elements we record; everything else is only checked for completeness.
WANTED_TAGS = frozenset(
    Tag(keyword)
    for keyword in (
        "SpecificCharacterSet",
        "SOPClassUID",
        "SOPInstanceUID",
        "Modality",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SeriesNumber",
        "InstanceNumber",
    )
)
_TRANSFER_SYNTAX_TAG = Tag("TransferSyntaxUID")
#: The VR each identifier we read has in the standard: only such a value is read from its raw bytes.
_PLAIN_VR = {
    "SOPClassUID": "UI",
    "SOPInstanceUID": "UI",
    "StudyInstanceUID": "UI",
    "SeriesInstanceUID": "UI",
    "Modality": "CS",
    "SeriesNumber": "IS",
    "InstanceNumber": "IS",
}
_PLAIN_TAG = {keyword: Tag(keyword) for keyword in _PLAIN_VR}
_INTEGER = re.compile(r" *[+-]?[0-9]+ *")


def _not_file_meta(tag: BaseTag, vr: str | None, length: int) -> bool:
    return tag.group != 2


def _unreadable(exc: Exception) -> UnreadableDatasetError:
    # pydicom raises many exception types on hostile bytes: all of them mean the same here
    return UnreadableDatasetError(f"cannot parse dataset: {type(exc).__name__}")


def _read_deflated(path: Path) -> Dataset:
    """A deflated data set: pydicom inflates it in memory; a truncated stream raises."""
    try:
        return dcmread(path, defer_size=DEFER_BYTES)
    except Exception as exc:
        raise _unreadable(exc) from exc


class _Identifiers:
    """The wanted elements of one data set: plain ones read from their bytes, others through pydicom."""

    def __init__(self, elements: dict[BaseTag, Any], implicit: bool, dataset: Dataset | None = None) -> None:
        self._elements = elements
        self._implicit = implicit
        self._dataset = dataset  # a deflated data set arrives parsed

    def plain_text(self, keyword: str) -> str | None:
        """The value as pydicom would give it (trailing spaces and NULs removed) when it is a
        single value of the standard VR read raw; None otherwise (ask :meth:`get`)."""
        if self._dataset is not None:
            return None
        raw = self._elements.get(_PLAIN_TAG[keyword])
        if raw is None:
            return ""
        if raw.VR not in (None, _PLAIN_VR[keyword]) or not isinstance(raw.value, bytes):
            return None
        text = raw.value.decode("latin-1").rstrip(" \x00")  # pydicom's default_encoding (iso8859)
        return None if "\\" in text else text

    def get(self, keyword: str) -> Any:
        """The value as pydicom converts it (may raise on a VR pydicom cannot convert)."""
        if self._dataset is None:
            self._dataset = Dataset(self._elements)
            self._dataset.set_original_encoding(self._implicit, True)
        return self._dataset.get(keyword)


def _scan(path: Path) -> tuple[_Identifiers, str]:
    """One pass over the file: the wanted elements and the transfer syntax; raises if incomplete.

    Two checks on the element headers: every defined length fits inside the file, and
    nothing follows the last complete element. pydicom stops silently when fewer than 8
    bytes are left, so a stream cut inside an element header would otherwise pass for a
    complete, shorter data set.
    """
    size = path.stat().st_size
    wanted: dict[BaseTag, RawDataElement] = {}
    try:
        with path.open("rb") as fp:
            read_preamble(fp, False)
            end = fp.tell()
            meta: dict[BaseTag, Any] = {}
            for raw in data_element_generator(fp, False, True, stop_when=_not_file_meta):
                meta[raw.tag] = raw
                end = fp.tell()  # not after the loop: a cut header leaves fp at the end of the file
            fp.seek(end)
            syntax_raw = meta.get(_TRANSFER_SYNTAX_TAG)
            syntax = bytes(syntax_raw.value or b"").decode("ascii", "replace").strip("\x00 ") if syntax_raw else ""
            if syntax == DeflatedExplicitVRLittleEndian:
                return _Identifiers({}, False, _read_deflated(path)), syntax
            first = fp.read(6)
            fp.seek(end)
            implicit = syntax == ImplicitVRLittleEndian
            if len(first) == 6:  # as pydicom does: the first VR tells the encoding actually used
                implicit = not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)
            for element in data_element_generator(fp, implicit, True, defer_size=DEFER_BYTES):
                length = getattr(element, "length", UNDEFINED_LENGTH)
                if length != UNDEFINED_LENGTH and element.value_tell + length > size:
                    raise UnreadableDatasetError(
                        f"dataset truncated: element {element.tag} declares {length} bytes"
                    )
                if element.tag in WANTED_TAGS:
                    wanted[element.tag] = element  # type: ignore[assignment]
                end = fp.tell()
    except UnreadableDatasetError:
        raise
    except Exception as exc:
        raise _unreadable(exc) from exc
    if end != size:
        raise UnreadableDatasetError(
            f"dataset truncated: {size - end} byte(s) after the last complete element"
        )
    return _Identifiers(wanted, implicit), syntax


def _uid(ds: _Identifiers, keyword: str) -> str:
    text = ds.plain_text(keyword)
    if text is None:
        try:
            value = ds.get(keyword)
        except Exception as exc:  # an unknown or binary VR: pydicom cannot convert the value
            raise MissingIdentifierError(f"{keyword} is malformed (cannot decode it)") from exc
        text = str(value) if value is not None else ""
    text = text.strip("\x00 ")
    if not text:
        raise MissingIdentifierError(f"{keyword} is missing")
    if not is_receivable_uid(text):
        raise MissingIdentifierError(f"{keyword} is malformed (PS3.5 UI: at most 64 characters)")
    return text


def _int_or_none(ds: _Identifiers, keyword: str) -> int | None:
    text = ds.plain_text(keyword)
    if text is not None and (not text.strip() or _INTEGER.fullmatch(text)):
        return int(text) if text.strip() else None
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001 - absent, not a number, or a VR pydicom cannot convert: not an identifier
        return None


def _text_or_none(ds: _Identifiers, keyword: str, max_length: int) -> str | None:
    text = ds.plain_text(keyword)
    if text is not None:
        return text[:max_length] or None
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
    ds, transfer_syntax = _scan(path)
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
        transfer_syntax_uid=transfer_syntax,
        modality=_text_or_none(ds, "Modality", 16),
        series_number=_int_or_none(ds, "SeriesNumber"),
        instance_number=_int_or_none(ds, "InstanceNumber"),
        calling_ae_title=calling_ae_title,
    )
