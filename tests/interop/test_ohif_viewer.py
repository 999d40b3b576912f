"""Our SEG, SR and key images shown by a real viewer: OHIF 3.13.2 over Orthanc DICOMweb, in headless Chromium.

A parser that reads an object is not a viewer that shows it (issue 14). Here
the built OHIF viewer (npm ``@ohif/app``, pinned) runs in Debian's Chromium
against Orthanc with its DICOMweb plugin, all on loopback
(tests/support/ohif_viewer.py). One positive and one negative synthetic study
go into Orthanc exactly as the pipeline builds them; then, in screenshots and
in the page:

* the CT displays, and the SEG's colour lies inside the planted lesions'
  outlines on the displayed slice and not outside them (pixels counted; the
  outlines are projected with cornerstone's own world-to-screen transform);
* opening our SR raises no console error, and stepping through its
  measurements shows each lesion's outline on its key slice labelled with its
  volume; OHIF places each outline's points exactly where our pixel
  coordinates say (DICOM's corner convention, no half-pixel shift);
* OHIF offers to load the SR's measurements, and after "Yes" its
  Measurements panel lists each lesion with its name and volume (the SR's
  caption), rebuilt as OHIF's own outline on the lesion's key slice;
* the negative study's SR (titled "CT Head Report": it has no measurement)
  opens as text, with the call "Absent" and its probability, without error;
* the key-image series shows its burned-in banner.

The SEG and SR checks run twice: on the study as made here, and on the same
study as an anonymised export sends it, without a Frame of Reference UID on
the CT (the pipeline then gives our objects one derived from the series).

What OHIF 3.13.2 shows differently from what we mean is listed in
dicom_node/outputs/sr.py and the README (raw finding-site code in the outline's
labels, unit "1" after the certainty, cornerstone's own area and maximum next to
each lesion in the panel, and none for a lesion off the displayed slice until it
is shown).

Time: about 15-25 s per page (7 pages) on 2 CPU cores; the test is bounded at 3 minutes.
Without Chromium, Orthanc's DICOMweb plugin, Node or the npm registry it fails
with the reason; it never skips.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image

from dicom_node.outputs.sr import lesion_caption
from tests.support.interop_objects import negative_case, without_frame_of_reference, write_results
from tests.support.ohif_viewer import StudyInViewer, lesion_spheres, load_study, ohif_over_orthanc, open_pages
from tests.support.outputs_fixtures import make_case

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

#: A pixel of the SEG overlay: red dominates (the CT is grey, OHIF's interface blue).
SEG_RED_MARGIN = 50
#: Share of the overlay's pixels allowed outside the lesions' outlines (anti-aliased edges).
OUTSIDE_SHARE_ALLOWED = 0.02
#: The overlay must cover at least this share of the lesions' cut on the slice.
COVERAGE_REQUIRED = 0.6


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both studies in Orthanc, and what the viewer showed of each page."""
    workdir = tmp_path_factory.mktemp("ohif")
    written = {
        "positive": write_results(workdir / "positive"),
        "negative": write_results(workdir / "negative", negative_case()),
        "export": write_results(workdir / "export", without_frame_of_reference(make_case(job_key="job-export"))),
    }
    with ohif_over_orthanc(workdir) as (orthanc, server):
        studies = {name: load_study(orthanc, results) for name, results in written.items()}
        pages = []
        for name in ("positive", "export"):
            study = studies[name]
            pages += [
                {"name": f"{name}-seg", "kind": "seg", "url": study.url(study.seg_series),
                 "spheres": lesion_spheres(study.results)},
                {"name": f"{name}-sr", "kind": "sr", "url": study.url(study.sr_series),
                 "steps": len(study.results.case.lesions) + 1},
            ]
        positive, negative = studies["positive"], studies["negative"]
        pages += [
            {"name": "positive-sr-loaded", "kind": "sr-load", "url": positive.url(positive.sr_series),
             "rows": len(positive.results.case.lesions)},
            {"name": "key-images", "kind": "image", "url": positive.url(positive.key_image_series)},
            {"name": "negative-sr", "kind": "sr", "url": negative.url(negative.sr_series), "steps": 1},
        ]
        report = open_pages(server, pages, workdir / "screenshots")
    return {**studies, "report": report}


