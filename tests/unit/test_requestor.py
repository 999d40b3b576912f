"""A requestor's reactor must not take the response its sender waits for (pydicom/pynetdicom#875)."""

from __future__ import annotations

import queue
from io import BytesIO

import pytest
from pydicom.uid import CTImageStorage, generate_uid
from pynetdicom.dimse_primitives import C_STORE

from dicom_node.dicom.requestor import ResponsesForSenders


def _request() -> C_STORE:
    message = C_STORE()
    message.MessageID = 1
    message.AffectedSOPClassUID = CTImageStorage
    message.AffectedSOPInstanceUID = generate_uid()
    message.Priority = 2
    message.DataSet = BytesIO(b"\x08\x00\x16\x00")  # pynetdicom checks that a data set is there, not what it holds
    return message


def _response() -> C_STORE:
    message = C_STORE()
    message.MessageIDBeingRespondedTo = 1
    message.AffectedSOPClassUID = CTImageStorage
    message.AffectedSOPInstanceUID = generate_uid()
    message.Status = 0x0000
    return message


def test_the_reactor_s_non_blocking_read_leaves_a_response_to_the_blocked_sender() -> None:
    messages = ResponsesForSenders()
    response = (1, _response())
    assert response[1].is_valid_response and not response[1].is_valid_request
    messages.put(response)
    with pytest.raises(queue.Empty):
        messages.get(block=False)  # the reactor's look: nothing for it
    assert messages.get(block=True, timeout=1) is response  # the sender's read


def test_the_reactor_still_takes_a_request_from_the_peer_and_an_abort_marker_stays() -> None:
    messages = ResponsesForSenders()
    request = (1, _request())
    assert request[1].is_valid_request
    messages.put(request)
    assert messages.get(block=False) is request
    messages.put((None, None))  # pynetdicom's "aborted" marker: for a waiting sender
    with pytest.raises(queue.Empty):
        messages.get(block=False)
    assert messages.get(block=True, timeout=1) == (None, None)
