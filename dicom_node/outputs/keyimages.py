"""Secondary Capture key images (PS3.3 A.8.1) for PACS and viewers that cannot show a SEG.

Every PACS displays an RGB Secondary Capture, so these images carry the result
to the places SEG and SR do not reach:

* one image per lesion: its key slice (the slice of the longest axial
  diameter) in the brain window (centre 40, width 80 HU), with the lesion's
  outline burned in (other lesions on that slice in another colour) and a
  caption with its measurements;
* one summary image: lesion count, total volume, study probability, and "No
  hemorrhage detected" for a negative study.

Each image carries the banner "AI RESULT - NOT FOR DIAGNOSTIC USE" in its
pixels (so it survives any viewer), BurnedInAnnotation YES, ConversionType
WSD (workstation, PS3.3 C.8.6.1) and the research-use statement in
ImageComments. The banner is plain ASCII: Pillow's built-in font has no en
dash. Images keep the source matrix size (rows x columns) and pixel spacing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.outputs import codes
from dicom_node.outputs.common import RESEARCH_USE_DISCLAIMER, Equipment, check_patient_study_type2
from dicom_node.outputs.sr import LesionMeasurement, StudyAssessment

#: Burned into every key image; ASCII only (see the module docstring).
BANNER_TEXT = "AI RESULT - NOT FOR DIAGNOSTIC USE"
#: The brain window of the rendering, in HU.
BRAIN_WINDOW_CENTER_HU = 40.0
BRAIN_WINDOW_WIDTH_HU = 80.0
#: Colours of the burned-in graphics (RGB).
CONTOUR_RGB = (255, 0, 0)
OTHER_CONTOUR_RGB = (255, 160, 0)
BANNER_RGB = (255, 255, 0)
TEXT_RGB = (255, 255, 255)
#: Smallest font size we shrink to when a line does not fit a small matrix.
MIN_FONT_SIZE = 6
#: Text sizes as a fraction of the image height (about 20 px on 512 rows).
BANNER_HEIGHT_FRACTION = 1 / 24
CAPTION_HEIGHT_FRACTION = 1 / 30
#: Distance between text lines, in font sizes.
LINE_SPACING = 1.4


def window_to_uint8(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU to 8-bit grey: ``center - width/2`` is black, ``center + width/2`` white, clipped."""
    if not width > 0:
        raise ValueError("a window's width must be positive")
    scaled = (hu.astype(np.float32) - (center - width / 2)) * (255.0 / width)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def mask_contour(mask: np.ndarray) -> np.ndarray:
    """The outline of a 2D mask: the mask minus its 4-neighbour erosion.

    Pixels on the image border count as outline, as if outside were empty.
    """
    if mask.ndim != 2:
        raise ValueError("mask_contour takes one 2D slice")
    mask = mask.astype(bool, copy=False)
    padded = np.pad(mask, 1, constant_values=False)
    eroded = (
        mask
        & padded[:-2, 1:-1]  # neighbour above
        & padded[2:, 1:-1]  # below
        & padded[1:-1, :-2]  # left
        & padded[1:-1, 2:]  # right
    )
    return mask & ~eroded


def _thicken(outline: np.ndarray, times: int) -> np.ndarray:
    """Dilate an outline ``times`` times (4-neighbour) so it stays visible on large matrices."""
    for _ in range(times):
        padded = np.pad(outline, 1, constant_values=False)
        outline = (
            outline | padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
        )
    return outline


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (Aileron; needs Pillow >= 10.1 with FreeType)."""
    return ImageFont.load_default(size=max(size, MIN_FONT_SIZE))


def _fitting_font(
    draw: ImageDraw.ImageDraw, text: str, preferred_size: int, max_width: int
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest font up to ``preferred_size`` in which ``text`` fits ``max_width`` pixels."""
    size = max(preferred_size, MIN_FONT_SIZE)
    font = _font(size)
    while size > MIN_FONT_SIZE and draw.textlength(text, font=font) > max_width:
        size -= 1
        font = _font(size)
    return font