#: The positive study as made here, and the same as an anonymised export sends it: no Frame of
#: Reference UID on the CT (our objects then carry one derived from the series).
STUDIES = ("positive", "export")


def _page(viewer: dict[str, Any], name: str) -> dict[str, Any]:
    page = viewer["report"]["by_name"][name]
    assert page["loaded"] and "failure" not in page, (
        f"OHIF did not show {name!r}: {page.get('failure')}\nconsole errors: {page['errors']}\n"
        f"page text: {page.get('pageText', '')[:1500]}\nscreenshot: {page['screenshot']}"
    )
    return page


def _viewport_pixels(page: dict[str, Any]) -> np.ndarray:
    """The screenshot's viewport canvas as (rows, columns, RGB) int16."""
    state, ratio = page["state"], page["state"]["devicePixelRatio"]
    box = state["canvas"]
    image = np.asarray(Image.open(page["screenshot"]).convert("RGB"), dtype=np.int16)
    top, left = round(box["y"] * ratio), round(box["x"] * ratio)
    return image[top : top + round(box["height"] * ratio), left : left + round(box["width"] * ratio)]


@pytest.mark.parametrize("study", STUDIES)
def test_the_ct_displays_with_the_seg_loaded(viewer: dict[str, Any], study: str) -> None:
    positive: StudyInViewer = viewer[study]
    page = _page(viewer, f"{study}-seg")
    assert page["confirmedHydration"], "OHIF did not offer to load the SEG ([data-cy=yes-hydrate-btn])"
    assert page["segmentationRepresentations"] >= 1
    shown = page["state"]["sopInstanceUid"]
    assert shown in {ds.SOPInstanceUID for ds in positive.results.case.source_images}, "the viewport is not the CT"
    pixels = _viewport_pixels(page)
    head = np.all(pixels > 60, axis=2).mean()
    assert head > 0.15, f"the CT is not on screen ({head:.1%} of the viewport is lit)"
    assert all(label in page["panelText"] for label in ("ICH 1", "ICH 2")), "the Segmentations panel lists no segment"


def _circle(points: list[list[float]]) -> tuple[np.ndarray, float]:
    xy = np.array(points)
    centre = xy.mean(axis=0)
    return centre, float(np.linalg.norm(xy - centre, axis=1).mean())


@pytest.mark.parametrize("study", STUDIES)
def test_the_seg_colour_lies_inside_the_planted_lesions_and_not_outside(viewer: dict[str, Any], study: str) -> None:
    positive: StudyInViewer = viewer[study]
    page = _page(viewer, f"{study}-seg")
    pixels = _viewport_pixels(page)
    red = (pixels[..., 0] - np.maximum(pixels[..., 1], pixels[..., 2])) > SEG_RED_MARGIN
    ratio = page["state"]["devicePixelRatio"]
    origin = np.array([page["state"]["canvas"]["x"], page["state"]["canvas"]["y"]]) * ratio
    rows, columns = np.mgrid[0 : red.shape[0], 0 : red.shape[1]]
    inside = np.zeros_like(red)
    lesion_area = 0.0
    z = float(page["state"]["imagePositionPatient"][2])
    spacing_mm = float(positive.results.case.source_images[0].PixelSpacing[0])
    cut = [outline for outline in page["outlines"] if outline]
    assert cut, f"no planted lesion crosses the displayed slice (z = {z} mm)"
    for lesion, outline in zip(positive.results.case.spec.lesions, page["outlines"], strict=True):
        if not outline:
            continue
        centre, radius_px = _circle(outline)
        radius_mm = math.sqrt(lesion.radius_mm**2 - (z - lesion.center_mm[2]) ** 2)
        margin_px = 1.5 * spacing_mm * radius_px / radius_mm  # the SEG is voxels; the sphere is exact
        distance = np.hypot(columns + 0.5 - (centre[0] - origin[0]), rows + 0.5 - (centre[1] - origin[1]))
        inside |= distance <= radius_px + margin_px
        lesion_area += math.pi * radius_px**2
    n_red, n_outside = int(red.sum()), int((red & ~inside).sum())
    assert n_red >= COVERAGE_REQUIRED * lesion_area, (
        f"the SEG's colour covers {n_red} pixels of the lesions' {lesion_area:.0f} ({page['screenshot']})"
    )
    assert n_outside <= OUTSIDE_SHARE_ALLOWED * n_red, (
        f"{n_outside} of {n_red} SEG-coloured pixels lie outside the planted lesions ({page['screenshot']})"
    )


