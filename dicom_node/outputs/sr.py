"""The TID 1500 Measurement Report (Comprehensive 3D SR) that states the result.

Structure (PS3.16 TID 1500), as built by highdicom:

* observation context (TID 1001/1002/1004): the node as a device observer;
* procedure reported: LOINC "CT unspecified body region" (CID 100; see codes);
* Imaging Measurements, in the order of TID 1500's rows (row 8, TID 1411, before
  row 9, TID 1501; PS3.16 chapter 6: an order-significant template's items are
  encoded in row order):
  - one group per lesion (TID 1411) that references its segment in our SEG
    (TID 1411 "Referenced Segment") and holds volume (mL), long axis (mm), mean
    attenuation (HU) and certainty of finding (unit "1");
  - always one study-level group (TID 1501), last: the qualitative evaluation
    "Intracranial hemorrhage: Present/Absent" and the study probability (unit "1").

A negative study gets the study-level group only. TID 1500 requires content in
Imaging Measurements, Derived Imaging Measurements or Qualitative Evaluations;
highdicom 0.28 implements only Imaging Measurements, so the study-level
statement is a TID 1501 group there, which is also where a viewer lists it next
to the lesion groups. Readers find it by its template (TID 1501) or tracking
identifier, not by position.

The report is PRELIMINARY and UNVERIFIED (PS3.3 C.17.2): no person has signed it.
Source images and the SEG are recorded in the Current Requested Procedure
Evidence Sequence (highdicom builds it from ``evidence``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import SegmentationStorage

from dicom_node.outputs import codes
from dicom_node.outputs.seg import AlgorithmInfo, Equipment, with_patient_study_type2

#: Human-readable tracking identifier of the study-level group (TID 4108).
STUDY_TRACKING_ID = "ICH study assessment"


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
    study_tracking_uid: str,
    series_instance_uid: str,
    series_number: int,
    series_description: str,
    sop_instance_uid: str,
    instance_number: int = 1,
    missing: Sequence[str] = (),
    previous_versions: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one study, referencing ``segmentation`` for each lesion.

    Each lesion group takes its tracking identifier and UID, and its finding
    type, from the segment it references, so the SR and the SEG name a lesion
    the same way and a subtype coded in the SEG is reported as such. Lesions
    therefore need the SEG; a negative study may pass ``segmentation=None``.

    ``missing`` are sentences saying which result object could not be made and
    why; each becomes a TEXT "Qualitative Evaluations" item of the study-level
    group (TID 1501), so the reader of the report learns it too.
    ``previous_versions`` are the earlier reports of this study that this one
    replaces (their UIDs suffice): the Predecessor Documents Sequence names them.
    """
    if not source_images:
        raise ValueError("the report needs the source images as evidence")
    algorithm_id = algorithm.to_template()
    groups: list[
        hd.sr.MeasurementsAndQualitativeEvaluations
        | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    ] = [*_lesion_groups(lesions, segmentation, source_images, algorithm_id)]
    groups.append(_study_group(assessment, algorithm_id, study_tracking_uid, missing))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(equipment, device_observer_uid),
        procedure_reported=codes.CT_UNSPECIFIED_BODY_REGION,
        imaging_measurements=groups,
    )
    evidence = [
        with_patient_study_type2(source_images[0]),
        *source_images[1:],
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


def _lesion_groups(
    lesions: Sequence[LesionMeasurement],
    segmentation: Dataset | None,
    source_images: Sequence[Dataset],
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1411 group per lesion, each bound to its segment of ``segmentation``."""
    if not lesions:
        return []
    if segmentation is None:
        raise ValueError("lesion groups (TID 1411) reference a SEG segment: pass the segmentation")
    segments = _segments_by_number(segmentation, source_images)
    groups = []
    for lesion in lesions:
        segment = segments.get(lesion.segment_number)
        if segment is None:
            raise ValueError(f"lesion {lesion.segment_number} has no segment of that number in the SEG")
        groups.append(
            _lesion_group(lesion, segment, segmentation, source_images[0].SeriesInstanceUID, algorithm_id)
        )
    return groups


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


def _study_group(
    assessment: StudyAssessment,
    algorithm_id: hd.sr.AlgorithmIdentification,
    study_tracking_uid: str,
    missing: Sequence[str] = (),
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: "Intracranial hemorrhage: Present/Absent" and the study probability,
    then one TEXT qualitative evaluation per missing result object (TID 1501's TEXT row)."""
    presence = codes.PRESENT if assessment.hemorrhage_present else codes.ABSENT
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=study_tracking_uid, identifier=STUDY_TRACKING_ID),
        finding_type=codes.INTRACRANIAL_HEMORRHAGE,
        algorithm_id=algorithm_id,
        finding_sites=[hd.sr.FindingSite(codes.BRAIN)],
        measurements=[
            hd.sr.Measurement(
                name=codes.PROBABILITY,
                value=assessment.probability,
                unit=codes.NO_UNITS,
                algorithm_id=algorithm_id,
            )
        ],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=codes.INTRACRANIAL_HEMORRHAGE, value=presence)
        ],
    )
    # highdicom's QualitativeEvaluation is CODE only; the TEXT row is appended to the group's container.
    for sentence in missing:
        group[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.QUALITATIVE_EVALUATIONS,
                value=sentence,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    return group


def _lesion_group(
    lesion: LesionMeasurement,
    segment: Dataset,
    segmentation: Dataset,
    source_series_instance_uid: str,
    algorithm_id: hd.sr.AlgorithmIdentification,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one lesion, referencing its segment (not ``from_segmentation``: see NOTES.md)."""
    if "TrackingUID" not in segment or "TrackingID" not in segment:
        raise ValueError(
            f"segment {lesion.segment_number} has no TrackingID/TrackingUID: build the SEG from SegmentSpecs"
        )
    referenced_segment = hd.sr.ReferencedSegment(
        sop_class_uid=segmentation.SOPClassUID,
        sop_instance_uid=segmentation.SOPInstanceUID,
        segment_number=lesion.segment_number,
        source_series=hd.sr.SourceSeriesForSegmentation(source_series_instance_uid),
    )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=segment.TrackingUID, identifier=segment.TrackingID),
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

