"""Orthanc's DICOMweb plugin serves our SEG and SR over QIDO-RS and WADO-RS, and highdicom reads them back.

Web viewers (OHIF first) do not speak DIMSE: they find a study's series with
QIDO-RS and fetch instances with WADO-RS. Here the CT and our result objects
go into Orthanc 1.10 with Debian's orthanc-dicomweb plugin (REST
``POST /instances``); then, through the DICOMweb routes only:

* QIDO-RS lists the study's four series with their modalities, finds the SEG
  and SR series by modality, and the instances in them with their SOP Classes;
* WADO-RS returns each instance as ``multipart/related; type="application/dicom"``,
  parsed here with the standard library's email parser (RFC 2387), byte for
  byte the file we uploaded;
* WADO-RS metadata describes the SEG's frames;
* highdicom reads the retrieved SEG (pixels per segment and source slice) and
  SR (every measurement and its segment reference) with the values we wrote.

A missing Orthanc or plugin fails the test with the package to install.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node.outputs import codes
from dicom_node.outputs.uids import KEY_IMAGES, SEG, SR
from tests.support.interop_objects import WrittenResults, write_results
from tests.support.orthanc import Orthanc

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DICOMWEB_ROOT = "/dicom-web/"
DICOM_JSON = "application/dicom+json"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
HTTP_TIMEOUT_S = 60.0

# DICOM JSON (PS3.18 F.2) keys of the attributes the tests read.
MODALITY = "00080060"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
SERIES_INSTANCE_UID = "0020000E"
STUDY_INSTANCE_UID = "0020000D"
NUMBER_OF_SERIES_RELATED_INSTANCES = "00201209"
NUMBER_OF_FRAMES = "00280008"
SEGMENT_SEQUENCE = "00620002"
SEGMENT_NUMBER = "00620004"
PER_FRAME_FUNCTIONAL_GROUPS = "52009230"


def require_dicomweb_plugin() -> Path:
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail(
            f"{DICOMWEB_PLUGIN} not found: install Debian's orthanc-dicomweb (apt-get install -y orthanc-dicomweb)"
        )
    return DICOMWEB_PLUGIN


class DicomWebClient:
    """The few QIDO-RS and WADO-RS calls a web viewer makes, over urllib."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/") + DICOMWEB_ROOT.rstrip("/")

    def _get(self, path: str, accept: str, query: dict[str, str] | None = None) -> tuple[str, bytes]:
        url = self.base_url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        request = urllib.request.Request(url, headers={"Accept": accept})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return str(response.headers.get("Content-Type", "")), bytes(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"GET {path}: HTTP {exc.code}: {exc.read()[:500]!r}") from exc

    def search(self, path: str, **query: str) -> list[dict[str, Any]]:
        """QIDO-RS: the DICOM JSON matches (an empty list when nothing matches)."""
        content_type, body = self._get(path, DICOM_JSON, query)
        if not body:
            return []
        assert content_type.startswith(DICOM_JSON), f"QIDO-RS {path} answered {content_type}"
        return list(json.loads(body))

    def metadata(self, path: str) -> list[dict[str, Any]]:
        """WADO-RS metadata: DICOM JSON of every instance under ``path``, bulk data left out."""
        content_type, body = self._get(path + "/metadata", DICOM_JSON)
        assert content_type.startswith(DICOM_JSON), f"WADO-RS {path}/metadata answered {content_type}"
        return list(json.loads(body))

    def retrieve(self, path: str) -> list[bytes]:
        """WADO-RS: the Part 10 files under ``path``, from a multipart/related answer."""
        content_type, body = self._get(path, MULTIPART_DICOM)
        parts = parse_multipart_related(content_type, body)
        return [payload for part_type, payload in parts if part_type == "application/dicom"]


def parse_multipart_related(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(content type, payload) of each part of a multipart/related body (RFC 2387, PS3.18 8.6.1.2).

    The email parser needs the top-level header, which HTTP carried separately.
    Each part's Content-Length, when given, must match what was parsed, so a
    payload mangled at a line break cannot pass unnoticed.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise ValueError(f"expected multipart/related, got {content_type!r}")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("ascii") + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        declared = part.get("Content-Length")
        if declared is not None and int(declared) != len(payload):
            raise ValueError(f"part declares {declared} bytes but {len(payload)} were parsed")
        parts.append((part.get_content_type(), payload))
    return parts


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("dicomweb"))


