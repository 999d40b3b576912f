"""A deterministic corpus of hostile and hard input, each case with its expected outcome.

Issue 6: what senders send is not always DICOM. Every case here is built from the
synthetic head CT of :mod:`tests.support.synthetic_ct` (no patient data) and says up
front what the node must answer:

* an **ingest case** is one Part 10 file sent with C-STORE; it expects a C-STORE
  status (:data:`SUCCESS`, :data:`DATASET_DOES_NOT_MATCH_SOP_CLASS`,
  :data:`CANNOT_UNDERSTAND`), or that the presentation context is refused at
  association (:data:`NO_CONTEXT`), or, for a stream the sender abandons half way
  (:attr:`IngestCase.abort_after`), no status at all (:data:`ABORTED`);
* a **study case** is a whole study that ingest accepts (every status 0x0000) but
  that is hard to analyse: it expects the job to succeed, or to be dead-lettered
  with a reason containing :attr:`StudyCase.reason`.

Bad input gets a refusal with a specific status. Hard input (character sets, UIDs
that are not dotted numbers but fit in 64 printable characters, every transfer
syntax we accept, SR and SEG objects) is accepted and stored byte for byte.

Byte-level cases encode a valid instance with pydicom, then patch its data set at
offsets found by :func:`layout`, so each case is exactly the broken stream it names.
UIDs derive from the case names (``generate_uid(..., entropy_srcs=...)``), so the
corpus is the same on every run. The bytes are built on first use
(:attr:`IngestCase.data`, :meth:`StudyCase.datasets`): listing the cases is cheap,
which keeps test collection fast.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property, partial
from io import BytesIO
from pathlib import Path
from unittest import mock

import numpy as np
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    BasicTextSRStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedSRStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    SegmentationStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom import association as pynetdicom_association
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from dicom_node.dicom.requestor import keep_responses_for_senders
from dicom_node.ingest.scp import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SUCCESS,
)
from tests.support.node import NODE_AE
from tests.support.synthetic_ct import (
    TEST_UID_PREFIX,
    Lesion,
    SeriesSpec,
    head_volume,
    series_datasets,
)

#: The association refuses the presentation context (SOP class or transfer syntax not in our table).
NO_CONTEXT = -1
#: The sender aborts the association half way through the data set: no status is ever sent.
ABORTED = -2

STATUS_NAMES = {
    SUCCESS: "0x0000 success",
    DATASET_DOES_NOT_MATCH_SOP_CLASS: "0xA900 does not match SOP class",
    CANNOT_UNDERSTAND: "0xC000 cannot understand",
    NO_CONTEXT: "context rejected at association",
    ABORTED: "aborted by sender, no status",
}

#: Explicit VR elements whose header is 12 bytes (a 4-byte length after 2 reserved bytes).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})
UNDEFINED_LENGTH = 0xFFFFFFFF

STUDY_UID = 0x0020000D
SERIES_UID = 0x0020000E
SOP_INSTANCE_UID = 0x00080018
SOP_CLASS_UID = 0x00080016
CHARACTER_SET = 0x00080005
PIXEL_DATA = 0x7FE00010
PATIENT_NAME = 0x00100010

#: Field of view of the phantom; pixel spacing is scaled so the head fits any matrix.
FIELD_OF_VIEW_MM = 200.0


def uid(*parts: str) -> str:
    """A UID under the test prefix, the same for the same ``parts`` on every run."""
    return str(generate_uid(TEST_UID_PREFIX, entropy_srcs=["hostile", *parts]))


def tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class IngestCase:
    """One Part 10 file sent with C-STORE, and the answer the listener must give."""

    family: str
    name: str
    expected: int  # a C-STORE status, NO_CONTEXT or ABORTED
    #: Makes the file from the case name (the name seeds the UIDs).
    build: Callable[[str], bytes] = field(repr=False, compare=False)
    #: What the Error Comment must contain (refusals only; empty: not checked).
    comment: str = ""
    #: Send this many 256-byte P-DATA fragments of the message (negative: all but that many), then A-ABORT.
    abort_after: int | None = None
    #: A file sent (and accepted) first, over its own association: what a duplicate duplicates.
    prelude: Callable[[str], bytes] | None = field(default=None, repr=False, compare=False)
    #: For an accepted case: whether it adds a file and a row (a kept-out duplicate adds neither).
    stores: bool = True

    @cached_property
    def data(self) -> bytes:
        return self.build(self.name)

    @cached_property
    def prelude_data(self) -> bytes | None:
        return None if self.prelude is None else self.prelude(self.name)

    @property
    def meta(self) -> Dataset:
        """The File Meta Information: what the C-STORE command and context are made from."""
        return read_meta(self.data)

    @property
    def sop_instance_uid(self) -> str:
        """The command's Affected SOP Instance UID (the dataset's may differ, on purpose)."""
        return str(self.meta.MediaStorageSOPInstanceUID)

    @property
    def dataset(self) -> bytes:
        """The encoded data set: what goes over the wire after the command."""
        return split_part10(self.data)[1]


@dataclass(frozen=True)
class StudyCase:
    """A study every instance of which is accepted, and what its analysis job must end as."""

    family: str
    name: str
    expected_job: str  # "succeeded", "dead" (cannot be analysed as sent) or "skipped" (not for this analysis)
    #: Makes the study's instances from the case name.
    build: Callable[[str], list[Dataset]] = field(repr=False, compare=False)
    reason: str = ""  # substring of the job's last_error when dead
    why: str = ""

    @property
    def study_instance_uid(self) -> str:
        return uid(self.name, "study")

    def files(self) -> list[bytes]:
        datasets = self.build(self.name)
        studies = {str(ds.StudyInstanceUID) for ds in datasets}
        if studies != {self.study_instance_uid}:
            raise AssertionError(f"{self.name}: every instance must be in study {self.study_instance_uid}")
        return [encode(ds) for ds in datasets]

    def write_files(self, folder: Path) -> list[Path]:
        """The case's instances as numbered files in a new ``folder``, in sending order."""
        folder.mkdir()
        paths = []
        for k, data in enumerate(self.files()):
            path = folder / f"{k:05d}.dcm"
            path.write_bytes(data)
            paths.append(path)
        return paths


# --------------------------------------------------------------------------- bytes


@dataclass(frozen=True)
class Element:
    """Where one top-level data element sits in an encoded data set."""

    tag: int
    vr: str
    header_offset: int
    value_offset: int
    length: int

    @property
    def end(self) -> int:
        return self.value_offset + self.length

    @property
    def header_length(self) -> int:
        return self.value_offset - self.header_offset


