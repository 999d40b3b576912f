"""The TID 1500 Measurement Report (Comprehensive 3D SR) that states the result.

Structure (PS3.16 TID 1500), as built by highdicom:

* observation context (TID 1001/1002/1004): the node as a device observer;
* procedure reported: LOINC "CT unspecified body region" (CID 100; see codes);
* Imaging Measurements (row 6), in the order of TID 1500's rows (PS3.16
  chapter 6: an order-significant template's items are encoded in row order),
  two groups per lesion that share the lesion's tracking identifier and UID
  (the segment's UID), because they describe one finding:
  - first every lesion's TID 1411 volumetric group (row 8): it references the
    lesion's segment in our SEG and holds the lesion's measurements: volume
    (mL), long axis (mm), mean attenuation (HU) and certainty of finding
    (unit "1");
  - then every lesion's TID 1501 group (row 9): the lesion's area (mm²) on its
    key slice (the slice of the long axis, which the key images show),
    INFERRED FROM its outline there (a closed POLYLINE round the lesion's
    pixels, SELECTED FROM that CT image), the same outline as the group's
    "Image Region" (row 10c), and a Comment naming the lesion with its volume
    ("ICH lesion 1: 3.05 mL").
  This is the shape OHIF 3.13 can take back as its own tools: it draws the
  outline, merges the two groups by tracking UID (so the lesion appears once,
  labelled with every number), offers to load the report's measurements, and
  then lists each lesion in its Measurements panel under the Comment's words
  (see ``_outline_group`` and :data:`VIEWER_TOOL_PREFIX` for what OHIF reads);
* Qualitative Evaluations (row 12): the study-level call, "Intracranial
  hemorrhage: Present/Absent" (row 13, CODE), and the study probability as
  text (row 14: the container has no NUM row). It sits outside Imaging
  Measurements because a viewer expects a shape in every measurement group
  there (OHIF 3.13 crashed on a study group without one). highdicom 0.28
  builds only Imaging Measurements, so this container is made of highdicom
  content items and appended to the root container.

A negative study gets Qualitative Evaluations only, which TID 1500 allows
(one of rows 6, 10 or 12 is required), and the title "CT Head Report" (LOINC,
CID 7000) instead of "Imaging Measurement Report": it holds no measurement.
TID 1500 row 1 takes its title from CID 7021, which is extensible. The title
matters to OHIF 3.13: it treats a report titled "Imaging Measurement Report"
as measurements to draw and fails on one without any (its SR viewport reads
the first measurement), while it shows any other report as text, so the reader
sees "Intracranial hemorrhage: Absent" and the probability. An empty Imaging
Measurements container is not written: the
@cornerstonejs/adapters TID 1500 reader would like one, but highdicom 0.28's
group getters fail on it and an empty Content Sequence is a dciodvfy error. A
shape invented for a negative study would tell the reader something the model
did not find. Count lesions by tracking
UID, not by measurement group.

The report is PRELIMINARY and UNVERIFIED (PS3.3 C.17.2): no person has signed it.
Source images and the SEG are recorded in the Current Requested Procedure
Evidence Sequence (highdicom builds it from ``evidence``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as sr_codes
from pydicom.uid import SegmentationStorage

from dicom_node.outputs import codes
from dicom_node.outputs.outline import outer_outline, polygon_area
from dicom_node.outputs.common import AlgorithmInfo, Equipment, check_patient_study_type2

#: The start of each lesion's Tracking Identifier (TID 1411/1501 row 2, free text, TID 4108).
#: OHIF 3.13 rebuilds a measurement as one of its own tools, and only then lists it in its
#: Measurements panel, when this text names the tool: @cornerstonejs/adapters 5.x
#: (MeasurementReport.getAdapterForTrackingIdentifier) picks the closed-outline reader for any
#: identifier that starts with "Cornerstone3DTools@^0.1.0:PlanarFreehandROI" and ignores the
#: rest, so the lesion's own name follows after a colon. The text is free (any value is
#: conformant); the lesion's identity is its Tracking Unique Identifier, which stays the
#: segment's. Other viewers show the whole text.
VIEWER_TOOL_PREFIX = "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:"
#: Significant digits of the study probability, written as text (Qualitative Evaluations has no NUM row).
PROBABILITY_DIGITS = 6


@dataclass(frozen=True)
class StudyAssessment:
    """The study-level call: the model's positive/negative and its probability in [0, 1]."""

    hemorrhage_present: bool
    probability: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:  # also refuses NaN
            raise ValueError("probability must be in [0, 1]")


