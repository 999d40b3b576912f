"""Issue 6, fuzzing: hypothesis over the code that parses what senders send.

* :func:`read_received` on mutations of valid files (bit flips, cuts, insertions,
  deletions, rewritten lengths and VRs) returns a :class:`ReceivedInstance` or raises
  an :class:`InvalidInstanceError` leaf, never anything else; a cut file is accepted
  only when the cut falls between two elements;
* :func:`path_component` / :func:`instance_path` keep any text inside the storage root;
* a few mutated files go through the real listener, whose status must be the one
  ``read_received`` gives, and which must still answer C-ECHO afterwards.

Each property is bounded (``max_examples``) so the file runs in well under a minute,
and uses no example database (nothing is written to the checkout). The regression
tests at the end pin the inputs that crashed or got a wrong status before the fixes
in ``dicom_node/ingest/instance.py``.
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from sqlalchemy import func, select

from dicom_node.db.models import Instance
from dicom_node.dicom.storage import InstanceStore, instance_path, path_component
from dicom_node.errors import (
    InvalidInstanceError,
    MissingIdentifierError,
    UnreadableDatasetError,
)
from dicom_node.ingest.instance import ReceivedInstance, read_received
from dicom_node.ingest.scp import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    SUCCESS,
    status_for,
)
from tests.conftest import RunningNode, start_node
from tests.support.hostile import (
    PIXEL_DATA,
    STUDY_UID,
    base,
    encode,
    layout,
    read_meta,
    seg_and_sr,
    send_raw,
    split_part10,
)
from tests.support.node import NodeConfig, echo_ok, status_code

# Hostile bytes make pydicom warn about nearly everything; the warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# Hypothesis keeps caches in ./.hypothesis even without an example database: not in the checkout.
set_hypothesis_home_dir(str(Path(tempfile.gettempdir()) / "dicom-node-hypothesis"))

#: About 5 s per property on two shared cores; the whole file stays under a minute.
BOUNDED = settings(max_examples=1500, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
PATHS = settings(BOUNDED, max_examples=600)
UID_CHARACTERS = r"[\x21-\x7e]{1,64}"


@cache
def bases() -> dict[str, bytes]:
    """Valid files of every shape the parser meets: both VR encodings, encapsulated, deflated, SR."""
    return {
        "explicit": base("fuzz/explicit"),
        "implicit": base("fuzz/implicit", ImplicitVRLittleEndian),
        "rle": base("fuzz/rle", RLELossless),
        "deflated": base("fuzz/deflated", DeflatedExplicitVRLittleEndian),
        "sr": encode(seg_and_sr("fuzz/sr")[1]),
    }


def _read(path: Path, data: bytes) -> ReceivedInstance:
    """read_received as the listener calls it, the command's UIDs taken from the file meta."""
    meta = read_meta(data)
    return read_received(
        path,
        command_sop_class_uid=str(meta.MediaStorageSOPClassUID),
        command_sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
        calling_ae_title="FUZZ",
    )


INTERESTING_LENGTHS = (0, 1, 2, 3, 7, 8, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF)
VRS = (b"AE", b"CS", b"DS", b"FD", b"IS", b"LO", b"OB", b"OW", b"PN", b"SQ", b"UI", b"UN", b"US", b"UT", b"QQ", b"\x00\x00", b"ui")