def read_meta(data: bytes) -> Dataset:
    """The File Meta Information of a Part 10 file, however broken its data set is."""
    fp = BytesIO(data)
    read_preamble(fp, False)
    return read_dataset(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2)


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + DICM + File Meta Information, data set) of a Part 10 file."""
    if data[128:132] != b"DICM" or data[132:136] != b"\x02\x00\x00\x00":
        raise ValueError("not a Part 10 file starting with (0002,0000)")
    end = 144 + struct.unpack("<I", data[140:144])[0]
    return data[:end], data[end:]


def layout(dataset: bytes, *, implicit: bool) -> list[Element]:
    """Every top-level element of a little endian data set with defined lengths, in file order."""
    elements = []
    for raw in data_element_generator(BytesIO(dataset), implicit, True, defer_size=None):
        vr = raw.VR or dictionary_VR(raw.tag)
        header = 8 if implicit or vr not in LONG_VRS else 12
        if raw.length == UNDEFINED_LENGTH:
            raise ValueError("layout() is for defined-length top-level elements only")
        elements.append(Element(int(raw.tag), vr, raw.value_tell - header, raw.value_tell, raw.length))
    return elements


def find(elements: Sequence[Element], tag: int) -> Element:
    return next(e for e in elements if e.tag == tag)


def explicit_element(tag: int, vr: str, value: bytes, length: int | None = None) -> bytes:
    """One explicit VR little endian element; ``length`` overrides the declared length."""
    declared = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + vr.encode("ascii")
    if vr in LONG_VRS:
        return head + b"\x00\x00" + struct.pack("<I", declared) + value
    return head + struct.pack("<H", declared) + value


def encode(ds: Dataset) -> bytes:
    """``ds`` as a Part 10 file, in the transfer syntax of its file meta."""
    buffer = BytesIO()
    with pydicom_config.disable_value_validation():
        ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def patch(data: bytes, offset: int, new: bytes, *, remove: int | None = None) -> bytes:
    """Replace ``remove`` (default ``len(new)``) bytes at ``offset`` of the data set of ``data``."""
    meta, dataset = split_part10(data)
    remove = len(new) if remove is None else remove
    return meta + dataset[:offset] + new + dataset[offset + remove :]


def replace_element(data: bytes, tag: int, new: bytes) -> bytes:
    """``data`` with the whole element ``tag`` (header and value) replaced by ``new`` (explicit VR)."""
    element = find(layout(split_part10(data)[1], implicit=False), tag)
    return patch(data, element.header_offset, new, remove=element.end - element.header_offset)


def even(value: bytes, pad: bytes = b"\x00") -> bytes:
    return value + pad if len(value) % 2 else value


# --------------------------------------------------------------------------- sources


def ct_datasets(
    name: str,
    *,
    n_slices: int = 1,
    rows: int = 32,
    columns: int = 32,
    slice_thickness_mm: float = 5.0,
    lesions: Sequence[Lesion] = (),
    gantry_tilt_deg: float = 0.0,
    series_key: str = "series",
    series_number: int = 2,
) -> list[Dataset]:
    """A synthetic head CT series in study ``uid(name, "study")``, every UID derived from ``name``."""
    spacing = FIELD_OF_VIEW_MM / max(rows, columns)
    spec = SeriesSpec(
        n_slices=n_slices,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=(spacing, spacing),
        slice_thickness_mm=slice_thickness_mm,
        lesions=list(lesions),
        study_instance_uid=uid(name, "study"),
        series_instance_uid=uid(name, series_key),
        frame_of_reference_uid=uid(name, "frame"),
        series_number=series_number,
        gantry_tilt_deg=gantry_tilt_deg,
    )
    datasets = series_datasets(spec)
    for k, ds in enumerate(datasets):
        sop = uid(name, series_key, "sop", str(k))
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
    return datasets


def in_syntax(ds: Dataset, transfer_syntax: str) -> Dataset:
    """``ds`` in ``transfer_syntax`` (compressed by pydicom where the syntax asks)."""
    syntax = UID(transfer_syntax)
    if syntax.is_compressed:
        ds.compress(syntax)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def base(name: str, transfer_syntax: str = ExplicitVRLittleEndian, **kwargs: object) -> bytes:
    """A valid single 32x32 CT slice with UIDs from ``name``, encoded in ``transfer_syntax``."""
    [ds] = ct_datasets(name, **kwargs)  # type: ignore[arg-type]
    return encode(in_syntax(ds, transfer_syntax))


PROBE = "probe"  # the layout of every base file: UIDs derived from names all have 64 characters


def probe_layout(transfer_syntax: str = ExplicitVRLittleEndian, *, implicit: bool = False) -> list[Element]:
    return layout(split_part10(base(PROBE, transfer_syntax))[1], implicit=implicit)


# --------------------------------------------------------------------------- ingest families


def _cut_inside(name: str, *, syntax: str, implicit: bool, tag: int, where: str) -> bytes:
    meta, dataset = split_part10(base(name, syntax))
    element = find(layout(dataset, implicit=implicit), tag)
    cut = {
        "header": element.header_offset + 3,
        "length field": element.header_offset + 10,
        "value": element.value_offset + element.length // 2,
    }[where]
    return meta + dataset[:cut]


def truncated_cases() -> list[IngestCase]:
    """Streams that end inside an element: in its header, its 4-byte length, or its value."""
    cases = []
    for family, syntax, implicit in (("truncated explicit VR", ExplicitVRLittleEndian, False),
                                     ("truncated implicit VR", ImplicitVRLittleEndian, True)):
        for index, element in enumerate(probe_layout(syntax, implicit=implicit)):
            if implicit and index % 3:
                continue  # a third of the elements suffices for the implicit encoding
            places = ["header"]
            if element.header_length == 12:
                places.append("length field")
            if element.length > 1:
                places.append("value")
            for where in places:
                # Cut in a 4-byte length field, the parser itself fails ("cannot parse").
                comment = "cannot parse" if where == "length field" else "truncated"
                cases.append(IngestCase(
                    family, f"{family}/{tag_text(element.tag)} in {where}", CANNOT_UNDERSTAND,
                    partial(_cut_inside, syntax=syntax, implicit=implicit, tag=element.tag, where=where), comment,
                ))

    def pixel_cut(name: str, fraction: float) -> bytes:
        meta, dataset = split_part10(base(name))
        pixel = find(layout(dataset, implicit=False), PIXEL_DATA)
        return meta + dataset[: pixel.value_offset + int(pixel.length * fraction)]

    for fraction in (0.01, 0.25, 0.5, 0.9):
        cases.append(IngestCase("truncated pixel data", f"truncated pixel data/at {fraction:.0%}", CANNOT_UNDERSTAND,
                                partial(pixel_cut, fraction=fraction), "truncated"))
    cases.append(IngestCase("truncated pixel data", "truncated pixel data/one byte short", CANNOT_UNDERSTAND,
                            lambda name: base(name)[:-1], "truncated"))

    def encapsulated_cut(name: str, syntax: str, back: int | None) -> bytes:
        data = base(name, syntax)
        meta, dataset = split_part10(data)
        return data[:-back] if back else meta + dataset[: len(dataset) // 2]

    for syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        for where, back in (("in the last fragment", 20), ("in the sequence delimiter", 4), ("half way", None)):
            cases.append(IngestCase("truncated encapsulated", f"truncated encapsulated/{UID(syntax).name} {where}",
                                    CANNOT_UNDERSTAND, partial(encapsulated_cut, syntax=syntax, back=back)))

    def deflate_cut(name: str, fraction: float) -> bytes:
        meta, dataset = split_part10(base(name, DeflatedExplicitVRLittleEndian))
        return meta + dataset[: int(len(dataset) * fraction)]

    for fraction in (0.1, 0.5, 0.95):
        cases.append(IngestCase("truncated deflate stream", f"truncated deflate stream/at {fraction:.0%}",
                                CANNOT_UNDERSTAND, partial(deflate_cut, fraction=fraction), "cannot parse"))
    return cases


def trailing_cases() -> list[IngestCase]:
    """A complete data set then 1-7 bytes: an element header that never ends.

    pydicom reads fewer than 8 remaining bytes as a clean end of file.
    """
    cases = []
    for n in range(1, 8):
        cases.append(IngestCase("trailing partial header", f"trailing partial header/{n} byte(s) after the pixel data",
                                CANNOT_UNDERSTAND, lambda name, n=n: base(name) + b"\xe0\x7f\x10\x00OW\x00"[:n],
                                "truncated"))
    for syntax in (RLELossless, ImplicitVRLittleEndian):
        cases.append(IngestCase("trailing partial header", f"trailing partial header/3 bytes after {UID(syntax).name}",
                                CANNOT_UNDERSTAND, lambda name, syntax=syntax: base(name, syntax) + b"\x08\x00\x30",
                                "truncated"))
    return cases


def boundary_cases() -> list[IngestCase]:
    """Streams that end exactly between two elements: a complete, shorter data set.

    Part 10 carries no overall length, so this cannot be told from an instance that
    never had the later elements: refused only when an identifier is gone.
    """

    def cut_before(name: str, tag: int) -> bytes:
        meta, dataset = split_part10(base(name))
        return meta + dataset[: find(layout(dataset, implicit=False), tag).header_offset]

    cases = []
    for tag, keyword, expected in (
        (SOP_CLASS_UID, "SOPClassUID", DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (SOP_INSTANCE_UID, "SOPInstanceUID", DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (STUDY_UID, "StudyInstanceUID", DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (SERIES_UID, "SeriesInstanceUID", DATASET_DOES_NOT_MATCH_SOP_CLASS),
        (PIXEL_DATA, "PixelData", SUCCESS),
    ):
        comment = "is missing" if expected != SUCCESS else ""
        cases.append(IngestCase("element boundary", f"element boundary/ends before {keyword}", expected,
                                partial(cut_before, tag=tag), comment))
    cases.append(IngestCase("element boundary", "element boundary/empty data set", DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            lambda name: split_part10(base(name))[0], "is missing"))
    return cases


VR_TARGETS = {
    "PatientName": PATIENT_NAME,
    "StudyDescription": 0x00081030,
    "Modality": 0x00080060,
    "ImageType": 0x00080008,
    "Rows": 0x00280010,
    "SliceThickness": 0x00180050,
    "ImagePositionPatient": 0x00200032,
    "StudyInstanceUID": STUDY_UID,
    "SeriesInstanceUID": SERIES_UID,
    "SOPInstanceUID": SOP_INSTANCE_UID,
}


def _with_vr(name: str, tag: int, vr: bytes) -> bytes:
    data = base(name)
    return patch(data, find(layout(split_part10(data)[1], implicit=False), tag).header_offset + 4, vr)


def vr_cases() -> list[IngestCase]:
    """Wrong VRs. Which status follows depends on what a parser can still make of the bytes:

    * ``00 00`` or lower case is not a VR: the header is read as implicit VR, and the
      VR bytes become the high half of a 32-bit length far past the end: 0xC000;
    * a long-length VR (``OB``, ``UT``, ``SQ``) on an 8-byte header: the length is read
      from the value's first four bytes, past the end here: 0xC000 (combinations
      whose misread length stays inside the file are left out: no clean expectation);
    * an unknown but well-formed VR (``QQ``), or another short VR, keeps the stream
      aligned: a non-identifier is stored as sent; an identifier must still read as a UID.
    """
    cases = []
    probe_data = base(PROBE)
    probe_dataset = split_part10(probe_data)[1]
    elements = {e.tag: e for e in layout(probe_dataset, implicit=False)}
    for keyword, tag in VR_TARGETS.items():
        is_uid = keyword.endswith("UID")
        refused = DATASET_DOES_NOT_MATCH_SOP_CLASS if is_uid else SUCCESS
        variants: list[tuple[str, bytes, int, str]] = [
            ("not a VR (00 00)", b"\x00\x00", CANNOT_UNDERSTAND, "truncated"),
            ("lower case ui", b"ui", CANNOT_UNDERSTAND, "truncated"),
            ("unknown VR QQ", b"QQ", refused, keyword if is_uid else ""),
        ]
        element = elements[tag]
        misread = struct.unpack("<I", probe_dataset[element.value_offset : element.value_offset + 4])[0]
        if element.value_offset + 4 + misread > len(probe_dataset):
            variants += [(vr, vr.encode(), CANNOT_UNDERSTAND, "") for vr in ("OB", "UT", "SQ")]
        if is_uid:
            # The right characters under another text VR are still a UID; binary VRs are not.
            variants += [("LO", b"LO", SUCCESS, ""), ("US", b"US", refused, keyword), ("FD", b"FD", refused, keyword)]
        else:
            variants.append(("US", b"US", SUCCESS, ""))
        for label, vr, expected, comment in variants:
            cases.append(IngestCase("wrong VR", f"wrong VR/{keyword} as {label}", expected,
                                    partial(_with_vr, tag=tag, vr=vr), comment))
    return cases


def _with_length(name: str, tag: int, length: int | None) -> bytes:
    """``length`` in the length field of ``tag``; None: one byte past the end of the data set."""
    data = base(name)
    dataset = split_part10(data)[1]
    element = find(layout(dataset, implicit=False), tag)
    short = element.header_length == 8
    if length is None:
        length = len(dataset) - element.value_offset + 1
    return patch(data, element.value_offset - (2 if short else 4), struct.pack("<H" if short else "<I", length))


def length_cases() -> list[IngestCase]:
    """Declared lengths that point past the end of the stream."""
    cases = []
    for element in probe_layout()[::2]:
        short = element.header_length == 8
        # Specific Character Set is decoded while parsing: its garbage value fails first.
        comment = "cannot parse" if element.tag == CHARACTER_SET else "truncated"
        for label, length in (("one past the end", None), ("maximum", 0xFFFF if short else 0xFFFFFFF0)):
            cases.append(IngestCase("length past the end", f"length past the end/{tag_text(element.tag)} "
                                    f"{element.vr} {label}", CANNOT_UNDERSTAND,
                                    partial(_with_length, tag=element.tag, length=length), comment))
    pixel = find(probe_layout(), PIXEL_DATA)
    cases.append(IngestCase("length past the end", "length past the end/PixelData two bytes short of its value",
                            CANNOT_UNDERSTAND, partial(_with_length, tag=PIXEL_DATA, length=pixel.length - 2),
                            "truncated"))
    return cases


def huge_length_cases() -> list[IngestCase]:
    """Huge declared lengths: the node must neither allocate nor wait for them."""
    cases = []
    for length in (0xFFFFFFF0, 0x80000000, 0x7FFFFFFF):
        cases.append(IngestCase("huge length", f"huge length/PixelData OW 0x{length:08X}", CANNOT_UNDERSTAND,
                                partial(_with_length, tag=PIXEL_DATA, length=length), "truncated"))
    # Undefined length on native pixel data: the sequence delimiter it implies never comes.
    cases.append(IngestCase("huge length", "huge length/PixelData OW undefined length", CANNOT_UNDERSTAND,
                            partial(_with_length, tag=PIXEL_DATA, length=UNDEFINED_LENGTH)))
    # An element after the pixel data claiming 4 GB, one per long VR.
    for vr, tag in (("OB", 0x7FE10010), ("UT", 0x7FE10011), ("UN", 0x7FE10012), ("OW", 0x7FE10013), ("UC", 0x7FE10014)):
        cases.append(IngestCase("huge length", f"huge length/trailing {vr} element 0xFFFFFFF0", CANNOT_UNDERSTAND,
                                lambda name, vr=vr, tag=tag: base(name) + explicit_element(tag, vr, b"\x00\x00", 0xFFFFFFF0),
                                "truncated"))
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 12) + explicit_element(0x00081150, "UI", b"1.2.3\x00")
    cases.append(IngestCase("huge length", "huge length/defined-length SQ 0xFFFFFFF0", CANNOT_UNDERSTAND,
                            lambda name: base(name) + explicit_element(0x7FE10020, "SQ", item, 0xFFFFFFF0)))

    def implicit_length(name: str, tag: int, length: int) -> bytes:
        data = base(name, ImplicitVRLittleEndian)
        element = find(layout(split_part10(data)[1], implicit=True), tag)
        return patch(data, element.value_offset - 4, struct.pack("<I", length))

    for keyword, tag in (("StudyInstanceUID", STUDY_UID), ("PatientName", PATIENT_NAME), ("PixelData", PIXEL_DATA)):
        for label, length in (("0xFFFFFFF0", 0xFFFFFFF0), ("undefined", UNDEFINED_LENGTH)):
            cases.append(IngestCase("huge length", f"huge length/implicit VR {keyword} {label}", CANNOT_UNDERSTAND,
                                    partial(implicit_length, tag=tag, length=length)))
    return cases


#: (label, value, expected status). Stored ones go under a hashed path (see dicom/storage.py).
UID_VARIANTS: tuple[tuple[str, str, int], ...] = (
    ("parent directory ../../x", "../../x", SUCCESS),
    ("dot dot", "..", SUCCESS),
    ("single dot", ".", SUCCESS),
    ("absolute path", "/etc/passwd", SUCCESS),
    ("dot slash", "./1.2.3", SUCCESS),
    ("backquote and semicolon", "1.2.3;`id`", SUCCESS),
    ("percent and dollar", "%2e%2e$HOME", SUCCESS),
    ("Windows separators (backslash: two values)", "..\\..\\x", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("exactly 64 characters", "1." + "2" * 62, SUCCESS),
    ("64 dots", "." * 64, SUCCESS),
    ("65 characters", "1." + "2" * 63, DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("200 characters", "1." + "3" * 198, DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("space inside", "1.2 .3", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("shell command with spaces", "$(rm -rf /)", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("trailing space padding", "1.2.840.99 ", SUCCESS),
    ("trailing NUL padding", "1.2.840.98\x00", SUCCESS),
    ("leading space", " 1.2.840.97", SUCCESS),
    ("NUL inside", "1.2\x00.3", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("tab inside", "1.2\t3", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("newline inside", "1.2\n3", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("only spaces", "    ", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("empty", "", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("Latin-1 e acute", "1.2.\xe9", DATASET_DOES_NOT_MATCH_SOP_CLASS),
    ("bytes 0xFF 0xFE", "\xff\xfe\xfd\xfc", DATASET_DOES_NOT_MATCH_SOP_CLASS),
)
SERIES_UID_VARIANTS = ("parent directory ../../x", "dot dot", "absolute path", "65 characters", "space inside")


def _with_uid(name: str, tag: int, value: bytes) -> bytes:
    return replace_element(base(name), tag, explicit_element(tag, "UI", even(value)))


def uid_cases() -> list[IngestCase]:
    cases = []
    for label, value, expected in UID_VARIANTS:
        for keyword, tag in (("StudyInstanceUID", STUDY_UID), ("SeriesInstanceUID", SERIES_UID)):
            if keyword == "SeriesInstanceUID" and label not in SERIES_UID_VARIANTS:
                continue
            cases.append(IngestCase("UID", f"UID/{keyword} {label}", expected,
                                    partial(_with_uid, tag=tag, value=value.encode("latin-1")),
                                    "" if expected == SUCCESS else keyword))
    cases.append(IngestCase("UID", "UID/StudyInstanceUID UTF-8 ellipsis", DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            partial(_with_uid, tag=STUDY_UID, value="1.2\u2026".encode()), "StudyInstanceUID"))

    # SOP Instance UIDs the command carries too (the SCU sends any value of at most 64 characters).
    def sop_in_command(name: str, value: str) -> bytes:
        [ds] = ct_datasets(name)
        with pydicom_config.disable_value_validation():
            ds.SOPInstanceUID = value
            ds.file_meta.MediaStorageSOPInstanceUID = value
        return encode(ds)

    for label, value in (("parent directory", "../../../tmp/x"), ("dot dot", ".."), ("dot", ".")):
        cases.append(IngestCase("UID", f"UID/SOPInstanceUID {label} (command too)", SUCCESS,
                                partial(sop_in_command, value=value)))
    for label, value in (("65 characters", "1." + "9" * 63), ("space inside", "1.2 .4")):
        cases.append(IngestCase("UID", f"UID/SOPInstanceUID {label} (data set only)", DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                partial(_with_uid, tag=SOP_INSTANCE_UID, value=value.encode()), "SOPInstanceUID"))
    return cases


def identifier_cases() -> list[IngestCase]:
    """Identifiers missing, or differing from the C-STORE command (PS3.4 B.2.3)."""
    cases = []
    for keyword, tag in (("SOPClassUID", SOP_CLASS_UID), ("SOPInstanceUID", SOP_INSTANCE_UID),
                         ("StudyInstanceUID", STUDY_UID), ("SeriesInstanceUID", SERIES_UID)):
        cases.append(IngestCase("identifier", f"identifier/{keyword} absent", DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                lambda name, tag=tag: replace_element(base(name), tag, b""), f"{keyword} is missing"))
    for label, value in (("MR", MRImageStorage), ("SEG", SegmentationStorage)):
        cases.append(IngestCase("identifier", f"identifier/SOPClassUID is {label}, the command says CT",
                                DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                partial(_with_uid, tag=SOP_CLASS_UID, value=value.encode()), "SOP Class"))
    cases.append(IngestCase("identifier", "identifier/SOPInstanceUID differs from the command",
                            DATASET_DOES_NOT_MATCH_SOP_CLASS,
                            lambda name: _with_uid(name, SOP_INSTANCE_UID, uid(name, "other").encode()), "differs"))
    return cases


#: (label, SpecificCharacterSet, PatientName, StudyDescription); PS3.5 Annex H-K examples where there are some.
CHARSETS: tuple[tuple[str, str | list[str], str, str], ...] = (
    ("ISO_IR 100 German", "ISO_IR 100", "Müller^Jürgen", "Schädel nativ"),
    ("ISO_IR 100 French", "ISO_IR 100", "Buc^Jérôme", "Crâne sans injection"),
    ("ISO_IR 192 Cyrillic", "ISO_IR 192", "Люкceмбypг^Гaвpиил", "КТ головы"),
    ("ISO_IR 192 Japanese", "ISO_IR 192", "Yamada^Tarou=山田^太郎=やまだ^たろう", "頭部CT"),
    ("ISO_IR 192 Chinese", "ISO_IR 192", "Wang^XiaoDong=王^小東=", "头部CT平扫"),
    ("ISO_IR 192 Arabic", "ISO_IR 192", "قباني^لنزار", "رأس"),
    ("ISO_IR 192 emoji (4-byte UTF-8)", "ISO_IR 192", "Test^\U0001f9e0", "Head \U0001f480 CT"),
    ("ISO 2022 IR 87 Japanese kanji", ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "HEAD CT"),
    ("ISO 2022 IR 13 + IR 87 Japanese katakana", ["ISO 2022 IR 13", "ISO 2022 IR 87"], "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう", "HEAD CT"),
    ("ISO 2022 IR 149 Korean", ["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "HEAD CT"),
    ("ISO_IR 144 Cyrillic", "ISO_IR 144", "Люкceмбypг^Гaвpиил", "HEAD CT"),
    ("GB18030 Chinese", "GB18030", "Wang^XiaoDong=王^小东=", "头部CT"),
    ("ISO_IR 13 Japanese katakana", "ISO_IR 13", "ﾔﾏﾀﾞ^ﾀﾛｳ", "HEAD CT"),
)


def charset_datasets(name: str, charset: str | list[str], patient_name: str, description: str,
                     **kwargs: object) -> list[Dataset]:
    datasets = ct_datasets(name, **kwargs)  # type: ignore[arg-type]
    for ds in datasets:
        ds.SpecificCharacterSet = charset
        ds.PatientName = patient_name
        ds.StudyDescription = f"HEAD {description}"
        ds.InstitutionName = description
    return datasets


def charset_cases() -> list[IngestCase]:
    """Hard, not bad: the character sets sites use, each stored byte for byte."""
    cases = []
    for label, charset, patient_name, description in CHARSETS:
        cases.append(IngestCase("character set", f"character set/{label}", SUCCESS,
                                lambda name, c=charset, p=patient_name, d=description:
                                encode(charset_datasets(name, c, p, d)[0])))

    def latin1_as_utf8(name: str) -> bytes:
        [ds] = ct_datasets(name)
        ds.SpecificCharacterSet = "ISO_IR 192"
        return replace_element(encode(ds), PATIENT_NAME,
                               explicit_element(PATIENT_NAME, "PN", even("Müller^Jürgen".encode("latin-1"), b" ")))

    def unknown_term(name: str) -> bytes:
        [ds] = ct_datasets(name)
        with pydicom_config.disable_value_validation():
            ds.SpecificCharacterSet = "ISO_IR 999"
        return encode(ds)

    # Declared and actual encodings disagree: still stored as sent; names are not ours to fix.
    cases.append(IngestCase("character set", "character set/Latin-1 bytes declared ISO_IR 192", SUCCESS, latin1_as_utf8))
    cases.append(IngestCase("character set", "character set/unknown term ISO_IR 999", SUCCESS, unknown_term))
    return cases


def seg_and_sr(name: str, n_slices: int = 4) -> tuple[Dataset, Dataset]:
    """A BINARY SEG and a TID 1500 SR, made by our own builders, over a CT series of study ``name``."""
    from dicom_node.outputs import (
        AlgorithmInfo,
        Equipment,
        SegmentSpec,
        StudyAssessment,
        build_report,
        build_segmentation,
    )

    lesions = [Lesion((10.0, 10.0, 0.0), 25.0)]
    sources = ct_datasets(name, n_slices=n_slices, lesions=lesions, series_key="seg source")
    spacing = FIELD_OF_VIEW_MM / 32
    _, mask = head_volume(SeriesSpec(n_slices=n_slices, rows=32, columns=32, pixel_spacing_mm=(spacing, spacing),
                                     lesions=lesions))
    equipment = Equipment(manufacturer="hostile corpus", manufacturer_model_name="corpus", software_versions="1",
                          device_serial_number="1")
    algorithm = AlgorithmInfo(name="corpus", version="1")
    seg = build_segmentation(
        source_images=sources, label_map=mask.astype(np.uint8), segments=[SegmentSpec(1, "ICH", uid(name, "track"))],
        algorithm=algorithm, equipment=equipment, series_instance_uid=uid(name, "seg series"), series_number=90,
        series_description="SEG", sop_instance_uid=uid(name, "seg"), dimension_organization_uid=uid(name, "dim"),
    )
    sr = build_report(
        source_images=sources, assessment=StudyAssessment(False, 0.1), lesions=[], segmentation=None,
        algorithm=algorithm, equipment=equipment, device_observer_uid=uid(name, "device"),
        series_instance_uid=uid(name, "sr series"), series_number=91,
        series_description="SR", sop_instance_uid=uid(name, "sr"),
    )
    return seg, sr


def object_cases() -> list[IngestCase]:
    """Objects other than CT images: those in our table are stored, others refused at association."""

    def enhanced_sr(name: str) -> bytes:
        _, sr = seg_and_sr(name)
        sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = EnhancedSRStorage
        return encode(sr)

    def not_ours(name: str, sop_class: str) -> bytes:
        [ds] = ct_datasets(name)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
        return encode(ds)

    family = "SR, SEG and other objects"
    return [
        IngestCase(family, "object/Segmentation (BINARY SEG)", SUCCESS, lambda name: encode(seg_and_sr(name)[0])),
        IngestCase(family, "object/Comprehensive 3D SR (TID 1500)", SUCCESS, lambda name: encode(seg_and_sr(name)[1])),
        IngestCase(family, "object/Enhanced SR (feedback)", SUCCESS, enhanced_sr),
        IngestCase(family, "object/Basic Text SR (not in our table)", NO_CONTEXT,
                   partial(not_ours, sop_class=BasicTextSRStorage)),
        IngestCase(family, "object/MR image (not in our table)", NO_CONTEXT, partial(not_ours, sop_class=MRImageStorage)),
    ]


def syntax_cases() -> list[IngestCase]:
    """Every transfer syntax we accept is stored as sent; one we do not is refused at association."""
    cases = [
        IngestCase("transfer syntax", f"transfer syntax/{UID(syntax).name}", SUCCESS, partial(base, transfer_syntax=syntax))
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                       RLELossless, JPEGLSLossless, JPEG2000Lossless)
    ]

    def big_endian(name: str) -> bytes:
        meta, dataset = split_part10(base(name))
        return meta.replace(ExplicitVRLittleEndian.encode() + b"\x00", ExplicitVRBigEndian.encode()) + dataset

    cases.append(IngestCase("transfer syntax", "transfer syntax/Explicit VR Big Endian (retired)", NO_CONTEXT, big_endian))

    def body_in(name: str, meta_syntax: str, body_syntax: str) -> bytes:
        return split_part10(base(name, meta_syntax))[0] + split_part10(base(name, body_syntax))[1]

    # The data set is not in the negotiated syntax. pydicom (and so the node) reads the
    # encoding it finds, as many archives do: tolerated, stored as sent.
    cases.append(IngestCase("transfer syntax", "transfer syntax/implicit VR body in an explicit VR context", SUCCESS,
                            partial(body_in, meta_syntax=ExplicitVRLittleEndian, body_syntax=ImplicitVRLittleEndian)))
    cases.append(IngestCase("transfer syntax", "transfer syntax/explicit VR body in an implicit VR context", SUCCESS,
                            partial(body_in, meta_syntax=ImplicitVRLittleEndian, body_syntax=ExplicitVRLittleEndian)))
    return cases


def garbage_cases() -> list[IngestCase]:
    """Data sets that are not DICOM at all, behind a valid file meta."""
    rng = random.Random(6)
    bodies = [(f"random bytes #{k}", bytes(rng.getrandbits(8) for _ in range(2048))) for k in range(6)]
    bodies += [
        ("all 0xFF", b"\xff" * 2048),
        ("HTTP request", b"GET /wado?requestType=WADO HTTP/1.1\r\nHost: pacs\r\n\r\n"),
        ("HL7 message", b"MSH|^~\\&|RIS|HOSP|PACS|HOSP|202601010800||ORM^O01|1|P|2.3\r"),
        ("zlib stream of a data set", zlib.compress(b"\x08\x00\x18\x00UI\x06\x001.2.3\x00" * 50)),
    ]
    cases = [
        IngestCase("garbage", f"garbage/{label}", CANNOT_UNDERSTAND,
                   lambda name, body=body: split_part10(base(name))[0] + body)
        for label, body in bodies
    ]
    # A whole Part 10 file (preamble, DICM, meta) where the data set should start.
    cases.append(IngestCase("garbage", "garbage/a Part 10 file nested as the data set", CANNOT_UNDERSTAND,
                            lambda name: split_part10(base(name))[0] + base(name + "/inner")))
    return cases


def duplicate_of(name: str, *, other_study: bool = False, other_series: bool = False) -> bytes:
    """The prelude's instance again (same SOP Instance UID), perhaps filed under another study or series."""
    [ds] = ct_datasets(name)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(name, "original")
    if other_study:
        ds.StudyInstanceUID = uid(name, "other study")
    if other_series:
        ds.SeriesInstanceUID = uid(name, "other series")
    return encode(ds)


