"""Real DICOM peers for tests: DCMTK's storescp as a destination."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage
from pynetdicom import AE

from tests.support.node import DCMTK_ENV, free_port

STORESCP = "/usr/bin/storescp"


@dataclass
class Arrived:
    """The result objects a destination holds for one study, by kind."""

    segs: list[Path]
    srs: list[Path]
    key_images: list[Path]

    @property
    def files(self) -> list[Path]:
        return self.segs + self.srs + self.key_images


class StoreSCP:
    """DCMTK storescp on a free loopback port, writing into a folder."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> StoreSCP:
        assert Path(STORESCP).exists(), "DCMTK storescp missing: install Debian's dcmtk"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            # --unique-filenames: a second copy of an object shows up as a second file.
            [STORESCP, "-aet", "DEST", "-od", str(self.folder), "+B", "+uf", str(self.port)],
            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"storescp exited with {self.process.returncode} (port {self.port} taken?)")
            ae = AE("PROBE")
            ae.add_requested_context("1.2.840.10008.1.1")
            assoc = ae.associate("127.0.0.1", self.port, ae_title="DEST")
            if assoc.is_established:
                assoc.release()
                return self
            time.sleep(0.1)
        self.stop()  # not left holding its port into the tests after this one
        raise AssertionError(f"storescp did not answer on port {self.port} within 10 s")

    def received(self) -> list[str]:
        """SOP Instance UIDs of every file received (a UID received twice is listed twice)."""
        return sorted(str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.files())

    def files(self) -> list[Path]:
        """The files storescp has finished writing.

        With ``+B`` storescp writes each object into its final file name as the PDUs arrive,
        and closes the file before it answers the C-STORE. A file it still holds open is
        half written: a test polling the folder would read a truncated object, or one
        without its Study Instance UID, and more often the more loaded the machine. The
        folder is listed before storescp's open files are read, so a file created after
        that read is not in the listing; names are unique (``+uf``), so none is reopened.
        """
        listed = [p for p in self.folder.iterdir() if p.is_file()]
        writing = self._open_files()
        return sorted(p for p in listed if p.resolve() not in writing)

    def _open_files(self) -> set[Path]:
        """The files storescp holds open now (from /proc; none once it has exited)."""
        if self.process is None:
            return set()
        held = set()
        try:
            descriptors = list(Path(f"/proc/{self.process.pid}/fd").iterdir())
        except FileNotFoundError:
            return set()
        for descriptor in descriptors:
            try:
                held.add(Path(os.readlink(descriptor)))
            except OSError:  # closed since the listing
                continue
        return held

    def results_of(self, study_instance_uid: str) -> Arrived:
        """Our SEG, SR and key images among the files received for the study (whole files only: see :meth:`files`)."""
        kinds: dict[str, list[Path]] = {
            SegmentationStorage: [], Comprehensive3DSRStorage: [], SecondaryCaptureImageStorage: []
        }
        for path in self.files():
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SOPClassUID"])
            if ds.get("StudyInstanceUID") == study_instance_uid and ds.get("SOPClassUID") in kinds:
                kinds[ds.SOPClassUID].append(path)
        return Arrived(kinds[SegmentationStorage], kinds[Comprehensive3DSRStorage], kinds[SecondaryCaptureImageStorage])

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