@st.composite
def mutated_dataset(draw: st.DrawFn, *, shapes: tuple[str, ...] = ("explicit", "implicit", "rle", "deflated", "sr")) -> tuple[str, bytes, bytes]:
    """(shape, file meta, mutated data set): one to four mutations of a valid data set."""
    shape = draw(st.sampled_from(shapes))
    meta, original = split_part10(bases()[shape])
    dataset = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        if not dataset:
            break
        at = draw(st.integers(0, len(dataset) - 1))
        operation = draw(st.sampled_from(["flip", "cut", "insert", "delete", "length", "vr"]))
        if operation == "flip":
            dataset[at] ^= draw(st.integers(1, 255))
        elif operation == "cut":
            del dataset[at:]
        elif operation == "insert":
            dataset[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif operation == "delete":
            del dataset[at : at + draw(st.integers(1, 64))]
        else:
            # Aim at a real header of the original layout (when the encoding has one to aim at).
            implicit = shape == "implicit"
            elements = [] if shape in ("deflated", "rle", "sr") else layout(original, implicit=implicit)
            if not elements:
                dataset[at:at] = draw(st.binary(min_size=1, max_size=4))
                continue
            element = draw(st.sampled_from(elements))
            if element.header_offset + 12 > len(dataset):
                continue
            if operation == "vr" and not implicit:
                dataset[element.header_offset + 4 : element.header_offset + 6] = draw(
                    st.sampled_from(VRS) | st.binary(min_size=2, max_size=2)
                )
            else:
                length = draw(st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 0xFFFFFFFF))
                if implicit or element.header_length == 12:
                    dataset[element.value_offset - 4 : element.value_offset] = struct.pack("<I", length)
                else:
                    dataset[element.value_offset - 2 : element.value_offset] = struct.pack("<H", length & 0xFFFF)
    return shape, meta, bytes(dataset)


def _check_accepted(item: ReceivedInstance) -> None:
    for uid in (item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid, item.sop_class_uid):
        assert re.fullmatch(UID_CHARACTERS, uid), repr(uid)
    relative = instance_path(item.study_instance_uid, item.series_instance_uid, item.sop_instance_uid)
    assert len(relative.parts) == 3 and ".." not in relative.parts


@BOUNDED
@given(case=mutated_dataset())
def test_read_received_on_mutated_files_refuses_or_accepts_nothing_else(case: tuple[str, bytes, bytes], tmp_path_factory: pytest.TempPathFactory) -> None:
    _, meta, dataset = case
    path = _scratch(tmp_path_factory) / "received.dcm"
    path.write_bytes(meta + dataset)
    try:
        item = _read(path, meta + dataset)
    except InvalidInstanceError:
        return
    _check_accepted(item)


