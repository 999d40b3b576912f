"""The DICOM Segmentation (PS3.3 A.51) that carries the lesion masks back to the PACS.

What we send, and why (measured with DCMTK 3.6.7, Orthanc 1.10 and dciodvfy, see
NOTES.md):

* BINARY, not LABELMAP: the LABELMAP SOP Class (1.2.840.10008.5.1.4.1.1.66.7) is
  rejected by the peers we must reach;
* uncompressed (Explicit VR Little Endian): every viewer decodes it;
* frame-aligned: one frame per source image and segment, on the source grid,
  empty frames included. Each frame names its source image in its per-frame
  Derivation Image Sequence and carries that image's position; viewers that
  cannot resample rely on a frame for every image, and an omitted frame breaks
  several of them. Keeping empty frames also lets a negative study be sent as a
  SEG with an empty segment that still loads. highdicom (0.28.2, no option)
  orders the frames of each segment along the slice normal, whatever the
  order of ``source_images``;
* one segment per label value of the caller's label map (one per lesion), each
  with its own coded type, so subtypes (subdural, epidural, ...) are possible.

Who made the objects (:class:`AlgorithmInfo`, :class:`Equipment`) and the completion
of the sources' Type 2 attributes are shared with the SR and the key images:
:mod:`dicom_node.outputs.common`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.outputs import codes
from dicom_node.outputs.common import RESEARCH_USE_DISCLAIMER, AlgorithmInfo, Equipment, check_patient_study_type2

#: ContentLabel of the SEG (PS3.3 C.8.20.2; CS: upper case, at most 16 characters).
CONTENT_LABEL = "ICH"
#: Image Laterality (0020,0062) enumerated value for an unpaired body part.
UNPAIRED = "U"
#: Red: what radiologists expect blood overlays to look like.
DEFAULT_DISPLAY_RGB = (255, 0, 0)


@dataclass(frozen=True)
class SegmentSpec:
    """One segment: the label value ``segment_number`` of the label map, described.

    ``tracking_uid`` (and ``tracking_id``, which defaults to ``label``) identify
    the lesion across objects: the SR's measurement group for this segment uses
    the same pair (TID 4108), so a viewer can link them.
    """

    segment_number: int
    label: str
    tracking_uid: str
    tracking_id: str | None = None
    property_type: Code = codes.INTRACRANIAL_HEMORRHAGE
    property_category: Code = codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE
    display_rgb: tuple[int, int, int] = DEFAULT_DISPLAY_RGB

    def __post_init__(self) -> None:
        if not 1 <= self.segment_number <= 65535:
            raise ValueError("a segment number is 1 to 65535 (US, PS3.3 C.8.20.2)")
        if not self.label or len(self.label) > 64:
            raise ValueError("a segment label has 1 to 64 characters (LO)")
        if any(not 0 <= c <= 255 for c in self.display_rgb):
            raise ValueError("display_rgb components are 0 to 255")

    def to_description(self, algorithm: AlgorithmInfo) -> hd.seg.SegmentDescription:
        """The Segment Sequence item: codes, algorithm, tracking and display colour."""
        return hd.seg.SegmentDescription(
            segment_number=self.segment_number,
            segment_label=self.label,
            segmented_property_category=self.property_category,
            segmented_property_type=self.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm.to_sequence(),
            tracking_uid=self.tracking_uid,
            tracking_id=self.tracking_id or self.label,
            anatomic_regions=[codes.BRAIN],
            display_color=hd.color.CIELabColor.from_rgb(*self.display_rgb),
        )


def build_segmentation(
    *,
    source_images: Sequence[Dataset],
    label_map: np.ndarray,
    segments: Sequence[SegmentSpec],
    algorithm: AlgorithmInfo,
    equipment: Equipment,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    sop_instance_uid: str,
    dimension_organization_uid: str,
    instance_number: int = 1,
) -> hd.seg.Segmentation:
    """A BINARY, uncompressed SEG with one frame per source image and segment.

    ``label_map`` is ``(slices, rows, columns)`` with slice ``k`` on
    ``source_images[k]`` (the caller aligns them; slices the volume interpolated
    have no source image and must be dropped first). Label value ``n`` is
    segment ``n``; every value present needs a :class:`SegmentSpec`, and a spec
    whose label is absent gives an empty segment. That is how a negative study
    gets a SEG when ``send_empty_seg`` asks for one: an all-zero label map and
    one spec. ``source_images`` need not carry Pixel Data.

    ``dimension_organization_uid`` replaces the random one highdicom makes, so
    that a rebuild of the same job is identical in every UID.
    """
    _check_alignment(source_images, label_map)
    _check_segments(segments, label_map)
    check_patient_study_type2(source_images[:1])  # highdicom copies the patient and study from the first
    segmentation = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=_as_label_array(label_map),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[spec.to_description(algorithm) for spec in segments],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        **equipment.as_kwargs(),
        series_description=series_description,
        content_description=RESEARCH_USE_DISCLAIMER,
        content_label=CONTENT_LABEL,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
    )
    # General Image module (Type 3): shown by most viewers in the image overlay.
    segmentation.ImageComments = RESEARCH_USE_DISCLAIMER
    # General Image module (Type 3), PS3.3 C.7.6.1: every segment lies on the brain, an
    # unpaired structure ("U"). Saying so here is why General Series Laterality (Type 2C,
    # for paired body parts only) stays absent: validators that cannot judge "paired"
    # (PixelMed) otherwise ask for it, and an empty one would be wrong for the brain.
    segmentation.ImageLaterality = UNPAIRED
    _set_dimension_organization_uid(segmentation, dimension_organization_uid)
    return segmentation


def _check_alignment(source_images: Sequence[Dataset], label_map: np.ndarray) -> None:
    """Frame alignment: one single-frame source image per slice, same matrix size."""
    if not source_images:
        raise ValueError("a SEG needs its source images (PS3.3 C.8.20: derived from images)")
    if label_map.ndim != 3:
        raise ValueError("label_map must be 3D (slices, rows, columns) on the source grid")
    if label_map.shape[0] != len(source_images):
        raise ValueError(
            f"label_map has {label_map.shape[0]} slices but there are {len(source_images)} "
            "source images: the SEG is frame-aligned, one slice per source image"
        )
    for image in source_images:
        if int(image.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError("source images must be single-frame (one CT slice per instance)")
        if (int(image.Rows), int(image.Columns)) != label_map.shape[1:]:
            raise ValueError(
                f"label_map slices are {label_map.shape[1]}x{label_map.shape[2]} but a source "
                f"image is {image.Rows}x{image.Columns}: masks must be on the source grid"
            )


def _check_segments(segments: Sequence[SegmentSpec], label_map: np.ndarray) -> None:
    """Segments are numbered 1..n in order and cover every label value used."""
    if not segments:
        raise ValueError(
            "a SEG has at least one segment (Segment Sequence is 1-n); "
            "skip the SEG, or pass one spec for an empty segment"
        )
    numbers = [spec.segment_number for spec in segments]
    if numbers != list(range(1, len(numbers) + 1)):
        raise ValueError("segments must be numbered 1..n in order (as the label values)")
    if not (label_map.dtype == np.bool_ or np.issubdtype(label_map.dtype, np.unsignedinteger)):
        raise ValueError("label_map must be bool or an unsigned integer type")
    highest = int(label_map.max()) if label_map.size else 0
    if highest > len(segments):
        raise ValueError(
            f"label_map holds label {highest} but only {len(segments)} segments are described: "
            "every label value needs a SegmentSpec"
        )


def _set_dimension_organization_uid(segmentation: Dataset, uid: str) -> None:
    """Every DimensionOrganizationUID (PS3.3 C.7.6.17) becomes ``uid``: one organization."""
    for item in segmentation.DimensionOrganizationSequence:
        item.DimensionOrganizationUID = uid
    for item in segmentation.DimensionIndexSequence:
        item.DimensionOrganizationUID = uid


def _as_label_array(label_map: np.ndarray) -> np.ndarray:
    """highdicom takes a label-map style array of unsigned integers."""
    if label_map.dtype == np.bool_:
        return label_map.view(np.uint8)
    return label_map
