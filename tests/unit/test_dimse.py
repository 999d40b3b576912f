"""What the listener packs itself (the C-STORE-RSP, a spooled file's File Meta) is byte for byte
what pynetdicom and pydicom would write."""

from __future__ import annotations

import warnings
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION, _config, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.dicom.dimse import encode_file_meta, encode_store_response
from dicom_node.dicom.pdu import encode_command_pdu
from dicom_node.ingest.reactor import STANDARD_LOG_HANDLERS, PromptDIMSE, make_prompt, spooling_message

CT = "1.2.840.10008.5.1.4.1.1.2"


def _response(message_id: int, sop_instance_uid: str, status: int, **optional: Any) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    for keyword, value in optional.items():
        setattr(primitive, keyword, value)
    return primitive


class _Recorder:
    """Stands in for the DUL: keeps what would be queued for the peer, and what would be
    written at once (``send_at_once``, which it accepts only when told to)."""

    def __init__(self, writes_at_once: bool = False) -> None:
        self.sent: list[list[tuple[int, bytes]]] = []
        self.primitives: list[P_DATA] = []
        self.written: list[bytes] = []
        self._writes_at_once = writes_at_once

    def send_pdu(self, primitive: Any) -> None:
        self.primitives.append(primitive)
        self.sent.append([(context_id, bytes(data)) for context_id, data in primitive.presentation_data_value_list])

    def send_at_once(self, pdu: bytes) -> bool:
        if self._writes_at_once:
            self.written.append(pdu)
        return self._writes_at_once


def _sending(provider_class: type[DIMSEServiceProvider], primitive: Any, max_pdu: int, recorder: _Recorder) -> _Recorder:
    assoc = Association(AE(), MODE_ACCEPTOR)
    for event, handler in STANDARD_LOG_HANDLERS:  # bound by default; PromptDIMSE leaves to pynetdicom while they are
        assoc.unbind(event, handler)
    assoc.requestor.maximum_length = max_pdu
    assoc.dimse.__class__ = provider_class
    assoc.dul = recorder  # type: ignore[assignment]
    assoc.dimse.send_msg(primitive, 3)
    return recorder


def _sent_by(provider_class: type[DIMSEServiceProvider], primitive: Any, max_pdu: int = 16384) -> list[list[tuple[int, bytes]]]:
    return _sending(provider_class, primitive, max_pdu, _Recorder()).sent


@pytest.mark.parametrize(
    ("message_id", "sop_instance_uid", "status"),
    [
        (1, "1.2.3.4", 0x0000),  # even length
        (65535, "1.2.826.0.1.3680043.8.498." + "1" * 37, 0x0000),  # odd length: 63
        (7, "1.2.3", 0xB000),  # odd length, a warning status
    ],
)
def test_the_packed_response_is_what_pynetdicom_sends(message_id: int, sop_instance_uid: str, status: int) -> None:
    expected = _sent_by(DIMSEServiceProvider, _response(message_id, sop_instance_uid, status))
    assert _sent_by(PromptDIMSE, _response(message_id, sop_instance_uid, status)) == expected
    # and the command set alone, as pynetdicom decodes it back
    [[(_, pdv)]] = expected
    assert pdv[1:] == encode_store_response(
        message_id_being_responded_to=message_id, sop_class_uid=CT, sop_instance_uid=sop_instance_uid, status=status
    )
    assert pdv[0] == 0x03  # the last (and only) fragment of a command


@pytest.mark.parametrize(
    ("message_id", "sop_instance_uid", "status"),
    [(1, "1.2.3.4", 0x0000), (65535, "1.2.826.0.1.3680043.8.498." + "1" * 37, 0x0000), (7, "1.2.3", 0xB000)],
)
def test_the_pdu_written_at_once_is_what_pynetdicoms_dul_thread_writes(message_id: int, sop_instance_uid: str, status: int) -> None:
    queued = _sending(DIMSEServiceProvider, _response(message_id, sop_instance_uid, status), 16384, _Recorder())
    expected = [P_DATA_TF(primitive).encode() for primitive in queued.primitives]  # what DT-1 writes for each
    at_once = _sending(PromptDIMSE, _response(message_id, sop_instance_uid, status), 16384, _Recorder(writes_at_once=True))
    assert at_once.written == expected
    assert at_once.sent == []  # written, not also queued


@pytest.mark.parametrize("context_id", [1, 127, 255])
def test_a_command_pdu_is_pynetdicoms_p_data_tf(context_id: int) -> None:
    command = encode_store_response(message_id_being_responded_to=1, sop_class_uid=CT, sop_instance_uid="1.2.3", status=0)
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
    assert encode_command_pdu(context_id, command) == P_DATA_TF(pdata).encode()


