"""Results that replace earlier results of the same study (a study that grew after they went out).

Late images reopen a completed study; its next generation is analysed as a whole and
gets new objects in new series (new UIDs: the PACS keeps both). So that a reader can
tell which is current:

* the new SR names the earlier SR in its Predecessor Documents Sequence (PS3.3
  C.17.2.3: documents whose content this one wholly or partly includes);
* every new series description says "replaces" and the date of the results it
  replaces, within LO's 64 characters.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from pydicom.dataset import Dataset

#: LO (Series Description): at most 64 characters (PS3.5 6.2).
MAX_DESCRIPTION = 64


@dataclass(frozen=True)
class EarlierReport:
    """The SR of an earlier generation of the study, as the new SR references it."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str
    created_at: datetime  # when those results were made (UTC)

    def as_previous_version(self) -> Dataset:
        """The UIDs highdicom's ``previous_versions`` needs to build the Predecessor Documents Sequence."""
        reference = Dataset()
        reference.StudyInstanceUID = self.study_instance_uid
        reference.SeriesInstanceUID = self.series_instance_uid
        reference.SOPClassUID = self.sop_class_uid
        reference.SOPInstanceUID = self.sop_instance_uid
        return reference


def replacing_description(description: str, replaced_at: datetime) -> str:
    """``description`` saying it replaces the results of ``replaced_at``, in at most 64 characters.

    The longest wording that fits wins; the configured description itself is kept
    whole when it can be (it carries "RESEARCH USE ONLY"), and cut only as the last resort.
    """
    day, minute = f"{replaced_at:%Y-%m-%d}", f"{replaced_at:%Y-%m-%d %H:%M}"
    for suffix in (f" (replaces results of {minute})", f" (replaces {minute})", f" (replaces {day})"):
        if len(description) + len(suffix) <= MAX_DESCRIPTION:
            return description + suffix
    suffix = " (replaces earlier)"
    return description[: MAX_DESCRIPTION - len(suffix)].rstrip() + suffix