def duplicate_cases() -> list[IngestCase]:
    """A SOP Instance UID we already hold, sent again (policy keep_first: the first copy stays)."""
    family = "duplicate SOP Instance UID"
    prelude = partial(duplicate_of)
    return [
        IngestCase(family, "duplicate/the same instance again", SUCCESS, prelude, prelude=prelude, stores=False),
        IngestCase(family, "duplicate/same SOP Instance UID in another series", SUCCESS,
                   partial(duplicate_of, other_series=True), prelude=prelude, stores=False),
        IngestCase(family, "duplicate/same SOP Instance UID in another study", SUCCESS,
                   partial(duplicate_of, other_study=True, other_series=True), prelude=prelude, stores=False,
                   ),
    ]


def stream_cases() -> list[IngestCase]:
    """C-STORE messages the sender abandons: A-ABORT after some 256-byte P-DATA fragments."""
    return [
        IngestCase("aborted stream", f"aborted stream/{label}", ABORTED,
                   partial(base, rows=64, columns=64), abort_after=after)
        for label, after in (("after the command", 1), ("after 2 data set fragments", 3),
                             ("after 10 fragments", 11), ("one fragment before the end", -1))
    ]


def ingest_cases() -> list[IngestCase]:
    """The ingest corpus; names are unique and each seeds its case's UIDs."""
    cases = [
        *truncated_cases(), *trailing_cases(), *boundary_cases(), *vr_cases(), *length_cases(),
        *huge_length_cases(), *uid_cases(), *identifier_cases(), *charset_cases(), *object_cases(),
        *syntax_cases(), *garbage_cases(), *duplicate_cases(), *stream_cases(),
    ]
    counts = Counter(c.name for c in cases)
    if any(n > 1 for n in counts.values()):
        raise AssertionError(f"case names must be unique: {[n for n, k in counts.items() if k > 1]}")
    return cases