@dataclass(frozen=True)
class LesionMeasurement:
    """One lesion's measurements; ``segment_number`` is its segment in the SEG.

    ``key_slice_index`` is the index into the source images (the slice of the
    longest axial diameter) that the key images show. ``confidence`` may be
    absent for models that give none.
    """

    segment_number: int
    volume_ml: float
    longest_axial_diameter_mm: float
    mean_hu: float
    confidence: float | None
    key_slice_index: int

    def __post_init__(self) -> None:
        if self.segment_number < 1:
            raise ValueError("segment numbers start at 1 (PS3.3 C.8.20.2)")
        if not (self.volume_ml >= 0.0 and math.isfinite(self.volume_ml)):
            raise ValueError("volume_ml must be a finite number >= 0")
        if not (self.longest_axial_diameter_mm >= 0.0 and math.isfinite(self.longest_axial_diameter_mm)):
            raise ValueError("longest_axial_diameter_mm must be a finite number >= 0")
        if not math.isfinite(self.mean_hu):
            raise ValueError("mean_hu must be finite")
        if self.confidence is not None and not 0.0 <= self.confidence <= 1.0:
            raise ValueError("confidence must be in [0, 1] or None")
        if self.key_slice_index < 0:
            raise ValueError("key_slice_index is an index into the source images, >= 0")


