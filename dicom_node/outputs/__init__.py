"""The DICOM objects the node creates: SEG, TID 1500 SR and Secondary Capture key images.

Inputs are numpy arrays, the source images' pydicom Datasets (headers are
enough for SEG and SR) and small frozen dataclasses; nothing here knows about
models or tensors. Every UID is passed in by the caller, normally from
:class:`~dicom_node.outputs.uids.JobUids`, so that a resend of a job replaces
its objects instead of duplicating them.

All objects are marked research use: the series descriptions from config,
ContentQualification RESEARCH, and "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
in ContentDescription / ImageComments (and burned into the key images).
Patient and study attributes are copied from the source images, as DICOM
requires; they must never be logged.
"""

from dicom_node.outputs.common import RESEARCH_USE_DISCLAIMER, AlgorithmInfo, Equipment
from dicom_node.outputs.keyimages import build_key_images
from dicom_node.outputs.seg import SegmentSpec, build_segmentation
from dicom_node.outputs.sr import LesionMeasurement, StudyAssessment, build_report
from dicom_node.outputs.uids import JobUids, derived_uid, device_observer_uid

__all__ = [
    "RESEARCH_USE_DISCLAIMER",
    "AlgorithmInfo",
    "Equipment",
    "JobUids",
    "LesionMeasurement",
    "SegmentSpec",
    "StudyAssessment",
    "build_key_images",
    "build_report",
    "build_segmentation",
    "derived_uid",
    "device_observer_uid",
]