def _draw_banner(image: Image.Image) -> None:
    """The banner on a black band across the top, so it is legible on any content."""
    draw = ImageDraw.Draw(image)
    margin = max(2, image.width // 100)
    font = _fitting_font(
        draw, BANNER_TEXT, round(image.height * BANNER_HEIGHT_FRACTION), image.width - 2 * margin
    )
    bottom = draw.textbbox((margin, margin), BANNER_TEXT, font=font)[3]
    draw.rectangle((0, 0, image.width - 1, bottom + margin), fill=(0, 0, 0))
    draw.text((margin, margin), BANNER_TEXT, fill=BANNER_RGB, font=font)


def _draw_lines(image: Image.Image, lines: Sequence[str], *, top: int, size: int) -> None:
    """Left-aligned white text lines starting at ``top``, each shrunk to fit the width."""
    draw = ImageDraw.Draw(image)
    margin = max(2, image.width // 100)
    for number, line in enumerate(lines):
        font = _fitting_font(draw, line, size, image.width - 2 * margin)
        draw.text((margin, top + round(number * size * LINE_SPACING)), line, fill=TEXT_RGB, font=font)


def render_lesion_image(
    hu_slice: np.ndarray, lesion_mask: np.ndarray, caption: str, other_lesions: np.ndarray | None = None
) -> np.ndarray:
    """One key slice as RGB uint8: brain window, outlines, banner and caption.

    The lesion is outlined in :data:`CONTOUR_RGB`; ``other_lesions`` (other
    findings on the same slice) in :data:`OTHER_CONTOUR_RGB`, so that a reader
    does not take an unmarked hyperdensity for a miss.
    """
    if hu_slice.shape != lesion_mask.shape or hu_slice.ndim != 2:
        raise ValueError("hu_slice and lesion_mask must be 2D arrays of the same shape")
    grey = window_to_uint8(hu_slice, BRAIN_WINDOW_CENTER_HU, BRAIN_WINDOW_WIDTH_HU)
    rgb = np.repeat(grey[:, :, np.newaxis], 3, axis=2)
    thickening = max(0, hu_slice.shape[0] // 256 - 1)
    if other_lesions is not None:
        rgb[_thicken(mask_contour(other_lesions), thickening)] = OTHER_CONTOUR_RGB
    rgb[_thicken(mask_contour(lesion_mask), thickening)] = CONTOUR_RGB
    image = Image.fromarray(rgb, mode="RGB")
    _draw_banner(image)
    size = max(MIN_FONT_SIZE, round(image.height * CAPTION_HEIGHT_FRACTION))
    _draw_lines(image, [caption], top=image.height - 2 * size - 2, size=size)
    return np.asarray(image, dtype=np.uint8)


def summary_lines(
    assessment: StudyAssessment, lesions: Sequence[LesionMeasurement], algorithm_text: str
) -> list[str]:
    """What the summary image says, one line each (also used by tests)."""
    if assessment.hemorrhage_present:
        headline = "Intracranial hemorrhage suspected"
    else:
        headline = "No hemorrhage detected"
    total_ml = sum(lesion.volume_ml for lesion in lesions)
    lines = [
        headline,
        f"Lesions: {len(lesions)}",
        f"Total volume: {total_ml:.1f} mL",
        f"Probability: {assessment.probability:.2f}",
    ]
    if algorithm_text:
        lines.append(f"Algorithm: {algorithm_text}")
    return lines


def render_summary_image(rows: int, columns: int, lines: Sequence[str]) -> np.ndarray:
    """The summary as RGB uint8 of the source matrix size: banner, then the lines."""
    image = Image.new("RGB", (columns, rows), color=(0, 0, 0))
    _draw_banner(image)
    size = max(MIN_FONT_SIZE, round(rows * BANNER_HEIGHT_FRACTION))
    _draw_lines(image, lines, top=3 * size, size=size)
    return np.asarray(image, dtype=np.uint8)


def lesion_caption(lesion: LesionMeasurement, index: int, count: int, source: Dataset) -> str:
    """``Lesion 1/2: 12.5 mL, 30.2 mm, 65 HU, image 17``: enough to find it in the series."""
    parts = [
        f"Lesion {index}/{count}: {lesion.volume_ml:.1f} mL",
        f"{lesion.longest_axial_diameter_mm:.1f} mm",
        f"{lesion.mean_hu:.0f} HU",
    ]
    if "InstanceNumber" in source and source.InstanceNumber is not None:
        parts.append(f"image {source.InstanceNumber}")
    return ", ".join(parts)


def build_key_images(
    *,
    source_images: Sequence[Dataset],
    hu_volume: np.ndarray,
    label_map: np.ndarray,
    lesions: Sequence[LesionMeasurement],
    assessment: StudyAssessment,
    equipment: Equipment,
    algorithm_text: str,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    sop_instance_uids: Sequence[str],
) -> list[hd.sc.SCImage]:
    """The summary image (instance 1) and one image per lesion (instances 2..n+1).

    ``hu_volume`` and ``label_map`` are ``(slices, rows, columns)`` aligned
    with ``source_images`` like the SEG's; lesion ``segment_number`` is its label
    value. ``sop_instance_uids`` has one UID per image, summary first.
    ``algorithm_text`` (e.g. ``"unet 1.2"``) is printed on the summary; pass ""
    to leave it out.
    """
    _check_inputs(source_images, hu_volume, label_map, lesions, sop_instance_uids)
    check_patient_study_type2(source_images)  # each image copies the patient and study from its source
    series = _Series(series_instance_uid, series_number, series_description, equipment)
    rows, columns = label_map.shape[1:]
    summary = render_summary_image(rows, columns, summary_lines(assessment, lesions, algorithm_text))
    images = [_secondary_capture(summary, source_images[0], None, series, sop_instance_uids[0], 1)]
    for index, lesion in enumerate(lesions, start=1):
        k = lesion.key_slice_index
        source = source_images[k]
        pixels = _lesion_pixels(hu_volume[k], label_map[k], lesion, index, len(lesions), source)
        images.append(_secondary_capture(pixels, source, source, series, sop_instance_uids[index], index + 1))
    return images


class _Series(NamedTuple):
    """What every image of the key-image series shares."""

    uid: str
    number: int
    description: str
    equipment: Equipment


def _lesion_pixels(
    hu_slice: np.ndarray,
    labels: np.ndarray,
    lesion: LesionMeasurement,
    index: int,
    count: int,
    source: Dataset,
) -> np.ndarray:
    """The rendered key slice of one lesion; refuses a key slice without the lesion."""
    lesion_mask = labels == lesion.segment_number
    if not lesion_mask.any():
        raise ValueError(
            f"lesion {lesion.segment_number} has no voxel on its key slice {lesion.key_slice_index}: "
            "key_slice_index and label_map disagree"
        )
    return render_lesion_image(
        hu_slice,
        lesion_mask,
        lesion_caption(lesion, index, count, source),
        other_lesions=(labels != 0) & ~lesion_mask,
    )


def _check_inputs(
    source_images: Sequence[Dataset],
    hu_volume: np.ndarray,
    label_map: np.ndarray,
    lesions: Sequence[LesionMeasurement],
    sop_instance_uids: Sequence[str],
) -> None:
    """Volumes aligned with the source images, key slices inside, one UID per image."""
    if not source_images:
        raise ValueError("key images need the source images (patient, study and key slices)")
    if label_map.ndim != 3 or hu_volume.shape != label_map.shape:
        raise ValueError("hu_volume and label_map must be 3D arrays of the same shape")
    if label_map.shape[0] != len(source_images):
        raise ValueError(
            f"label_map has {label_map.shape[0]} slices but there are {len(source_images)} "
            "source images: slice k must be source image k"
        )
    for lesion in lesions:
        if lesion.key_slice_index >= len(source_images):
            raise ValueError(
                f"lesion {lesion.segment_number}'s key slice {lesion.key_slice_index} "
                f"is outside the {len(source_images)} source images"
            )
    if len(sop_instance_uids) != len(lesions) + 1:
        raise ValueError(
            f"{len(lesions) + 1} key images need as many SOP Instance UIDs "
            f"(summary first), got {len(sop_instance_uids)}"
        )


def _patient_orientation(source: Dataset) -> tuple[str, str]:
    """PS3.3 C.7.6.1.1.1: the patient directions of the rows and columns of the image.

    Each direction becomes the letter of its major axis (L/R, P/A, H/F). The
    standard allows further letters for oblique planes, but highdicom 0.28.2
    accepts one letter per direction, and a key image of a tilted head CT is
    still read as axial. Without ImageOrientationPatient an axial image is assumed.
    """
    orientation = [float(v) for v in source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    return _direction_letters(orientation[:3]), _direction_letters(orientation[3:])


def _direction_letters(cosines: Sequence[float]) -> str:
    """Letters of one LPS direction vector, strongest component first."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    order = sorted(range(3), key=lambda axis: -abs(cosines[axis]))
    major = order[0]
    return letters[major][0] if cosines[major] > 0 else letters[major][1]


def _pixel_spacing(source: Dataset) -> tuple[float, float] | None:
    """The source PixelSpacing: the key image keeps the source matrix, so it still applies."""
    if "PixelSpacing" not in source:
        return None
    row_spacing, column_spacing = (float(v) for v in source.PixelSpacing)
    return row_spacing, column_spacing


def _secondary_capture(
    pixels: np.ndarray,
    reference: Dataset,
    source_slice: Dataset | None,
    series: _Series,
    sop_instance_uid: str,
    instance_number: int,
) -> hd.sc.SCImage:
    """An RGB SC in the source study; patient and study copied from ``reference``."""
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series.uid,
        series_number=series.number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        **series.equipment.as_kwargs(),
        series_description=series.description,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        pixel_spacing=_pixel_spacing(reference),
        patient_orientation=_patient_orientation(reference),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    image.copy_patient_and_study_information(reference)
    # General Series (Type 3). Without it dciodvfy cannot rule out a paired body part and
    # asks for Laterality (Type 2C); the node only processes head CT, hence the default.
    image.BodyPartExamined = reference.get("BodyPartExamined") or "HEAD"
    image.ConversionType = "WSD"
    image.BurnedInAnnotation = "YES"
    image.ImageComments = RESEARCH_USE_DISCLAIMER
    if source_slice is not None:
        _reference_source_slice(image, source_slice)
    return image


def _reference_source_slice(image: Dataset, source_slice: Dataset) -> None:
    """General Reference module (PS3.3 C.12.4): the CT slice this key image shows."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source_slice.SOPClassUID
    reference.ReferencedSOPInstanceUID = source_slice.SOPInstanceUID
    purpose = hd.sr.CodedConcept.from_code(codes.SOURCE_IMAGE_FOR_PROCESSING)
    reference.PurposeOfReferenceCodeSequence = [purpose]
    image.SourceImageSequence = [reference]
    image.DerivationDescription = (
        f"Brain window W{BRAIN_WINDOW_WIDTH_HU:g} L{BRAIN_WINDOW_CENTER_HU:g}, "
        "AI lesion outline and text burned in"
    )