@pytest.mark.parametrize("study", STUDIES)
def test_our_sr_opens_without_error_and_shows_each_lesion_with_its_volume(viewer: dict[str, Any], study: str) -> None:
    positive: StudyInViewer = viewer[study]
    page = _page(viewer, f"{study}-sr")
    assert page["errors"] == [], f"console errors while opening our SR: {page['errors']}"
    assert page["sr"] == {"measurements": len(positive.results.case.lesions)}, "one measurement per lesion"
    assert "Something went wrong" not in page["panelText"]
    seen = {(step["sopInstanceUid"], label) for step in page["steps"] for label in step["labels"]}
    for lesion in positive.results.case.lesions:
        key_slice = positive.results.case.source_images[lesion.key_slice_index].SOPInstanceUID
        volume = f"Volume: {lesion.volume_ml:.2f} mL"
        labels = [label for uid, label in seen if uid == key_slice]
        assert any(volume in label for label in labels), (
            f"lesion {lesion.segment_number}: no '{volume}' drawn on its key slice; OHIF drew {sorted(seen)}"
        )


def _outline_mm(image: pydicom.Dataset, graphic_data: np.ndarray) -> np.ndarray:
    """Our SCOORD (column, row) points in patient mm, with DICOM's convention: (0, 0) is the top
    left corner of the top left pixel, whose centre, at Image Position (Patient), is (0.5, 0.5)."""
    position = np.array([float(v) for v in image.ImagePositionPatient])
    orientation = np.array([float(v) for v in image.ImageOrientationPatient])
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    columns, rows = graphic_data[:, 0] - 0.5, graphic_data[:, 1] - 0.5
    return (
        position
        + columns[:, None] * column_spacing * orientation[:3]
        + rows[:, None] * row_spacing * orientation[3:]
    )


