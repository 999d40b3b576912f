"""OHIF's parsers load our SEG into the label map we built it from, and read our SR's numbers.

OHIF, the most used open web viewer, parses SEG and SR with dcmjs and
@cornerstonejs/adapters. ``viewer/package.json`` pins the versions OHIF
3.13.13 ships; ``viewer/check_seg_sr.mjs`` loads the objects the way OHIF's
SEG and SR extensions do and prints what it read as JSON (its header says which
functions it calls). Here we compare that with what we wrote:

* the SEG becomes one labelmap image per CT slice, voxel for voxel equal to our
  label map, with the voxel count of each segment, its tracking UID and a
  centroid on the planted lesion;
* every SEG frame names its CT slice and carries that slice's position, one
  frame per slice and segment;
* the SR's lesion groups come back with our volume, long axis, mean HU and
  certainty, their units, in each lesion's segment group with the segment it
  references; its outline group has the closed POLYLINE on the key slice; the
  study call (Qualitative Evaluations) with Present/Absent and the probability.

The npm packages are installed once into a cache outside the checkout (see
tests/support/npm.py). Without Node, npm or the registry the test fails; it
never skips. tests/interop/test_ohif_viewer.py runs the whole OHIF viewer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dicom_node.outputs.sr import VIEWER_TOOL_PREFIX
from dicom_node.outputs.uids import SEG
from tests.support import npm
from tests.support.interop_objects import WrittenResults, negative_case, write_results

VIEWER_DIR = Path(__file__).parent / "viewer"
SCRIPT = "check_seg_sr.mjs"
NODE_TIMEOUT_S = 120
#: Positions are written as DS with 4 decimals by the synthetic CT.
POSITION_TOLERANCE_MM = 1e-4
#: SR numbers are DS (16 characters): ours come back to about 1e-15 relative.
NUMBER_RELATIVE_TOLERANCE = 1e-12


@pytest.fixture(scope="session")
def viewer_dir() -> Path:
    """A folder with the pinned npm packages installed and the check script next to them."""
    target = npm.locked_packages(VIEWER_DIR)
    shutil.copy2(VIEWER_DIR / SCRIPT, target / SCRIPT)
    return target


def _read_with_ohif_parsers(viewer: Path, results: WrittenResults) -> dict[str, Any]:
    command = [
        npm.tool("node"),
        str(viewer / SCRIPT),
        "--seg",
        str(results.seg),
        "--sr",
        str(results.sr),
        *(str(path) for path in results.ct),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=NODE_TIMEOUT_S, check=False)
    assert completed.returncode == 0, f"{SCRIPT} failed:\n{completed.stderr[-4000:]}"
    return dict(json.loads(completed.stdout))


@pytest.fixture(scope="module")
def positive(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("viewer-positive"))


@pytest.fixture(scope="module")
def positive_read(viewer_dir: Path, positive: WrittenResults) -> dict[str, Any]:
    return _read_with_ohif_parsers(viewer_dir, positive)


@pytest.fixture(scope="module")
def negative(tmp_path_factory: pytest.TempPathFactory) -> WrittenResults:
    return write_results(tmp_path_factory.mktemp("viewer-negative"), negative_case())


@pytest.fixture(scope="module")
def negative_read(viewer_dir: Path, negative: WrittenResults) -> dict[str, Any]:
    return _read_with_ohif_parsers(viewer_dir, negative)


def _label_map_from_viewer(results: WrittenResults, segmentation: dict[str, Any]) -> np.ndarray:
    """The viewer's labelmap images, stacked in the order of our source images (by SOP Instance UID)."""
    slice_of = {ds.SOPInstanceUID: k for k, ds in enumerate(results.case.source_images)}
    label_map = np.zeros_like(results.case.label_map)
    for image in segmentation["labelmap"]:
        k = slice_of[image["sopInstanceUid"]]
        flat = label_map[k].reshape(-1)
        for index, segment in image["voxels"]:
            flat[index] = segment
    return label_map


def _centroid_mm(results: WrittenResults, segment: int) -> np.ndarray:
    """The centroid of a segment in patient coordinates, from our label map and the CT geometry."""
    points = []
    for k, r, c in np.argwhere(results.case.label_map == segment):
        source = results.case.source_images[k]
        position = np.array([float(v) for v in source.ImagePositionPatient])
        orientation = [float(v) for v in source.ImageOrientationPatient]
        row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
        points.append(
            position + c * column_spacing * np.array(orientation[:3]) + r * row_spacing * np.array(orientation[3:])
        )
    return np.mean(points, axis=0)


def test_the_pinned_parsers_ran_without_complaint(positive_read: dict[str, Any]) -> None:
    assert positive_read["versions"]["@cornerstonejs/adapters"] == "5.6.8"
    assert positive_read["versions"]["dcmjs"] == "0.52.0"
    # A warning would mean e.g. a frame the adapter could not place by its source SOP Instance UID.
    assert positive_read["warnings"] == []


def test_the_seg_loads_into_our_label_map(positive: WrittenResults, positive_read: dict[str, Any]) -> None:
    segmentation = positive_read["segmentation"]
    assert segmentation["segmentationType"] == "BINARY"
    assert not segmentation["overlappingSegments"]
    assert len(segmentation["labelmap"]) == len(positive.ct)
    assert np.array_equal(_label_map_from_viewer(positive, segmentation), positive.case.label_map)
    counts = {segment["segmentNumber"]: segment["voxelCount"] for segment in segmentation["segments"]}
    assert counts == positive.segment_voxel_counts
    assert all(count > 0 for count in counts.values())


