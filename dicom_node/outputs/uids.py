"""Deterministic UIDs: the same job always gets the same UIDs, so a resend replaces.

A PACS keys every object on its SOP Instance UID. If a job is retried, or its
results are sent again after a fix, random UIDs would store a second copy of
every SEG, SR and key image next to the first. Deriving each UID from a hash
of what identifies the object (the job key and the object's kind and number)
under our organisation's root makes the resend an update of the same
instances instead.

Validity follows PS3.5 section 9.1: components are digits without leading
zeros (a lone ``0`` is allowed), separated by dots, at most 64 characters in all
(:func:`dicom_node.uid_syntax.is_valid_uid`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from dicom_node.uid_syntax import MAX_UID_LENGTH, is_valid_uid_root

#: Fewer hash digits than this would make collisions between jobs plausible.
MIN_HASH_DIGITS = 20

#: The object kinds, spelled as in ``dicom_node.config.OutputKind``.
SEG = "seg"
SR = "sr"
KEY_IMAGES = "key_images"


def derived_uid(uid_root: str, *parts: str) -> str:
    """A UID under ``uid_root`` that depends only on ``parts``.

    The parts are hashed with SHA-256, each one length-prefixed so that
    ``("ab", "c")`` and ``("a", "bc")`` differ. The hash, read as a decimal
    number, is cut to the digits left under 64 characters; a decimal number
    never has a leading zero, so the last component is valid. ``uid_root`` may
    end with a dot (as :class:`dicom_node.config.IdentitySettings` normalises
    it) or not.
    """
    if not parts:
        raise ValueError("a derived UID needs at least one part, e.g. the job key and object kind")
    if not is_valid_uid_root(uid_root):
        raise ValueError(
            "a UID root is dot-separated digits without leading zeros (PS3.5 9.1)"
        )
    prefix = uid_root if uid_root.endswith(".") else uid_root + "."
    digits = MAX_UID_LENGTH - len(prefix)
    if digits < MIN_HASH_DIGITS:
        raise ValueError(
            f"the UID root leaves {digits} digits under the 64-character limit; "
            f"at least {MIN_HASH_DIGITS} are needed to keep derived UIDs unique"
        )
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "big"))
        digest.update(encoded)
    number = int.from_bytes(digest.digest(), "big") % 10**digits
    return f"{prefix}{number}"


def device_observer_uid(uid_root: str) -> str:
    """The Device Observer UID of this node (TID 1004), the same for every job.

    It names the device that made the report, not the report, so it must not
    depend on the job.
    """
    return derived_uid(uid_root, "device-observer")


@dataclass(frozen=True)
class JobUids:
    """Every UID the objects of one job need, derived from the job key.

    ``job_key`` must identify the result, not the attempt: e.g. the study's
    Study Instance UID, the selected series and the model name and version, so
    that a retry of the same job reuses the UIDs, while a new model version gets
    new ones.
    """

    uid_root: str
    job_key: str

    def __post_init__(self) -> None:
        if not self.job_key:
            raise ValueError("job_key must not be empty: it is what makes the UIDs of a job unique")
        derived_uid(self.uid_root, self.job_key)  # validates the root once, up front

    def series(self, kind: str) -> str:
        """Series Instance UID of the ``kind`` series (``seg``, ``sr``, ``key_images``)."""
        return derived_uid(self.uid_root, self.job_key, kind, "series")

    def instance(self, kind: str, number: int = 1) -> str:
        """SOP Instance UID of instance ``number`` (1-based) of the ``kind`` series."""
        if number < 1:
            raise ValueError("instance numbers start at 1")
        return derived_uid(self.uid_root, self.job_key, kind, "instance", str(number))

    def dimension_organization(self, kind: str) -> str:
        """Dimension Organization UID of the ``kind`` multi-frame object (the SEG)."""
        return derived_uid(self.uid_root, self.job_key, kind, "dimension-organization")

    def tracking(self, segment_number: int) -> str:
        """Tracking UID of a segment, shared by the SEG segment and its SR measurement group."""
        if segment_number < 1:
            raise ValueError("segment numbers start at 1 (PS3.3 C.8.20.2)")
        return derived_uid(self.uid_root, self.job_key, "tracking", str(segment_number))


def frame_of_reference_uid(uid_root: str, series_instance_uid: str) -> str:
    """The Frame of Reference UID we give a source series that was sent without one.

    Derived from the series alone (not the job), so every job and generation of
    that series, and each of its objects (SEG, SR, key images), names the same
    frame of reference: the one the series' own positions were measured in.
    """
    return derived_uid(uid_root, "frame-of-reference", series_instance_uid)