@pytest.fixture(scope="module")
def dicomweb(results: WrittenResults, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DicomWebClient]:
    """Orthanc with the DICOMweb plugin, holding the CT, SEG, SR and key images (uploaded over REST)."""
    plugin = require_dicomweb_plugin()
    settings = {"Plugins": [str(plugin)], "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT}}
    with Orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), settings=settings) as orthanc:
        assert "dicom-web" in orthanc.get_json("/plugins"), f"plugin not loaded:\n{orthanc.log_tail()}"
        uploaded = orthanc.upload_files([*results.ct, results.seg, results.sr, *results.key_images])
        assert all(answer["Status"] == "Success" for answer in uploaded)
        yield DicomWebClient(orthanc.base_url)


def _study(results: WrittenResults) -> str:
    return f"/studies/{results.case.spec.study_instance_uid}"


def _retrieve_one(dicomweb: DicomWebClient, results: WrittenResults, kind: str) -> bytes:
    """QIDO-RS for the instance of the ``kind`` series, then WADO-RS for it."""
    series_path = f"{_study(results)}/series/{results.case.uids.series(kind)}"
    (instance,) = dicomweb.search(f"{series_path}/instances")
    sop_instance_uid = _value(instance, SOP_INSTANCE_UID)
    assert sop_instance_uid == results.case.uids.instance(kind)
    (payload,) = dicomweb.retrieve(f"{series_path}/instances/{sop_instance_uid}")
    return payload


def test_qido_lists_our_series_next_to_the_ct(dicomweb: DicomWebClient, results: WrittenResults) -> None:
    (study,) = dicomweb.search("/studies", StudyInstanceUID=results.case.spec.study_instance_uid)
    assert _value(study, STUDY_INSTANCE_UID) == results.case.spec.study_instance_uid
    series = {_value(s, SERIES_INSTANCE_UID): s for s in dicomweb.search(f"{_study(results)}/series")}
    uids = results.case.uids
    expected = {
        results.case.spec.series_instance_uid: ("CT", len(results.ct)),
        uids.series(SEG): ("SEG", 1),
        uids.series(SR): ("SR", 1),
        uids.series(KEY_IMAGES): ("OT", len(results.key_images)),
    }
    found = {uid: (_value(s, MODALITY), _value(s, NUMBER_OF_SERIES_RELATED_INSTANCES)) for uid, s in series.items()}
    assert found == expected


@pytest.mark.parametrize(
    ("modality", "kind", "sop_class_uid"),
    [("SEG", SEG, SegmentationStorage), ("SR", SR, Comprehensive3DSRStorage)],
)
def test_qido_finds_the_result_series_by_modality(
    dicomweb: DicomWebClient, results: WrittenResults, modality: str, kind: str, sop_class_uid: str
) -> None:
    (series,) = dicomweb.search(f"{_study(results)}/series", Modality=modality)
    assert _value(series, SERIES_INSTANCE_UID) == results.case.uids.series(kind)
    (instance,) = dicomweb.search(f"{_study(results)}/series/{results.case.uids.series(kind)}/instances")
    assert _value(instance, SOP_CLASS_UID) == sop_class_uid


def test_wado_returns_the_files_we_uploaded(dicomweb: DicomWebClient, results: WrittenResults) -> None:
    assert _retrieve_one(dicomweb, results, SEG) == results.seg.read_bytes()
    assert _retrieve_one(dicomweb, results, SR) == results.sr.read_bytes()
    key_images = dicomweb.retrieve(f"{_study(results)}/series/{results.case.uids.series(KEY_IMAGES)}")
    assert sorted(key_images) == sorted(path.read_bytes() for path in results.key_images)
    assert {pydicom.dcmread(BytesIO(data)).SOPClassUID for data in key_images} == {SecondaryCaptureImageStorage}


