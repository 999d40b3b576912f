"""What a UID may look like, decided in one place (PS3.5 9.1 and the UI value representation).

The node meets UIDs in three roles, and each gets one answer here:

- a UID it creates or is configured with (the UID root, derived result UIDs) must be valid:
  dot-separated decimal components without leading zeros, at most 64 characters. The
  pattern is pydicom's own (:data:`pydicom.uid.RE_VALID_UID`), applied with ``fullmatch``:
  ``UID(x).is_valid`` uses ``re.match`` with ``$``, which lets a trailing newline through,
  and warns on construction;
- a UID received from a peer is accepted when it is printable ASCII of at most 64
  characters. Real archives send UIDs with leading zeros (``1.2.840.099...``); refusing
  them would lose studies, and the value is only a key for us;
- a received UID names a file as it is only when it is plain (digits and dots, leading
  zeros tolerated); any other text is hashed by :mod:`dicom_node.dicom.storage`.
"""

from __future__ import annotations

import re

from pydicom.uid import RE_VALID_UID

#: PS3.5 9.1: at most 64 characters.
MAX_UID_LENGTH = 64

_RECEIVABLE = re.compile(r"[\x21-\x7e]{1,64}")
_PLAIN = re.compile(r"[0-9]+(\.[0-9]+)*")


def is_valid_uid(uid: str) -> bool:
    """True when ``uid`` is a valid UID (PS3.5 9.1): what every UID the node makes must be."""
    return len(uid) <= MAX_UID_LENGTH and RE_VALID_UID.fullmatch(uid) is not None


def is_valid_uid_root(root: str) -> bool:
    """True when ``root`` is valid UID syntax, with or without a final dot.

    No length rule: how much room a root must leave depends on what is appended to it.
    """
    return RE_VALID_UID.fullmatch(root.removesuffix(".")) is not None


def is_receivable_uid(text: str) -> bool:
    """True when a UID received from a peer can key an instance (see the module docstring)."""
    return _RECEIVABLE.fullmatch(text) is not None


def is_plain_uid(uid: str) -> bool:
    """True when ``uid`` is digits and dots only, at most 64 characters: safe as a file name."""
    return len(uid) <= MAX_UID_LENGTH and _PLAIN.fullmatch(uid) is not None