def test_segments_keep_their_tracking_uids_and_sit_on_the_lesions(
    positive: WrittenResults, positive_read: dict[str, Any]
) -> None:
    for segment in positive_read["segmentation"]["segments"]:
        n = segment["segmentNumber"]
        assert segment["label"] == f"ICH {n}"
        assert segment["trackingUid"] == positive.case.uids.tracking(n)
        centroid = segment["centroidWorld"]
        viewer_centroid = np.array([centroid["x"], centroid["y"], centroid["z"]])
        np.testing.assert_allclose(viewer_centroid, _centroid_mm(positive, n), atol=1e-6)
        planted = np.array(positive.case.spec.lesions[n - 1].center_mm)
        assert np.linalg.norm(viewer_centroid - planted) < 2.0, "the segment is not where the lesion was planted"


def test_every_frame_names_its_slice_and_carries_its_position(
    positive: WrittenResults, positive_read: dict[str, Any]
) -> None:
    segmentation = positive_read["segmentation"]
    sources = {ds.SOPInstanceUID: ds for ds in positive.case.source_images}
    n_segments = len(positive.case.lesions)
    assert segmentation["numberOfFrames"] == len(sources) * n_segments == len(segmentation["frames"])
    assert (segmentation["rows"], segmentation["columns"]) == positive.case.label_map.shape[1:]
    pairs = set()
    for frame in segmentation["frames"]:
        source = sources[frame["referencedSopInstanceUid"]]
        expected = [float(v) for v in source.ImagePositionPatient]
        np.testing.assert_allclose(frame["imagePositionPatient"], expected, atol=POSITION_TOLERANCE_MM)
        pairs.add((frame["segmentNumber"], frame["referencedSopInstanceUid"]))
    assert pairs == {(n, uid) for n in range(1, n_segments + 1) for uid in sources}
    for image in segmentation["labelmap"]:
        expected = [float(v) for v in sources[image["sopInstanceUid"]].ImagePositionPatient]
        np.testing.assert_allclose(image["imagePositionPatient"], expected, atol=POSITION_TOLERANCE_MM)
        assert (image["rows"], image["columns"]) == positive.case.label_map.shape[1:]


def _measurements(group: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]["meaning"]: m for m in group["measurements"]}


def _study_call(report: dict[str, Any]) -> tuple[str, float]:
    by_name = {item["name"]["meaning"]: item for item in report["studyCall"]}
    return by_name["Intracranial hemorrhage (disorder)"]["code"]["meaning"], float(by_name["Probability"]["text"])


def test_the_sr_measurements_read_back_as_written(positive: WrittenResults, positive_read: dict[str, Any]) -> None:
    report = positive_read["report"]
    assert report["templateIdentifier"] == "1500"
    assert (report["completionFlag"], report["verificationFlag"]) == ("COMPLETE", "UNVERIFIED")
    assert len(report["groups"]) == 2 * len(positive.case.lesions)
    approx = {"rel": NUMBER_RELATIVE_TOLERANCE}
    for lesion in positive.case.lesions:
        n = lesion.segment_number
        groups = [group for group in report["groups"] if group["trackingIdentifier"] == f"{VIEWER_TOOL_PREFIX}ICH {n}"]
        (outline,) = [group for group in groups if group["region"] is not None]
        (segment,) = [group for group in groups if group["referencedSegment"] is not None]
        assert outline["trackingUid"] == segment["trackingUid"] == positive.case.uids.tracking(n)
        assert segment["referencedSegment"] == {"sopInstanceUid": positive.case.uids.instance(SEG), "segmentNumber": n}
        region = outline["region"]
        assert (region["name"]["meaning"], region["graphicType"]) == ("Image Region", "POLYLINE")
        assert region["referencedSopInstanceUid"] == positive.case.source_images[lesion.key_slice_index].SOPInstanceUID
        assert region["graphicData"][:2] == region["graphicData"][-2:], "the outline is closed"
        (area,) = outline["measurements"]
        assert (area["name"]["meaning"], area["unit"]["value"]) == ("Area", "mm2")
        assert area["value"] > 0
        measured = _measurements(segment)
        assert measured["Volume"]["value"] == pytest.approx(lesion.volume_ml, **approx)
        assert measured["Volume"]["unit"]["value"] == "mL"
        assert measured["Long axis"]["value"] == pytest.approx(lesion.longest_axial_diameter_mm, **approx)
        assert measured["Long axis"]["unit"]["value"] == "mm"
        assert measured["Attenuation Coefficient"]["value"] == pytest.approx(lesion.mean_hu, **approx)
        assert measured["Attenuation Coefficient"]["unit"]["value"] == "[hnsf'U]"
        assert measured["Attenuation Coefficient"]["derivation"]["meaning"] == "Mean"
        assert measured["Certainty of Finding"]["value"] == pytest.approx(lesion.confidence, **approx)
    presence, probability = _study_call(report)
    assert presence == "Present"
    assert probability == pytest.approx(positive.case.assessment.probability, rel=1e-6)


def test_a_negative_study_loads_as_an_empty_segment_and_an_absent_finding(
    negative: WrittenResults, negative_read: dict[str, Any]
) -> None:
    assert negative_read["warnings"] == []
    segmentation = negative_read["segmentation"]
    assert segmentation["numberOfFrames"] == len(negative.ct)
    assert len(segmentation["labelmap"]) == len(negative.ct)
    assert [(s["segmentNumber"], s["voxelCount"]) for s in segmentation["segments"]] == [(1, 0)]
    report = negative_read["report"]
    assert report["groups"] == []
    assert _study_call(report) == ("Absent", pytest.approx(negative.case.assessment.probability, rel=1e-6))
