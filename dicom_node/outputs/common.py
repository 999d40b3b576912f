"""What every object the node creates shares: who made it, and its patient/study attributes.

:class:`AlgorithmInfo` and :class:`Equipment` describe the algorithm and the device for
the SEG, the SR and the key images alike, and :func:`with_patient_study_type2` completes
the Type 2 Patient and General Study attributes highdicom copies from a source image.
They sit below :mod:`~dicom_node.outputs.seg`, :mod:`~dicom_node.outputs.sr` and
:mod:`~dicom_node.outputs.keyimages`, which import them from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_node.config import IdentitySettings
from dicom_node.outputs import codes

#: Shown by viewers in ContentDescription / ImageComments of everything we create.
RESEARCH_USE_DISCLAIMER = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
#: Type 2 Patient and General Study attributes (PS3.3 C.7.1.1, C.7.2.1) that
#: highdicom reads from the first source image without a default.
PATIENT_STUDY_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


@dataclass(frozen=True)
class AlgorithmInfo:
    """The algorithm that produced the result (PS3.3 C.8.20.2, TID 4019).

    ``family`` is a CID 7162 code: :data:`codes.ARTIFICIAL_INTELLIGENCE` for a
    trained model, :data:`codes.MORPHOLOGICAL_OPERATIONS` for the HU threshold
    baseline.
    """

    name: str
    version: str
    family: Code = codes.ARTIFICIAL_INTELLIGENCE

    def __post_init__(self) -> None:
        if not self.name or not self.version:
            raise ValueError("an algorithm needs a name and a version (Type 1 in PS3.3 C.8.20.2)")

    def to_sequence(self) -> hd.AlgorithmIdentificationSequence:
        """The Segmentation Algorithm Identification Sequence of a segment."""
        return hd.AlgorithmIdentificationSequence(
            name=self.name, family=self.family, version=self.version
        )

    def to_template(self) -> hd.sr.AlgorithmIdentification:
        """The TID 4019 Algorithm Identification of an SR measurement."""
        return hd.sr.AlgorithmIdentification(
            name=self.name, version=self.version, family=self.family
        )


@dataclass(frozen=True)
class Equipment:
    """How the node names itself (General / Enhanced General Equipment, PS3.3 C.7.5).

    :meth:`from_identity` fills it from ``[identity]`` and the software versions.
    ``device_serial_number`` is Type 1 in the Enhanced General Equipment module
    that the SEG IOD requires.
    """

    manufacturer: str
    manufacturer_model_name: str
    software_versions: str
    device_serial_number: str
    institution_name: str | None = None

    def __post_init__(self) -> None:
        for name in ("manufacturer", "manufacturer_model_name", "software_versions", "device_serial_number"):
            if not getattr(self, name):
                raise ValueError(f"{name} must not be empty (Type 1 in Enhanced General Equipment)")

    @classmethod
    def from_identity(cls, identity: IdentitySettings, *, software_versions: str) -> Equipment:
        """The node as configured in ``[identity]``; ``software_versions`` names dicom-node and the model."""
        return cls(
            manufacturer=identity.manufacturer,
            manufacturer_model_name=identity.manufacturer_model_name,
            software_versions=software_versions,
            device_serial_number=identity.device_serial_number,
            institution_name=identity.institution_name,
        )

    def as_kwargs(self) -> dict[str, str | None]:
        """The equipment arguments every highdicom SOP class constructor takes."""
        return {
            "manufacturer": self.manufacturer,
            "manufacturer_model_name": self.manufacturer_model_name,
            "software_versions": self.software_versions,
            "device_serial_number": self.device_serial_number,
            "institution_name": self.institution_name,
        }


def with_patient_study_type2(source: Dataset) -> Dataset:
    """``source``, or a copy of it with absent Type 2 patient/study attributes set empty.

    Type 2 means present but possibly empty; scanners still omit some of them,
    and highdicom 0.28.2 then fails with AttributeError. Our objects must carry
    them (empty is what the standard asks for when the value is unknown). The
    caller's dataset is never modified.

    Applied once, where the sources are prepared
    (:func:`dicom_node.outputs.sources.prepare_sources`); the builders only check
    (:func:`check_patient_study_type2`).
    """
    missing, empty_first = _incomplete(source)
    if not missing and not empty_first:
        return source
    charset = source.get("SpecificCharacterSet")
    # Dataset(source) would share the caller's element dict: copy the mapping.
    completed = Dataset(dict(source.items()))
    if hasattr(source, "file_meta"):
        completed.file_meta = source.file_meta
    for keyword in missing:
        setattr(completed, keyword, None)
    if empty_first:
        completed.SpecificCharacterSet = ["ISO 2022 IR 6", *list(charset)[1:]]  # type: ignore[arg-type]
    return completed


def check_patient_study_type2(source_images: Sequence[Dataset]) -> None:
    """Refuse sources that still need :func:`with_patient_study_type2`, naming what is missing.

    highdicom copies the patient and study from a source image and fails with an
    AttributeError on an absent Type 2 attribute; the builders say why instead.
    """
    for source in source_images:
        missing, empty_first = _incomplete(source)
        if missing or empty_first:
            what = ", ".join(missing) if missing else "SpecificCharacterSet with an empty first value"
            raise ValueError(
                f"a source image lacks Type 2 patient/study attributes ({what}; PS3.3 C.7.1.1, C.7.2.1): "
                "complete the sources with with_patient_study_type2 (prepare_sources does) first"
            )


def _incomplete(source: Dataset) -> tuple[list[str], bool]:
    """The absent Type 2 keywords, and whether SpecificCharacterSet's first value is empty."""
    missing = [keyword for keyword in PATIENT_STUDY_TYPE2 if keyword not in source]
    charset = source.get("SpecificCharacterSet")
    # PS3.3 C.12.1.1.2: an empty first value means the default repertoire, which ISO 2022
    # code extension spells "ISO 2022 IR 6"; highdicom 0.28.2 refuses the empty spelling.
    empty_first = isinstance(charset, list | tuple) or type(charset).__name__ == "MultiValue"
    empty_first = empty_first and len(charset) > 1 and not str(charset[0]).strip()  # type: ignore[arg-type]
    return missing, bool(empty_first)