@pytest.mark.parametrize(
    ("sop_instance_uid", "status", "optional"),
    [
        ("1.2.3", 0xA900, {"ErrorComment": "dataset SOP Class differs"}),
        ("1.2.3", 0xC000, {"OffendingElement": [0x00080018]}),
    ],
    ids=["error comment", "offending element"],
)
def test_anything_but_a_plain_response_is_left_to_pynetdicom(
    sop_instance_uid: str, status: int, optional: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    primitive = _response(1, sop_instance_uid, status, **optional)
    calls = []
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", lambda self, p, c: calls.append(p))
    _sent_by(PromptDIMSE, primitive)
    assert calls == [primitive]


def test_a_uid_beyond_pydicoms_default_encoding_is_left_to_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        primitive = _response(1, "1.2.\u2026", 0x0000)
    calls = []
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", lambda self, p, c: calls.append(p))
    _sent_by(PromptDIMSE, primitive)
    assert calls == [primitive]


def test_a_request_or_another_service_is_left_to_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo = 1
    echo.Status = 0
    calls = []
    monkeypatch.setattr(DIMSEServiceProvider, "send_msg", lambda self, p, c: calls.append(p))
    for primitive in (request, echo):
        _sent_by(PromptDIMSE, primitive)
    assert calls == [request, echo]


def test_a_peer_pdu_too_small_for_the_command_gets_pynetdicom_fragments() -> None:
    primitive = _response(1, "1.2.3.4", 0x0000)
    assert _sent_by(PromptDIMSE, primitive, max_pdu=64) == _sent_by(DIMSEServiceProvider, primitive, max_pdu=64)
    assert len(_sent_by(PromptDIMSE, primitive, max_pdu=64)) > 1


def test_someone_bound_to_dimse_sent_gets_pynetdicom_message(monkeypatch: pytest.MonkeyPatch) -> None:
    assoc = Association(AE(), MODE_ACCEPTOR)
    make_prompt(assoc)
    seen: list[Any] = []
    assoc.bind(evt.EVT_DIMSE_SENT, lambda event: seen.append(event.message))
    assoc.requestor.maximum_length = 16384
    assoc.dul = _Recorder()  # type: ignore[assignment]
    assoc.dimse.send_msg(_response(1, "1.2.3.4", 0x0000), 1)
    assert [type(message) for message in seen] == [C_STORE_RSP]


# ------------------------------------------------------------------ the spooled file's File Meta


@pytest.mark.parametrize(
    "sop_instance_uid",
    ["1.2.3", "1.2.34", "1." + "9" * 63, "../../../tmp/x", "1.2 .4", "\xe9\xff"],
    ids=["odd", "even", "65 characters", "a path", "a space", "latin-1"],
)
def test_the_packed_file_meta_is_what_pydicom_writes(sop_instance_uid: str) -> None:
    with warnings.catch_warnings():  # pydicom warns about the odd UIDs the hostile senders use
        warnings.simplefilter("ignore", UserWarning)
        meta = create_file_meta(sop_class_uid=CT, sop_instance_uid=sop_instance_uid, transfer_syntax=ExplicitVRLittleEndian)
        expected = BytesIO()
        write_file_meta_info(expected, meta)
    assert encode_file_meta(
        sop_class_uid=CT,
        sop_instance_uid=sop_instance_uid,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        implementation_class_uid=PYNETDICOM_IMPLEMENTATION_UID,
        implementation_version_name=PYNETDICOM_IMPLEMENTATION_VERSION,
    ) == expected.getvalue()


def _store_request_pdata(dataset: bytes, max_pdu: int) -> list[P_DATA]:
    """The P-DATA primitives a peer sends for one C-STORE-RQ, as pynetdicom encodes them."""
    request = C_STORE()
    request.MessageID = 5
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.7"
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return list(message.encode_msg(1, max_pdu))


@pytest.mark.parametrize("max_pdu", [0, 16384, 64], ids=["one PDU", "16 KiB PDUs", "command in fragments"])
def test_a_spooled_data_set_is_the_file_pynetdicom_writes(max_pdu: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", True)
    assoc = SimpleNamespace(_accepted_cx={1: SimpleNamespace(transfer_syntax=[ExplicitVRLittleEndian])})
    dataset = bytes(range(256)) * 200
    files = []
    for make in (DIMSEMessage, spooling_message):
        message = make()
        done = [message.decode_msg(pdata, assoc) for pdata in _store_request_pdata(dataset, max_pdu)]  # type: ignore[arg-type]
        assert done[-1] and not any(done[:-1])
        assert type(message) is C_STORE_RQ
        message._data_set_file.close()
        files.append(message._data_set_path.read_bytes())
        message._data_set_path.unlink()
    assert files[1] == files[0]
    assert files[0].endswith(dataset)
