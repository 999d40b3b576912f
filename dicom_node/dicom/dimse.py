"""The bytes the listener writes for every instance, encoded directly: the C-STORE-RSP
command set, and the File Meta Information of the file a received data set is spooled to.

Why: pynetdicom turns a response primitive into a pydicom Dataset (each value validated as
it is set), encodes it once to learn its group length and once more to send it: about
0.3 ms of CPU for some 150 bytes, repeated for every instance received. The bytes are fixed
by PS3.7 (9.3.1.2 and E.1: the command set is always Implicit VR Little Endian, its elements
in tag order, UI values padded to even length with a NUL), so the common response (a status,
no Error Comment, no Offending Element) is packed here with ``struct``. Every other response
is left to pynetdicom. The same holds for the File Meta Information pynetdicom writes at the
head of each spooled data set (``create_file_meta`` and pydicom's ``write_file_meta_info``,
about 0.2 ms): PS3.10 7.1 fixes it (Explicit VR Little Endian, group length first).
tests/unit/test_dimse.py checks these bytes against pynetdicom's and pydicom's own encoding
of the same values, so a difference fails there, not at a PACS or in a stored file.
"""

from __future__ import annotations

import struct

#: Command Field of a C-STORE-RSP (PS3.7 Table 9.3-2).
C_STORE_RSP_COMMAND_FIELD = 0x8001
#: Command Data Set Type "no data set" (PS3.7 Table E.1-1).
NO_DATA_SET = 0x0101

_UL = struct.Struct("<HHII")  # group, element, length 4, value
_US = struct.Struct("<HHIH")  # group, element, length 2, value
_HEADER = struct.Struct("<HHI")  # group, element, length
_EXPLICIT_SHORT = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_EXPLICIT_LONG = struct.Struct("<HH2s2xI")  # group, element, VR, reserved, 32-bit length


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("latin-1")  # pydicom's default_encoding; raises beyond it, as pydicom would
    if len(value) % 2:
        value += b"\x00"
    return _HEADER.pack(0x0000, element, len(value)) + value


def encode_store_response(
    *, message_id_being_responded_to: int, sop_class_uid: str, sop_instance_uid: str, status: int
) -> bytes:
    """The command set of a C-STORE-RSP with no data set, no Error Comment, no Offending Element.

    Raises ``UnicodeEncodeError`` or ``struct.error`` for values that do not fit the encoding
    (the caller then leaves the message to pynetdicom).
    """
    body = b"".join(
        (
            _ui(0x0002, sop_class_uid),
            _US.pack(0x0000, 0x0100, 2, C_STORE_RSP_COMMAND_FIELD),
            _US.pack(0x0000, 0x0120, 2, message_id_being_responded_to),
            _US.pack(0x0000, 0x0800, 2, NO_DATA_SET),
            _US.pack(0x0000, 0x0900, 2, status),
            _ui(0x1000, sop_instance_uid),
        )
    )
    return _UL.pack(0x0000, 0x0000, 4, len(body)) + body


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
        return _EXPLICIT_LONG.pack(0x0002, element, vr, len(value)) + value
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    value = text.encode("latin-1")  # pydicom's default_encoding; raises beyond it, as pydicom would
    return value + pad if len(value) % 2 else value


def encode_file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """File Meta Information (group 0002) as pynetdicom's ``create_file_meta`` and pydicom's
    ``write_file_meta_info`` write it, without the preamble and ``DICM``.

    Raises ``UnicodeEncodeError`` for a value beyond pydicom's default encoding.
    """
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _explicit(0x0010, b"UI", _padded(transfer_syntax_uid, b"\x00")),
            _explicit(0x0012, b"UI", _padded(implementation_class_uid, b"\x00")),
            _explicit(0x0013, b"SH", _padded(implementation_version_name, b" ")),
        )
    )
    return _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body