# --------------------------------------------------------------------------- studies

LESION = (Lesion((10.0, 15.0, 0.0), 20.0),)
SAGITTAL = [0, 1, 0, 0, 0, -1]
SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
            RLELossless, JPEGLSLossless, JPEG2000Lossless)


def _sagittal(datasets: list[Dataset]) -> list[Dataset]:
    for ds in datasets:
        ds.ImageOrientationPatient = SAGITTAL
        ds.ImagePositionPatient = [float(ds.InstanceNumber) * 5.0 - 30.0, -100.0, 100.0]
    return datasets


def _mixed_orientation(name: str) -> list[Dataset]:
    datasets = ct_datasets(name, n_slices=12)
    for ds in datasets[6:]:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.9659258, -0.2588190]  # rotated 15 deg about x
    return datasets


def _edit(make: Callable[[str], list[Dataset]], change: Callable[[list[Dataset]], None]) -> Callable[[str], list[Dataset]]:
    def build(name: str) -> list[Dataset]:
        datasets = make(name)
        change(datasets)
        return datasets

    return build


def _each(change: Callable[[Dataset], None]) -> Callable[[list[Dataset]], None]:
    def apply(datasets: list[Dataset]) -> None:
        for ds in datasets:
            change(ds)

    return apply


def _set(**values: object) -> Callable[[Dataset], None]:
    def apply(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return apply


def _delete(keyword: str) -> Callable[[Dataset], None]:
    return lambda ds: delattr(ds, keyword)


def _one_syntax_per_series(name: str) -> list[Dataset]:
    datasets = []
    for k, syntax in enumerate(SYNTAXES):
        series = ct_datasets(name, n_slices=6, series_key=f"series {k}", series_number=10 + k)
        datasets += [in_syntax(ds, syntax) for ds in series]
    return datasets


def raw_value(ds: Dataset, keyword: str, value: str | bytes) -> None:
    """Put ``value`` in ``keyword`` as the sender wrote it: no conversion, no validation."""
    tag = BaseTag(tag_for_keyword(keyword))
    vr = dictionary_VR(tag)
    raw = value if isinstance(value, bytes) else even(value.encode("latin-1"), b" ")
    ds._dict[tag] = RawDataElement(tag, vr, len(raw), raw, 0, False, True)  # raw on purpose: no conversion


def _raw_in_all(values: dict[str, str | bytes]) -> Callable[[list[Dataset]], None]:
    def apply(datasets: list[Dataset]) -> None:
        for ds in datasets:
            for keyword, value in values.items():
                raw_value(ds, keyword, value)

    return apply


#: (label, header values written raw in every slice, reason the job should give).
HOSTILE_HEADERS: tuple[tuple[str, dict[str, str | bytes], str], ...] = (
    ("SeriesNumber is not a number", {"SeriesNumber": "abc"}, "SeriesNumber"),
    ("ImagePositionPatient is not numbers", {"ImagePositionPatient": "a\\b\\c"}, "ImagePositionPatient"),
    ("ImagePositionPatient has two values", {"ImagePositionPatient": "0\\0"}, "ImagePositionPatient"),
    ("ImageOrientationPatient is not numbers", {"ImageOrientationPatient": "a\\a\\a\\a\\a\\a"}, "ImageOrientationPatient"),
    ("PixelSpacing has one value", {"PixelSpacing": "1"}, "PixelSpacing"),
    ("RescaleSlope is empty", {"RescaleSlope": ""}, "RescaleSlope"),
    ("RescaleIntercept is empty", {"RescaleIntercept": ""}, "RescaleIntercept"),
    ("RescaleSlope overflows a float", {"RescaleSlope": "1e400"}, "RescaleSlope"),
    ("SamplesPerPixel 3 on a 1-sample image", {"SamplesPerPixel": struct.pack("<H", 3)}, "SamplesPerPixel"),
    # Numbers, but not ones that can describe a CT slice.
    ("PixelSpacing is zero", {"PixelSpacing": "0\\0"}, "PixelSpacing must be positive"),
    ("RescaleSlope is zero", {"RescaleSlope": "0"}, "RescaleSlope is 0"),
    ("ImageOrientationPatient is all zeros", {"ImageOrientationPatient": "0\\0\\0\\0\\0\\0"},
     "ImageOrientationPatient is not two orthogonal unit vectors"),
    ("ImageOrientationPatient rows parallel to columns", {"ImageOrientationPatient": "1\\0\\0\\1\\0\\0"},
     "ImageOrientationPatient is not two orthogonal unit vectors"),
    ("PhotometricInterpretation RGB on a 1-sample image", {"PhotometricInterpretation": "RGB"},
     "PhotometricInterpretation is RGB"),
)


def _excess_pixels(name: str) -> list[Dataset]:
    """A 64x64 image whose header says 32x32: four times the pixel data the header describes."""
    datasets = ct_datasets(name, n_slices=8, rows=64, columns=64)
    for ds in datasets:
        ds.Rows, ds.Columns = 32, 32
    return datasets


def study_cases(*, long_series: int = 2000) -> list[StudyCase]:
    """Studies accepted at ingest, with the job outcome each must get."""
    eight = partial(ct_datasets, n_slices=8)
    with_lesion = partial(ct_datasets, n_slices=12, lesions=LESION)
    not_deflated = [s for s in SYNTAXES if s != DeflatedExplicitVRLittleEndian]
    return [
        StudyCase("gantry tilt", "study/gantry tilt 15 deg", "succeeded",
                  partial(ct_datasets, n_slices=16, gantry_tilt_deg=15.0, lesions=LESION),
                  why="the sheared grid is kept; the affine carries the tilt"),
        StudyCase("gantry tilt", "study/gantry tilt -22 deg", "succeeded",
                  partial(ct_datasets, n_slices=16, gantry_tilt_deg=-22.0)),
        StudyCase("mixed orientations", "study/mixed orientations in one series", "dead", _mixed_orientation,
                  "share ImageOrientationPatient"),
        StudyCase("mixed orientations", "study/axial series plus a sagittal series", "succeeded",
                  lambda name: ct_datasets(name, n_slices=12)
                  + _sagittal(ct_datasets(name, n_slices=12, series_key="sagittal", series_number=3)),
                  why="the sagittal series is skipped, the axial one analysed"),
        StudyCase("mixed orientations", "study/sagittal series only", "skipped",
                  lambda name: _sagittal(ct_datasets(name, n_slices=12)), "not axial"),
        StudyCase("1-slice series", "study/1-slice series", "succeeded", partial(ct_datasets, rows=64, columns=64)),
        StudyCase("1-slice series", "study/1-slice series without SliceThickness", "skipped",
                  _edit(partial(ct_datasets, rows=64, columns=64), _each(_delete("SliceThickness"))),
                  "slice thickness unknown"),
        StudyCase(f"{long_series}-slice series", f"study/{long_series}-slice series (32x32, 1 mm)", "succeeded",
                  partial(ct_datasets, n_slices=long_series, slice_thickness_mm=1.0)),
        StudyCase("mixed transfer syntaxes", "study/five transfer syntaxes within one series", "succeeded",
                  lambda name: [in_syntax(ds, not_deflated[k % len(not_deflated)])
                                for k, ds in enumerate(with_lesion(name))]),
        StudyCase("mixed transfer syntaxes", "study/one transfer syntax per series (six series)", "succeeded",
                  _one_syntax_per_series),
        StudyCase("mixed transfer syntaxes", "study/Deflated Explicit VR Little Endian series", "succeeded",
                  lambda name: [in_syntax(ds, DeflatedExplicitVRLittleEndian) for ds in eight(name)],
                  ),
        StudyCase("pixel data vs Rows/Columns", "study/pixel data half of Rows x Columns", "dead",
                  _edit(eight, _each(lambda ds: setattr(ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2]))),
                  "cannot be assembled"),
        StudyCase("pixel data vs Rows/Columns", "study/Rows and Columns doubled in the header", "dead",
                  _edit(eight, _each(_set(Rows=64, Columns=64))), "cannot be assembled"),
        StudyCase("pixel data vs Rows/Columns", "study/Rows and Columns differ between slices", "dead",
                  _edit(eight, lambda datasets: _set(Rows=16, Columns=64)(datasets[3])), "same Rows and Columns"),
        StudyCase("pixel data vs Rows/Columns", "study/pixel data twice Rows x Columns", "dead",
                  _edit(eight, _each(lambda ds: setattr(ds, "PixelData", ds.PixelData * 2))), "cannot be assembled",
                  ),
        StudyCase("pixel data vs Rows/Columns", "study/header says 32x32, pixels are 64x64", "dead", _excess_pixels,
                  "cannot be assembled"),
        StudyCase("pixel data vs Rows/Columns", "study/BitsAllocated 32 on 16-bit pixels", "dead",
                  _edit(eight, _each(_set(BitsAllocated=32))), "cannot be assembled"),
        StudyCase("missing pixel data", "study/no slice has pixel data", "dead",
                  _edit(eight, _each(_delete("PixelData"))), "cannot be assembled"),
        StudyCase("missing pixel data", "study/one slice lacks pixel data", "dead",
                  _edit(eight, lambda datasets: _delete("PixelData")(datasets[4])), "cannot be assembled",
                  ),
        StudyCase("SR or SEG", "study/SEG only", "skipped", lambda name: [seg_and_sr(name)[0]], "no series qualifies"),
        StudyCase("SR or SEG", "study/SR only", "skipped", lambda name: [seg_and_sr(name)[1]], "no series qualifies"),
        StudyCase("SR or SEG", "study/SEG and SR only", "skipped", lambda name: list(seg_and_sr(name)), "modality SEG"),
        StudyCase("SR or SEG", "study/CT plus a SEG and an SR", "succeeded",
                  lambda name: ct_datasets(name, n_slices=8) + list(seg_and_sr(name)),
                  why="the CT series is chosen; the SEG and SR series are skipped"),
        *(
            StudyCase("hostile header values", f"study/{label}", "dead", _edit(eight, _raw_in_all(values)), reason,
                      )
            for label, values, reason in HOSTILE_HEADERS
        ),
        StudyCase("hostile header values", "study/an RGB series beside the CT series", "succeeded",
                  lambda name: ct_datasets(name, n_slices=8) + _edit(
                      partial(ct_datasets, n_slices=8, series_key="rgb", series_number=3),
                      _raw_in_all({"PhotometricInterpretation": "RGB"}))(name),
                  why="a series whose header is unusable is skipped; the good one is analysed"),
        *(
            StudyCase("character sets", f"study/character set {label}", "succeeded",
                      partial(charset_datasets, charset=charset, patient_name=patient_name, description=description,
                              n_slices=12, lesions=LESION),
                      why="the outputs carry the patient's name, decoded from its character set, in ours "
                          "(default repertoire, or UTF-8 when not ASCII)")
            for label, charset, patient_name, description in (CHARSETS[0], CHARSETS[3], CHARSETS[7], CHARSETS[8],
                                                              CHARSETS[9])
        ),
    ]


