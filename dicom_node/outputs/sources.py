"""Source image headers made fit to copy into the objects we create.

highdicom copies the Patient and Study modules of the first source image into
the SEG, SR and key images element by element, and takes the source's
Specific Character Set with them. Real scanners and anonymisers send values
that are fine to store but invalid in a new object: an empty (0008,0005),
an unknown character set, an Accession Number over SH's 16 characters, a
date "2003-04-17", a lower-case code string. highdicom then refuses to build
(``'' is not a valid SpecificCharacterSetValues``) or, worse, we write an
object that the PACS or dciodvfy rejects.

The rules here, applied to copies (the received files are never changed):

* every text value is decoded with the source's character set (an unknown
  or empty one falls back to the default repertoire, as pydicom does), and the
  objects are written in the default repertoire when every value is ASCII,
  else in UTF-8 (``ISO_IR 192``): one character set we know every value fits;
* a value that breaks its VR (PS3.5 6.2) is normalised when the meaning is
  kept (trailing spaces, control characters, an over-long SH/LO/PN cut to the
  VR's length, a lower-case CS upper-cased, a DS re-formatted to 16
  characters) and emptied when it is not (a date that is not YYYYMMDD, a
  number that is not one). Empty is what the standard asks for an unknown
  Type 2 value, and Type 3 values may be empty too;
* UIDs (VR UI) are kept exactly as sent, even malformed ones: they are what
  ties our objects to the study in the PACS;
* a series without a Frame of Reference UID gets one derived from its Series
  Instance UID (see :func:`dicom_node.outputs.uids.frame_of_reference_uid`),
  so the SEG's plane positions refer to a frame of reference, as its IOD
  requires, and every object of every job of that series names the same one.

What was changed is returned as attribute keywords only: values are patient
data and must never reach a log.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom.config import IGNORE
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName, format_number_as_ds

from dicom_node.outputs.common import with_patient_study_type2
from dicom_node.outputs.uids import frame_of_reference_uid

#: The character set of our objects when a copied value is not ASCII (PS3.3 C.12.1.1.2).
UTF8 = "ISO_IR 192"
#: Maximum value lengths of the text VRs (PS3.5 table 6.2-1); PN counts per component group.
MAX_LENGTH = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "DS": 16, "IS": 12}
#: Text VRs that may hold several lines: CR, LF, FF and TAB are allowed. Every
#: other text VR holds one line: no control characters at all (PS3.5 6.1.3).
MULTI_LINE_VRS = {"ST", "LT", "UT"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MULTI_LINE_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_CS_INVALID = re.compile(r"[^A-Z0-9 _]")
_FORMATS = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
    "AS": re.compile(r"\d{3}[DWMY]"),
}


@dataclass
class PreparedSources:
    """The source headers to build from, and which attributes had to be changed (keywords only)."""

    images: list[Dataset]
    normalised: set[str] = field(default_factory=set)
    emptied: set[str] = field(default_factory=set)
    frame_of_reference_derived: bool = False


def prepare_sources(headers: Sequence[Dataset], *, uid_root: str) -> PreparedSources:
    """Copies of ``headers`` that highdicom can copy from and dciodvfy accepts in our objects.

    ``headers`` are the chosen series' instances in volume order (one series,
    so one Frame of Reference or none).
    """
    prepared = PreparedSources(images=[])
    for header in headers:
        copy = _copy(header, prepared)
        _normalise_dataset(copy, prepared)
        prepared.images.append(copy)
    _choose_character_set(prepared.images)
    _complete_frame_of_reference(prepared, uid_root)
    prepared.images = [with_patient_study_type2(image) for image in prepared.images]
    return prepared


def _complete_frame_of_reference(prepared: PreparedSources, uid_root: str) -> None:
    """Every image gets the series' Frame of Reference UID: the one some images carry
    (volume assembly already refused a series with two), else one derived from the series."""
    present = {str(ds.FrameOfReferenceUID) for ds in prepared.images if ds.get("FrameOfReferenceUID")}
    if not prepared.images or len(present) > 1:
        return
    if present:
        uid = present.pop()
    else:
        uid = frame_of_reference_uid(uid_root, str(prepared.images[0].SeriesInstanceUID))
        prepared.frame_of_reference_derived = True
    for image in prepared.images:
        image.FrameOfReferenceUID = uid


def _copy(header: Dataset, prepared: PreparedSources) -> Dataset:
    """A copy whose text values are decoded str, so the original's character set no longer matters.

    A value that cannot even be read as its VR (a DS "seventy") is copied empty.
    """
    copy = Dataset()
    with warnings.catch_warnings():
        # An unknown character set warns once per value; the fallback is what we want.
        warnings.simplefilter("ignore")
        for tag in list(header.keys()):
            try:
                element = header[tag]  # decodes a raw element with the source's character set
            except (ValueError, TypeError, OverflowError):
                raw = header.get_item(tag)
                copy.add(DataElement(tag, raw.VR, None, validation_mode=IGNORE))
                prepared.emptied.add(keyword_for_tag(tag) or str(tag))
                continue
            copy.add(_decoded_copy(element, prepared))
    if hasattr(header, "file_meta"):
        copy.file_meta = header.file_meta
    return copy


def _decoded_copy(element: DataElement, prepared: PreparedSources) -> DataElement:
    if element.VR == "SQ":
        return DataElement(element.tag, "SQ", [_copy(item, prepared) for item in element.value])
    value = element.value
    if isinstance(value, PersonName):
        value = str(value)
    elif isinstance(value, MultiValue):
        value = [str(v) if isinstance(v, PersonName) else v for v in value]
    try:
        return DataElement(element.tag, element.VR, value, validation_mode=IGNORE)
    except (ValueError, TypeError, OverflowError):  # a DS "seventy": not a number at all
        prepared.emptied.add(element.keyword or str(element.tag))
        return DataElement(element.tag, element.VR, None, validation_mode=IGNORE)


def _normalise_dataset(dataset: Dataset, prepared: PreparedSources) -> None:
    for element in list(dataset):
        if element.tag == 0x00080005:  # chosen once for the whole object, below
            continue
        if element.VR == "SQ":
            for item in element.value:
                _normalise_dataset(item, prepared)
            continue
        fix = _FIXES.get(element.VR)
        if fix is None or element.value is None or element.value == "":
            continue
        values = list(element.value) if element.VM > 1 else [element.value]
        fixed = [fix(v) if v not in (None, "") else v for v in values]
        if fixed == [_as_text(v) for v in values]:
            continue
        keyword = element.keyword or str(element.tag)
        kept = [v for v in fixed if v is not None]
        if not kept:
            element.value = None
            prepared.emptied.add(keyword)
        else:
            element.value = kept if len(kept) > 1 else kept[0]
            prepared.normalised.add(keyword)


def _as_text(value: object) -> object:
    return str(value) if not isinstance(value, str | bytes) and value is not None else value


def _text(vr: str) -> Callable[[object], str | None]:
    def fix(value: object) -> str | None:
        text = str(value)
        pattern = _MULTI_LINE_CONTROL if vr in MULTI_LINE_VRS else _CONTROL
        text = pattern.sub("", text).rstrip()
        if vr == "CS":
            text = _CS_INVALID.sub("_", text.upper())
        limit = MAX_LENGTH.get(vr)
        if limit is not None and vr == "PN":
            text = "=".join(group[:limit].rstrip() for group in text.split("="))
        elif limit is not None:
            text = text[:limit].rstrip()
        return text or None

    return fix


def _formatted(vr: str) -> Callable[[object], str | None]:
    pattern = _FORMATS[vr]

    def fix(value: object) -> str | None:
        text = str(value).strip()
        return text if pattern.fullmatch(text) else None

    return fix


def _number(text: str) -> float | None:
    """The value a DS or IS string means, or None when it is not a number at all."""
    try:
        return float(text)
    except ValueError:
        return None


def _decimal(value: object) -> str | None:
    """A DS: kept when it fits 16 characters, re-formatted when it does not; not a finite number: None."""
    text = str(value).strip()
    number = _number(text)
    if number is None or not math.isfinite(number):
        return None
    return text if len(text) <= MAX_LENGTH["DS"] else format_number_as_ds(number)


def _integer(value: object) -> str | None:
    """An IS: "1.0" is still the integer 1; "1.5", "abc" and anything beyond 32 bits are not."""
    text = str(value).strip()
    number = _number(text)
    if number is None or not number.is_integer() or not -(2**31) <= number < 2**31:
        return None
    return text if len(text) <= MAX_LENGTH["IS"] and text.lstrip("+-").isdigit() else str(int(number))


_FIXES: dict[str, Callable[[object], str | None]] = {
    **{vr: _text(vr) for vr in ("AE", "CS", "SH", "LO", "PN", "ST", "LT", "UC", "UT")},
    **{vr: _formatted(vr) for vr in ("DA", "TM", "DT", "AS")},
    "DS": _decimal,
    "IS": _integer,
}


def _choose_character_set(images: list[Dataset]) -> None:
    """The default repertoire when every text value is ASCII, else UTF-8, on every image."""
    charset = UTF8 if any(_has_non_ascii(image) for image in images) else None
    for image in images:
        if charset is None:
            if "SpecificCharacterSet" in image:
                del image.SpecificCharacterSet
        else:
            image.SpecificCharacterSet = charset


def _has_non_ascii(dataset: Dataset) -> bool:
    for element in dataset:
        if element.VR == "SQ":
            if any(_has_non_ascii(item) for item in element.value):
                return True
            continue
        values = element.value if isinstance(element.value, MultiValue) else [element.value]
        if any(isinstance(v, str | PersonName) and not str(v).isascii() for v in values):
            return True
    return False