@BOUNDED
@given(case=mutated_dataset(), whole=st.binary(min_size=0, max_size=64), at=st.integers(0, 400))
def test_read_received_survives_a_broken_file_meta(
    case: tuple[str, bytes, bytes], whole: bytes, at: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Bytes overwritten anywhere, preamble and file meta included (pynetdicom writes those
    itself, but read_received is a function of any file)."""
    _, meta, dataset = case
    data = bytearray(meta + dataset)
    data[at : at + len(whole)] = whole
    path = _scratch(tmp_path_factory) / "received.dcm"
    path.write_bytes(bytes(data))
    try:
        item = read_received(path, command_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                             command_sop_instance_uid="1.2.3", calling_ae_title="FUZZ")
    except InvalidInstanceError:
        return
    _check_accepted(item)


@settings(BOUNDED, max_examples=500)
@given(shape=st.sampled_from(["explicit", "implicit"]), fraction=st.floats(0, 1, exclude_max=True))
def test_a_cut_file_is_accepted_only_when_cut_between_elements(shape: str, fraction: float, tmp_path_factory: pytest.TempPathFactory) -> None:
    meta, dataset = split_part10(bases()[shape])
    cut = int(len(dataset) * fraction)
    path = _scratch(tmp_path_factory) / "cut.dcm"
    path.write_bytes(meta + dataset[:cut])
    boundaries = {e.header_offset for e in layout(dataset, implicit=shape == "implicit")}
    try:
        _read(path, meta + dataset)
    except UnreadableDatasetError:
        assert cut not in boundaries, f"a complete shorter data set (cut at {cut}) was called unreadable"
        return
    except MissingIdentifierError:
        assert cut in boundaries, f"cut at {cut} inside an element, refused for a missing identifier instead"
        return
    assert cut in boundaries, f"cut at {cut} inside an element, and accepted"


_scratch_dirs: dict[int, Path] = {}


def _scratch(factory: pytest.TempPathFactory) -> Path:
    """One scratch folder per test run (hypothesis calls the test many times in one fixture scope)."""
    key = id(factory)
    if key not in _scratch_dirs:
        _scratch_dirs[key] = factory.mktemp("fuzz")
    return _scratch_dirs[key]


# --------------------------------------------------------------------------- paths

uid_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=120) | st.from_regex(
    r"(\.\./|/|\.|[0-9]{1,3}\.?){0,30}", fullmatch=True
)


@PATHS
@example(study="..", series="../..", sop="/etc/passwd")
@example(study="", series=".", sop="a/../../b")
@example(study="1.2.3", series="x" + "0" * 40, sop="\x00")
@given(study=uid_text, series=uid_text, sop=uid_text)
def test_instance_path_never_leaves_the_storage_root(study: str, series: str, sop: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    relative = instance_path(study, series, sop)
    assert isinstance(relative, PurePosixPath) and len(relative.parts) == 3
    for part in relative.parts:
        assert part not in ("", ".", "..") and "/" not in part and "\x00" not in part
        assert len(part.encode("utf-8", "surrogatepass")) <= 68
    store = InstanceStore(_scratch(tmp_path_factory), min_free_bytes=0)
    absolute = store.absolute(relative)
    assert absolute.is_relative_to(store.root) and absolute != store.root


@PATHS
@given(a=uid_text, b=uid_text)
def test_path_components_of_different_uids_differ(a: str, b: str) -> None:
    if a != b:
        assert path_component(a) != path_component(b)
    component = path_component(a)
    assert component == a or component.startswith("x")


# --------------------------------------------------------------------------- the listener


ACCEPTED_SOP_INSTANCE_UIDS: set[str | None] = set()


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    running, stop = start_node(NodeConfig(workdir=tmp_path_factory.mktemp("fuzz-node") / "node"))
    try:
        yield running
    finally:
        stop()  # type: ignore[operator]


@settings(BOUNDED, max_examples=100)
@given(case=mutated_dataset(shapes=("explicit", "implicit", "rle")))
def test_listener_answers_mutated_files_as_read_received_does(
    fuzz_node: RunningNode, case: tuple[str, bytes, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    _, meta, dataset = case
    folder = _scratch(tmp_path_factory)
    path = folder / "direct.dcm"
    path.write_bytes(meta + dataset)
    sop_instance_uid = None
    try:
        sop_instance_uid = _read(path, meta + dataset).sop_instance_uid
        verdict = SUCCESS
    except InvalidInstanceError as exc:
        verdict = status_for(exc)
    files_before = set(fuzz_node.stored_files())
    with fuzz_node.sessions() as session:
        rows_before = session.scalar(select(func.count(Instance.id)))
    status = status_code(send_raw(fuzz_node.port, meta + dataset, folder))  # type: ignore[arg-type]
    if verdict == SUCCESS:
        # The catalog may still refuse what read_received accepts (0xA900: a Series Instance
        # UID already recorded under another study, as a mutated Study Instance UID makes).
        assert status in (SUCCESS, DATASET_DOES_NOT_MATCH_SOP_CLASS)
    else:
        assert status == verdict
    with fuzz_node.sessions() as session:
        rows_after = session.scalar(select(func.count(Instance.id)))
    new_files = set(fuzz_node.stored_files()) - files_before
    if status != SUCCESS:
        assert new_files == set() and rows_after == rows_before
    elif sop_instance_uid in ACCEPTED_SOP_INSTANCE_UIDS:
        # keep_first: no second row, and no second file, also for a copy filed under a mutated
        # study or series UID (its file is removed when the catalog finds the UID recorded).
        assert rows_after == rows_before and new_files == set()
    else:
        assert rows_after == rows_before + 1 and len(new_files) == 1
    if status == SUCCESS:
        ACCEPTED_SOP_INSTANCE_UIDS.add(sop_instance_uid)


def test_listener_still_answers_after_the_fuzzing(fuzz_node: RunningNode) -> None:
    assert echo_ok(fuzz_node.port, calling_ae="TESTSCU")
    assert not any(fuzz_node.store.incoming.iterdir())


# --------------------------------------------------------------------------- regressions
# Inputs that crashed read_received, or got a wrong status, before the fixes in instance.py.


def _verdict(tmp_path: Path, data: bytes) -> int:
    path = tmp_path / "regression.dcm"
    path.write_bytes(data)
    try:
        _read(path, data)
    except InvalidInstanceError as exc:
        return status_for(exc)
    return SUCCESS


def _element(data: bytes, tag: int, *, implicit: bool = False):  # type: ignore[no-untyped-def]
    return next(e for e in layout(split_part10(data)[1], implicit=implicit) if e.tag == tag)


@pytest.mark.parametrize("extra", [1, 3, 7])
def test_regression_partial_header_after_the_pixel_data_is_truncation(tmp_path: Path, extra: int) -> None:
    """Was 0x0000: pydicom reads fewer than 8 trailing bytes as a clean end of file."""
    data = bases()["explicit"] + b"\xe0\x7f\x10\x00OW\x00"[:extra]
    assert _verdict(tmp_path, data) == CANNOT_UNDERSTAND


def test_regression_cut_inside_a_header_after_the_identifiers(tmp_path: Path) -> None:
    """Was 0x0000: the file ends 3 bytes into the Pixel Data header; stored as complete."""
    data = bases()["explicit"]
    meta, dataset = split_part10(data)
    cut = _element(data, PIXEL_DATA).header_offset + 3
    assert _verdict(tmp_path, meta + dataset[:cut]) == CANNOT_UNDERSTAND


def test_regression_cut_inside_a_header_before_the_identifiers(tmp_path: Path) -> None:
    """Was 0xA900 (StudyInstanceUID is missing): the stream is truncated, not unidentified."""
    data = bases()["explicit"]
    meta, dataset = split_part10(data)
    cut = _element(data, STUDY_UID).header_offset + 5
    assert _verdict(tmp_path, meta + dataset[:cut]) == CANNOT_UNDERSTAND


def test_regression_cut_in_the_character_set_value(tmp_path: Path) -> None:
    """Was 0xA900: Specific Character Set is decoded during parsing, so the length check missed it."""
    meta, dataset = split_part10(bases()["explicit"])
    assert _verdict(tmp_path, meta + dataset[:12]) == CANNOT_UNDERSTAND


def test_regression_undefined_length_without_delimiter(tmp_path: Path) -> None:
    """Was 0xA900: pydicom swallows the EOFError and returns an empty data set."""
    data = bases()["explicit"]
    pixel = _element(data, PIXEL_DATA)
    meta, dataset = split_part10(data)
    broken = dataset[: pixel.value_offset - 4] + struct.pack("<I", 0xFFFFFFFF) + dataset[pixel.value_offset :]
    assert _verdict(tmp_path, meta + broken) == CANNOT_UNDERSTAND


def test_regression_encapsulated_pixel_data_cut_in_its_delimiter(tmp_path: Path) -> None:
    """Was 0x0000: the last 4 bytes of the sequence delimiter missing went unnoticed."""
    assert _verdict(tmp_path, bases()["rle"][:-4]) == CANNOT_UNDERSTAND


@pytest.mark.parametrize("tag_name", ["StudyInstanceUID", "SOPInstanceUID"])
def test_regression_unknown_vr_on_an_identifier_is_a900_not_a_crash(tmp_path: Path, tag_name: str) -> None:
    """Was NotImplementedError from pydicom's value conversion: pynetdicom answered 0xC211
    and left the spooled data set behind."""
    data = bases()["explicit"]
    tag = {"StudyInstanceUID": STUDY_UID, "SOPInstanceUID": 0x00080018}[tag_name]
    header = _element(data, tag).header_offset
    meta, dataset = split_part10(data)
    broken = dataset[: header + 4] + b"QQ" + dataset[header + 6 :]
    assert _verdict(tmp_path, meta + broken) == DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_regression_unknown_vr_on_modality_is_stored_without_a_modality(tmp_path: Path) -> None:
    """Was NotImplementedError (0xC211): Modality is not an identifier; the instance is stored as sent."""
    data = bases()["explicit"]
    header = _element(data, 0x00080060).header_offset
    meta, dataset = split_part10(data)
    path = tmp_path / "modality.dcm"
    path.write_bytes(meta + dataset[: header + 4] + b"QQ" + dataset[header + 6 :])
    assert _read(path, path.read_bytes()).modality is None


@pytest.mark.parametrize("shape", ["explicit", "implicit", "rle", "deflated", "sr"])
def test_valid_files_of_every_shape_are_still_accepted(tmp_path: Path, shape: str) -> None:
    assert _verdict(tmp_path, bases()[shape]) == SUCCESS