def outcome_table(rows: Iterable[tuple[str, str, str]]) -> str:
    """(family, expected, observed) rows, counted: one line per distinct row."""
    counts = Counter(rows)
    lines = [f"{'family':<28} | {'count':>5} | {'expected':<34} | observed", "-" * 110]
    for (family, expected, observed), count in sorted(counts.items()):
        lines.append(f"{family:<28} | {count:>5} | {expected:<34} | {observed}")
    lines.append(f"{'total':<28} | {sum(counts.values()):>5} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- sending


def no_delay(assoc: pynetdicom_association.Association) -> None:
    """TCP_NODELAY on the SCU's socket: without it Nagle's algorithm and delayed ACKs cost
    about 50 ms per C-STORE on loopback (2000 instances took 110 s instead of 20 s)."""
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[union-attr]


def _split_dataset(path: Path) -> tuple[Dataset, int]:
    """pynetdicom finds where the data set starts by parsing on past the file meta, which a
    data set of under 8 bytes (or one starting with group 0002) fools: use the group length."""
    data = path.read_bytes()
    return read_meta(data), len(split_part10(data)[0])


def send_raw(port: int, data: bytes, folder: Path, *, abort_after: int | None = None) -> Dataset | int:
    """Send one Part 10 file's data set, byte for byte, over a fresh association.

    Returns the C-STORE status dataset, :data:`NO_CONTEXT` when the listener refused the
    presentation context, or :data:`ABORTED` after sending only ``abort_after`` fragments.
    """
    meta = read_meta(data)
    sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, [syntax])
    ae.add_requested_context(Verification)  # keeps the association up when the other context is refused
    assoc = keep_responses_for_senders(ae.associate("127.0.0.1", port, ae_title=NODE_AE))
    assert assoc.is_established, "association was not established"
    no_delay(assoc)
    try:
        contexts = [cx for cx in assoc.accepted_contexts if cx.abstract_syntax == sop_class]
        if not contexts:
            return NO_CONTEXT
        if abort_after is not None:
            _send_part_then_abort(assoc, meta, split_part10(data)[1], int(contexts[0].context_id), abort_after)
            return ABORTED
        path = folder / "sent.dcm"
        path.write_bytes(data)
        # The bytes as they are (no decode, no re-encode); the process-wide switch is put back.
        with mock.patch.object(_config, "STORE_SEND_CHUNKED_DATASET", True), mock.patch.object(
            pynetdicom_association, "split_dataset", _split_dataset
        ):
            return assoc.send_c_store(path)
    finally:
        if assoc.is_established:
            assoc.release()