def _outline(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> hd.sr.ScoordContentItem:
    """The lesion's outline: the group's Image Region SCOORD (the one OHIF draws)."""
    (region,) = [item for item in group[0].ContentSequence if item.value_type == hd.sr.ValueTypeValues.SCOORD]
    return region


@pytest.mark.parametrize("study", STUDIES)
def test_ohif_places_each_outline_exactly_where_the_sr_puts_it(viewer: dict[str, Any], study: str) -> None:
    """Pixel coordinates have two conventions in the wild (corner or centre at 0, 0); a
    half-pixel shift would draw every outline off the lesion. OHIF follows DICOM's."""
    shown: StudyInViewer = viewer[study]
    page = _page(viewer, f"{study}-sr")
    placed = {a["trackingUid"]: np.array(a["points"]) for a in page["annotations"] if a["tool"] == "DICOMSRDisplay"}
    report = hd.sr.srread(shown.results.sr)
    sources = {ds.SOPInstanceUID: ds for ds in shown.results.case.source_images}
    groups = report.content.get_image_measurement_groups()
    assert len(groups) == len(shown.results.case.lesions)
    for group in groups:
        region = _outline(group)
        (selected,) = region.ContentSequence
        image = sources[selected.ReferencedSOPSequence[0].ReferencedSOPInstanceUID]
        expected = _outline_mm(image, region.value)
        assert group.tracking_uid in placed, f"OHIF placed no outline for {group.tracking_identifier}"
        np.testing.assert_allclose(placed[group.tracking_uid], expected, atol=1e-3)


def test_opening_our_sr_lists_each_lesion_with_its_volume_in_the_measurements_panel(viewer: dict[str, Any]) -> None:
    """OHIF offers to load the report ("yes-hydrate-btn"); then its Measurements panel lists
    each lesion under the SR's caption (name and volume), as its own freehand outline on the
    lesion's key slice. That it rebuilds them at all rests on the tracking identifier (see
    dicom_node/outputs/sr.py, VIEWER_TOOL_PREFIX)."""
    positive: StudyInViewer = viewer["positive"]
    page = _page(viewer, "positive-sr-loaded")
    assert page["errors"] == [], f"console errors while loading our SR's measurements: {page['errors']}"
    assert page["reading"]["isRehydratable"], "OHIF does not offer to load our SR's measurements"
    assert page["confirmedReportHydration"], "OHIF showed no prompt to load the SR ([data-cy=yes-hydrate-btn])"
    rows, tracked = page["measurementRows"], page["trackedMeasurements"]
    lesions = positive.results.case.lesions
    assert len(rows) == len(tracked) == len(lesions), f"the panel lists {rows}"
    assert f"Measurements ({len(lesions)})" in page["panelText"]
    sources = positive.results.case.source_images
    for lesion, segment in zip(lesions, positive.results.case.segments, strict=True):
        caption = lesion_caption(segment.label, lesion.volume_ml)
        assert sum(caption in row for row in rows) == 1, f"no panel row reads {caption!r}: {rows}"
        (measurement,) = [m for m in tracked if m["label"] == caption]
        assert measurement["toolName"] == "PlanarFreehandROI"
        assert measurement["sopInstanceUid"] == sources[lesion.key_slice_index].SOPInstanceUID


def test_the_negative_studys_sr_opens_as_text_without_error(viewer: dict[str, Any]) -> None:
    """A report without measurements is titled "CT Head Report", not "Imaging Measurement
    Report", so OHIF shows it as text (its measurement viewport reads a first measurement and
    fails on none): the reader sees the call."""
    negative: StudyInViewer = viewer["negative"]
    page = _page(viewer, "negative-sr")
    assert page["sr"] == {"measurements": 0}
    assert page["errors"] == [], f"errors while opening the negative SR: {page['errors']}"
    assert "Something went wrong" not in page["panelText"]
    assert not page["reading"]["isImagingMeasurementReport"]
    probability = f"{negative.results.case.assessment.probability:.6g}"
    for shown in ("CT Head Report", "Qualitative Evaluations", "Absent", f"Probability: {probability}"):
        assert shown in page["panelText"], f"the report's text lacks {shown!r}: {page['panelText'][-800:]}"


def test_the_key_image_series_shows_its_banner(viewer: dict[str, Any]) -> None:
    """The first key image (the summary) is on screen with its yellow banner across the top.

    OHIF shows the RGB image through its default window W 256 / L 128 (our Secondary Capture
    carries none: VOI does not apply to RGB), nearly unchanged, and magnifies the 128-pixel
    test image smoothly, so the thin yellow strokes blur: yellow here is red and green alike
    and well above blue.
    """
    positive: StudyInViewer = viewer["positive"]
    page = _page(viewer, "key-images")
    shown = page["state"]["sopInstanceUid"]
    assert shown == pydicom.dcmread(positive.results.key_images[0], stop_before_pixels=True).SOPInstanceUID
    pixels = _viewport_pixels(page)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    yellow = (red > 90) & (green > 90) & (np.abs(red - green) < 60) & (2 * blue < np.minimum(red, green))
    assert yellow.sum() > 100, f"no yellow banner text on the key image ({page['screenshot']})"
    banner_rows = np.flatnonzero(yellow.any(axis=1))
    assert banner_rows.mean() < 0.25 * pixels.shape[0], f"the banner is not at the top ({page['screenshot']})"
