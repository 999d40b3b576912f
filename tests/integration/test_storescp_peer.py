"""The storescp test peer reports an object only once storescp has written all of it.

storescp (``+B``) writes each object into its final file name while the PDUs arrive, so a
test that polls the folder during a delivery can read half a file; on a loaded CI machine
more often than here. :meth:`StoreSCP.files` must leave such a file out until it is whole.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.support.peers import StoreSCP

FRAMES, ROWS, COLUMNS = 24, 1024, 1024  # 48 MiB: its transfer lasts long enough to be seen half-way


def _big_ct(path: Path) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID = "CT", "PEER0001"
    ds.Rows, ds.Columns, ds.NumberOfFrames = ROWS, COLUMNS, FRAMES
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.arange(FRAMES * ROWS * COLUMNS, dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def _send(port: int, path: Path, statuses: list[int]) -> None:
    ae = AE("TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="DEST")
    assert assoc.is_established
    try:
        statuses.append(int(assoc.send_c_store(path).Status))
    finally:
        assoc.release()


def test_a_file_storescp_is_still_writing_is_not_reported(tmp_path: Path) -> None:
    sent = _big_ct(tmp_path / "big.dcm")
    pacs = StoreSCP(tmp_path / "pacs").start()
    statuses: list[int] = []
    sender = threading.Thread(target=_send, args=(pacs.port, tmp_path / "big.dcm", statuses))
    try:
        sender.start()
        seen_half_written = 0
        while sender.is_alive():
            on_disk = [p for p in pacs.folder.iterdir() if p.is_file()]
            reported = pacs.files()
            if on_disk and sender.is_alive() and not reported:
                seen_half_written += 1
            for path in reported:  # whatever is reported is whole
                assert len(dcmread(path).PixelData) == len(sent.PixelData)
        sender.join()
        assert statuses == [0]
        assert seen_half_written > 0, "the transfer was never seen half-way; make the object bigger"
        [whole] = pacs.files()
        assert dcmread(whole).PixelData == sent.PixelData
    finally:
        sender.join(60)
        pacs.stop()