def _send_part_then_abort(assoc: pynetdicom_association.Association, meta: Dataset, dataset: bytes,
                          context_id: int, abort_after: int) -> None:
    """The C-STORE message in 256-byte P-DATA fragments: send some, then A-ABORT."""
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = meta.MediaStorageSOPClassUID
    request.AffectedSOPInstanceUID = meta.MediaStorageSOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(context_id, 256))
    count = abort_after if abort_after >= 0 else len(fragments) + abort_after
    assert 0 < count < len(fragments), "the abort must come before the last fragment"
    for fragment in fragments[:count]:
        assoc.dul.send_pdu(fragment)
    time.sleep(0.3)  # let the listener take the fragments in before the abort
    assoc.abort()


def store_all(port: int, paths: Sequence[Path]) -> list[Dataset]:
    """Send files byte for byte over one association; the status of each."""
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                       for m in (read_meta(p.read_bytes()[:4096]) for p in paths)})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax])
    assoc = keep_responses_for_senders(ae.associate("127.0.0.1", port, ae_title=NODE_AE))
    assert assoc.is_established, "association was not established"
    no_delay(assoc)
    try:
        with mock.patch.object(_config, "STORE_SEND_CHUNKED_DATASET", True), mock.patch.object(
            pynetdicom_association, "split_dataset", _split_dataset
        ):
            return [assoc.send_c_store(path) for path in paths]
    finally:
        if assoc.is_established:
            assoc.release()
