"""The profile summary puts a sample where the README's per-instance split says it goes."""

from __future__ import annotations

import pytest

from tests.bench.profile import categorise

_HANDLER = "StorageSCP.on_store (dicom_node/ingest/scp.py:300);StorageSCP._store (dicom_node/ingest/scp.py:330)"


@pytest.mark.parametrize(
    ("leaf", "category"),
    [
        ("InstanceStore._publish (dicom_node/dicom/storage.py:299);_link_durably (dicom_node/dicom/storage.py:140);"
         "_fsync_file (dicom_node/dicom/storage.py:109);_fsync_path (dicom_node/dicom/storage.py:101)", "file fsync"),
        ("InstanceStore._publish (dicom_node/dicom/storage.py:299);_link_durably (dicom_node/dicom/storage.py:141);"
         "_fsync_path (dicom_node/dicom/storage.py:101)", "directory fsync"),
        ("InstanceStore._publish (dicom_node/dicom/storage.py:247)", "file publish (stat, link, rename, mkdir)"),
    ],
    ids=["the received file", "its directory", "the link"],
)
def test_the_file_and_its_directory_fsync_are_told_apart(leaf: str, category: str) -> None:
    assert categorise(f"thread (1): AcceptorThread;{_HANDLER};{leaf}") == category


def test_the_spooling_message_counts_as_writing_the_received_data_set() -> None:
    stack = ("thread (2): Thread-5 (run_reactor);DT_2 (pynetdicom/fsm.py:456);"
             "DIMSEServiceProvider.receive_primitive (pynetdicom/dimse.py:269);"
             "SpoolingMessage.decode_msg (dicom_node/ingest/reactor.py:250);_spool (dicom_node/ingest/reactor.py:280)")
    assert categorise(stack) == "pynetdicom: writing the received data set"