def test_wado_metadata_describes_the_seg_frames(dicomweb: DicomWebClient, results: WrittenResults) -> None:
    (metadata,) = dicomweb.metadata(f"{_study(results)}/series/{results.case.uids.series(SEG)}")
    n_segments = len(results.case.lesions)
    assert _value(metadata, NUMBER_OF_FRAMES) == len(results.ct) * n_segments
    assert len(metadata[PER_FRAME_FUNCTIONAL_GROUPS]["Value"]) == len(results.ct) * n_segments
    segments = metadata[SEGMENT_SEQUENCE]["Value"]
    assert [_value(segment, SEGMENT_NUMBER) for segment in segments] == list(range(1, n_segments + 1))


def test_highdicom_reads_the_retrieved_seg(dicomweb: DicomWebClient, results: WrittenResults) -> None:
    dataset = pydicom.dcmread(BytesIO(_retrieve_one(dicomweb, results, SEG)))
    segmentation = hd.seg.Segmentation.from_dataset(dataset)
    sources = [ds.SOPInstanceUID for ds in results.case.source_images]
    numbers = list(results.segment_voxel_counts)
    pixels = segmentation.get_pixels_by_source_instance(source_sop_instance_uids=sources, segment_numbers=numbers)
    assert pixels.shape == (len(sources), *results.case.label_map.shape[1:], len(numbers))
    for index, number in enumerate(numbers):
        mask = pixels[..., index].astype(bool)
        assert int(mask.sum()) == results.segment_voxel_counts[number]
        assert np.array_equal(mask, results.case.label_map == number)
        (description,) = [s for s in segmentation.SegmentSequence if s.SegmentNumber == number]
        assert description.TrackingUID == results.case.uids.tracking(number)


def test_highdicom_reads_the_retrieved_sr(dicomweb: DicomWebClient, results: WrittenResults) -> None:
    dataset = pydicom.dcmread(BytesIO(_retrieve_one(dicomweb, results, SR)))
    report = hd.sr.Comprehensive3DSR.from_dataset(dataset)
    content = report.content
    assert isinstance(content, hd.sr.MeasurementReport)
    (evaluations,) = find_content_items(content[0], name=codes.QUALITATIVE_EVALUATIONS)
    (call,) = find_content_items(evaluations, name=codes.INTRACRANIAL_HEMORRHAGE)
    assert call.value == codes.PRESENT
    (probability,) = find_content_items(evaluations, name=codes.PROBABILITY)
    assert float(probability.value) == pytest.approx(results.case.assessment.probability, rel=1e-6)
    outlines = content.get_image_measurement_groups()
    assert [g.tracking_uid for g in outlines] == [results.case.uids.tracking(n.segment_number) for n in results.case.lesions]
    groups = content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(results.case.lesions)
    for lesion, group in zip(results.case.lesions, groups, strict=True):
        assert group.tracking_uid == results.case.uids.tracking(lesion.segment_number)
        reference = group.referenced_segment
        assert reference is not None
        assert reference.referenced_sop_instance_uid == results.case.uids.instance(SEG)
        assert reference.referenced_segment_numbers == [lesion.segment_number]
        expected = [
            (codes.VOLUME, lesion.volume_ml, "mL"),
            (codes.LONG_AXIS, lesion.longest_axial_diameter_mm, "mm"),
            (codes.ATTENUATION_COEFFICIENT, lesion.mean_hu, "[hnsf'U]"),
            (codes.CERTAINTY_OF_FINDING, lesion.confidence, "1"),
        ]
        for name, value, unit in expected:
            (measurement,) = group.get_measurements(name=name)
            assert measurement.value == pytest.approx(value, rel=1e-12)
            assert measurement.unit.value == unit


def test_multipart_parsing_keeps_binary_payloads_intact() -> None:
    """Line breaks and boundary-like bytes inside a payload survive; only the delimiter's CRLF goes."""
    payloads = [b"\r\n--not-the-boundary\r\n\x00\xff\n\r", b"DICM" + bytes(range(256)) * 3 + b"\r\n"]
    boundary = "b0undary-1234"
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\nContent-Length: {len(p)}\r\n\r\n".encode() + p + b"\r\n"
        for p in payloads
    ) + f"--{boundary}--\r\n".encode()
    parts = parse_multipart_related(f'multipart/related; type="application/dicom"; boundary={boundary}', body)
    assert parts == [("application/dicom", p) for p in payloads]