def build_report(
    *,
    source_images: Sequence[Dataset],
    assessment: StudyAssessment,
    lesions: Sequence[LesionMeasurement],
    segmentation: Dataset | None,
    algorithm: AlgorithmInfo,
    equipment: Equipment,
    device_observer_uid: str,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    missing: Sequence[str] = (),
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one study, referencing ``segmentation`` for each lesion.

    Each lesion's groups take their tracking identifier and UID, and their
    finding type, from the segment they reference, so the SR and the SEG name
    a lesion the same way and a subtype coded in the SEG is reported as such.
    The outline is traced from the SEG's own frame of that segment on the key
    slice, so the drawing and the overlay agree pixel for pixel. Lesions
    therefore need the SEG; a negative study may pass ``segmentation=None``.

    ``missing`` are sentences saying which result object could not be made and
    why; each becomes a TEXT item of the study-level Qualitative Evaluations
    container, so the reader of the report learns it too.
    ``previous_versions`` are the earlier reports of this study that this one
    replaces (their UIDs suffice): the Predecessor Documents Sequence names them.
    """
    if not source_images:
        raise ValueError("the report needs the source images as evidence")
    check_patient_study_type2(source_images[:1])  # highdicom copies the patient and study from the first
    algorithm_id = algorithm.to_template()
    groups = _lesion_groups(lesions, segmentation, source_images, algorithm_id)
    report = (
        hd.sr.MeasurementReport(
            observation_context=_observation_context(equipment, device_observer_uid),
            procedure_reported=codes.CT_UNSPECIFIED_BODY_REGION,
            imaging_measurements=groups,
        )
        if groups
        else _report_without_measurements(equipment, device_observer_uid)
    )
    report[0].ContentSequence.append(_qualitative_evaluations(assessment, missing))
    evidence = [
        *source_images,
        *([segmentation] if segmentation is not None else []),
    ]
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        **equipment.as_kwargs(),
        series_description=series_description,
        content_qualification=hd.ContentQualificationValues.RESEARCH,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=list(previous_versions) or None,
    )


def _report_without_measurements(equipment: Equipment, device_observer_uid: str) -> hd.sr.ContentSequence:
    """Rows 1-4 of TID 1500 (title, language, observation context, procedure) and nothing else.

    highdicom 0.28's MeasurementReport insists on at least one Imaging
    Measurements group; a negative study has none (its call goes to
    Qualitative Evaluations), so its root container is made here with the
    same content items highdicom would use, and the title of a report without
    measurements (see the module's docstring).
    """
    root = hd.sr.ContainerContentItem(
        name=codes.REPORT_WITHOUT_MEASUREMENTS_TITLE, is_content_continuous=False, template_id="1500"
    )
    root.ContentSequence = hd.sr.ContentSequence(
        [
            *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
            *_observation_context(equipment, device_observer_uid),
            hd.sr.CodeContentItem(
                name=sr_codes.DCM.ProcedureReported,
                value=codes.CT_UNSPECIFIED_BODY_REGION,
                relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
            ),
        ]
    )
    return hd.sr.ContentSequence([root], is_root=True)


def _qualitative_evaluations(assessment: StudyAssessment, missing: Sequence[str] = ()) -> hd.sr.ContainerContentItem:
    """TID 1500 row 12: the study-level call (row 13, CODE) and its probability (row 14, TEXT).

    The probability is text because this container has no NUM row; it is
    written with the concept "Probability" so that it is still found by name.
    Its items are SEPARATE statements, not one running text (Continuity of
    Content): a viewer that shows a report as text (OHIF) then prints each
    with its concept name, "Intracranial hemorrhage: Absent".
    Each sentence of ``missing`` (a result object that could not be made, and
    why) follows as another row 14 TEXT item.
    """
    presence = codes.PRESENT if assessment.hemorrhage_present else codes.ABSENT
    container = hd.sr.ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        is_content_continuous=False,
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.CodeContentItem(
                name=codes.INTRACRANIAL_HEMORRHAGE,
                value=presence,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.TextContentItem(
                name=codes.PROBABILITY,
                value=f"{assessment.probability:.{PROBABILITY_DIGITS}g}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            *(
                hd.sr.TextContentItem(
                    name=codes.QUALITATIVE_EVALUATIONS,
                    value=sentence,
                    relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
                )
                for sentence in missing
            ),
        ]
    )
    return container


def _lesion_groups(
    lesions: Sequence[LesionMeasurement],
    segmentation: Dataset | None,
    source_images: Sequence[Dataset],
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations]:
    """Every lesion's TID 1411 segment group, then every lesion's TID 1501 outline group (row order)."""
    if not lesions:
        return []
    if segmentation is None:
        raise ValueError("lesion groups (TID 1411) reference a SEG segment: pass the segmentation")
    segments = _segments_by_number(segmentation, source_images)
    for lesion in lesions:
        if lesion.segment_number not in segments:
            raise ValueError(f"lesion {lesion.segment_number} has no segment of that number in the SEG")
        if "TrackingUID" not in segments[lesion.segment_number] or "TrackingID" not in segments[lesion.segment_number]:
            raise ValueError(
                f"segment {lesion.segment_number} has no TrackingID/TrackingUID: build the SEG from SegmentSpecs"
            )
        if lesion.key_slice_index >= len(source_images):
            raise ValueError(f"lesion {lesion.segment_number}'s key slice is not one of the source images")
    # The pipeline passes highdicom's own object; a Dataset read from a file is copied, not
    # turned into a Segmentation in the caller's hands.
    seg = hd.seg.Segmentation.from_dataset(segmentation, copy=not isinstance(segmentation, hd.seg.Segmentation))
    outlines = [
        _outline_group(lesion, segments[lesion.segment_number], seg, source_images, algorithm_id)
        for lesion in lesions
    ]
    volumetric = [
        _volumetric_group(
            lesion, segments[lesion.segment_number], segmentation, source_images[0].SeriesInstanceUID, algorithm_id
        )
        for lesion in lesions
    ]
    return [*volumetric, *outlines]


def _segments_by_number(segmentation: Dataset, source_images: Sequence[Dataset]) -> dict[int, Dataset]:
    """The Segment Sequence items of a BINARY SEG of the same study, by segment number."""
    if segmentation.SOPClassUID != SegmentationStorage:
        raise ValueError("segmentation must be a BINARY Segmentation Storage instance (not LABELMAP)")
    if segmentation.StudyInstanceUID != source_images[0].StudyInstanceUID:
        raise ValueError("the SEG and the source images must belong to the same study")
    return {int(item.SegmentNumber): item for item in segmentation.SegmentSequence}


def _observation_context(equipment: Equipment, device_observer_uid: str) -> hd.sr.ObservationContext:
    """TID 1002 with a device observer (TID 1004): the node made these observations."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_observer_uid,
        name=equipment.manufacturer_model_name,
        manufacturer_name=equipment.manufacturer,
        model_name=equipment.manufacturer_model_name,
        serial_number=equipment.device_serial_number,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=hd.sr.CodedConcept.from_code(codes.DEVICE_OBSERVER),
            observer_identifying_attributes=device,
        )
    )


def _tracking(segment: Dataset) -> hd.sr.TrackingIdentifier:
    """The lesion's tracking identifier and UID: both of its groups are one finding.

    The UID is the segment's (unique per lesion; it links the SR to the SEG).
    The identifier is the segment's name after :data:`VIEWER_TOOL_PREFIX`,
    e.g. "Cornerstone3DTools@^0.1.0:PlanarFreehandROI:ICH lesion 1".
    """
    return hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=VIEWER_TOOL_PREFIX + segment.TrackingID)


