"""The one upper-layer PDU the listener encodes itself: a P-DATA-TF carrying one whole command.

Why: the listener's plain C-STORE response (:mod:`dicom_node.dicom.dimse`) is written to the
socket by the association thread itself (``dicom_node.ingest.reactor``), without handing a
P-DATA primitive to pynetdicom's DUL thread to wrap in its ``P_DATA_TF`` object. PS3.8 9.3.5
and 9.3.5.1 fix the bytes: PDU type 04H, a reserved byte, the PDU length (4 bytes, big endian),
then one Presentation Data Value Item: its length (4 bytes, big endian, counting the context ID
and the value), the presentation context ID, and the value, here the message control header
03H (a command, its last fragment) and the command set. tests/unit/test_dimse.py checks these
bytes against pynetdicom's encoding of the same P-DATA.
"""

from __future__ import annotations

import struct

#: PDU type of a P-DATA-TF (PS3.8 Table 9-22).
P_DATA_TF_TYPE = 0x04
#: Message control header: a command fragment (bit 0), the last one (bit 1) (PS3.8 E.2).
LAST_COMMAND_FRAGMENT = 0x03

_HEAD = struct.Struct(">BxIIBB")  # PDU type, reserved, PDU length, item length, context ID, control header


def encode_command_pdu(context_id: int, command_set: bytes) -> bytes:
    """A P-DATA-TF holding ``command_set`` whole, as one PDV (the last command fragment).

    Raises ``struct.error`` for a context ID that does not fit its byte (outside 0 to 255).
    """
    item_length = 1 + 1 + len(command_set)  # context ID, control header, command set
    return _HEAD.pack(P_DATA_TF_TYPE, 4 + item_length, item_length, context_id, LAST_COMMAND_FRAGMENT) + command_set
