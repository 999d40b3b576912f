"""The C-STORE-RSP command set, encoded directly: the one DIMSE message the listener sends per instance.

Why: pynetdicom turns a response primitive into a pydicom Dataset (each value validated as
it is set), encodes it once to learn its group length and once more to send it: about
0.3 ms of CPU for some 150 bytes, repeated for every instance received. The bytes are fixed
by PS3.7 (9.3.1.2 and E.1: the command set is always Implicit VR Little Endian, its elements
in tag order, UI values padded to even length with a NUL), so the common response (a status,
no Error Comment, no Offending Element) is packed here with ``struct``. Every other response
is left to pynetdicom. tests/unit/test_dimse.py checks these bytes against pynetdicom's own
encoding of the same primitive, so a difference fails there, not at a PACS.
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