def _outline_group(
    lesion: LesionMeasurement,
    segment: Dataset,
    segmentation: hd.seg.Segmentation,
    source_images: Sequence[Dataset],
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 for one lesion: its area on the key slice, INFERRED FROM its outline there.

    The outline is a closed POLYLINE SELECTED FROM the key CT image; the area
    is the polygon's, in mm². The outline is written twice, as TID 300's
    INFERRED FROM under the area (TID 320) and as the group's "Image Region"
    (TID 1501 row 10c): OHIF rebuilds its own outline from the first, and draws
    the report's preview from the second; PixelMed, which checks every group
    beside a TID 1411 group against TID 1411, needs the second.

    A "Comment" (DCM 121106) names the lesion and states its volume: OHIF takes
    the name of a rebuilt measurement, the title of its row in the Measurements
    panel, from that item only (its other row lines are cornerstone's own area
    and maximum of the outline). The volume as a number is stated once, in the
    lesion's TID 1411 group; the caption repeats it in words.

    Why TID 1501 and not TID 1410: OHIF 3.13 lists in its panel only what it
    has rebuilt as its own tools (the report's drawings are "preview"
    annotations, which its measurement service skips). Its closed-outline
    reader (@cornerstonejs/adapters 5.x PlanarFreehandROI) looks for the
    outline inside the group's first NUM and, for a closed outline, reads the
    area from that NUM; a TID 1410 group, whose Image Region sits beside its
    measurements, fails there with or without measurements.
    """
    image = source_images[lesion.key_slice_index]
    outline = outer_outline(_segment_mask(segmentation, lesion, image.SOPInstanceUID))
    row_spacing, column_spacing = (float(v) for v in image.PixelSpacing)
    source = hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=image.SOPClassUID, referenced_sop_instance_uid=image.SOPInstanceUID
    )
    coordinates = hd.sr.CoordinatesForMeasurement(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=outline, source_image=source
    )
    area = hd.sr.Measurement(
        codes.AREA,
        polygon_area(outline) * row_spacing * column_spacing,
        codes.SQUARE_MILLIMETER,
        algorithm_id=algorithm_id,
        referenced_coordinates=[coordinates],
    )
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(segment),
        finding_type=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0]),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(codes.BRAIN)],
        measurements=[area],
    )
    group[0].ContentSequence.append(hd.sr.ImageRegion(hd.sr.GraphicTypeValues.POLYLINE, outline, source))
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=codes.COMMENT,
            value=lesion_caption(segment.TrackingID, lesion.volume_ml),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def lesion_caption(name: str, volume_ml: float) -> str:
    """The words a viewer shows for a lesion: its name and volume, e.g. "ICH lesion 1: 3.05 mL"."""
    return f"{name}: {volume_ml:.2f} mL"


def _segment_mask(segmentation: hd.seg.Segmentation, lesion: LesionMeasurement, sop_instance_uid: str) -> np.ndarray:
    """The lesion's segment on one source image, read from the SEG (an empty frame if it has none there)."""
    pixels = segmentation.get_pixels_by_source_instance(
        source_sop_instance_uids=[sop_instance_uid], segment_numbers=[lesion.segment_number]
    )
    mask = pixels[0, :, :, 0] > 0
    if not mask.any():
        raise ValueError(f"lesion {lesion.segment_number} has no voxel on its key slice {lesion.key_slice_index}")
    return mask


def _volumetric_group(
    lesion: LesionMeasurement,
    segment: Dataset,
    segmentation: Dataset,
    source_series_instance_uid: str,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one lesion, referencing its segment (not ``from_segmentation``: see NOTES.md)."""
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=lesion.segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(segment),
        referenced_segment=referenced_segment,
        finding_type=hd.sr.CodedConcept.from_dataset(segment.SegmentedPropertyTypeCodeSequence[0]),
        finding_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(codes.BRAIN)],
        measurements=_lesion_measurements(lesion, algorithm_id),
    )


def _lesion_measurements(
    lesion: LesionMeasurement, algorithm_id: hd.sr.AlgorithmIdentification
) -> list[hd.sr.Measurement]:
    """Volume, long axis, mean attenuation and (when the model gives one) certainty."""
    measurements = [
        hd.sr.Measurement(codes.VOLUME, lesion.volume_ml, codes.MILLILITER, algorithm_id=algorithm_id),
        hd.sr.Measurement(
            codes.LONG_AXIS, lesion.longest_axial_diameter_mm, codes.MILLIMETER, algorithm_id=algorithm_id
        ),
        hd.sr.Measurement(
            codes.ATTENUATION_COEFFICIENT,
            lesion.mean_hu,
            codes.HOUNSFIELD_UNIT,
            derivation=codes.MEAN,
            algorithm_id=algorithm_id,
        ),
    ]
    if lesion.confidence is not None:
        measurements.append(
            hd.sr.Measurement(
                codes.CERTAINTY_OF_FINDING, lesion.confidence, codes.NO_UNITS, algorithm_id=algorithm_id
            )
        )
    return measurements

