"""Orthanc as a real peer for tests and benchmarks: a throwaway PACS on loopback.

:class:`Orthanc` writes a temporary JSON configuration (free loopback DICOM and HTTP
ports, storage and index under a work directory, no plugins, no authentication,
HTTP reachable from loopback only), starts ``/usr/sbin/Orthanc`` with
``TCP_NODELAY=1`` (Debian's Orthanc stalls about 80 ms per C-STORE without it; see
../shared/NOTES.md), waits a bounded time for ``GET /system`` and a C-ECHO, and
stops it again. Its small REST helpers use only :mod:`urllib`.

Orthanc 1.10.1 API details these helpers rely on:

- ``POST /instances`` with a Part 10 file as the body answers
  ``{"ID", "ParentPatient", "ParentStudy", "ParentSeries", "Path", "Status"}``;
  ``Status`` is ``"Success"`` or ``"AlreadyStored"``.
- ``POST /modalities/{name}/store`` takes either one Orthanc ID as a bare string or
  ``{"Resources": [...], "Synchronous": true}``. Synchronous is the default: the call
  returns after the last C-STORE with ``{"InstancesCount", "FailedInstancesCount", ...}``
  and answers HTTP 500 if the association or a C-STORE fails.
- Orthanc IDs are hashes of the DICOM UIDs; ``POST /tools/lookup`` maps a UID to them
  (the body is the bare UID; a JSON-quoted UID silently matches nothing).

Usage::

    with Orthanc(tmp_path / "orthanc", modalities={"node": ("DICOMNODE", "127.0.0.1", 11112)}) as pacs:
        study_id = pacs.upload_files(paths)[0]["ParentStudy"]
        pacs.store_to_modality("node", [study_id])
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.node import echo_ok, free_port, terminate

ORTHANC = Path("/usr/sbin/Orthanc")
ORTHANC_AE = "ORTHANC"
HTTP_TIMEOUT_S = 300.0  # a synchronous store of a large study can take a while


class OrthancError(RuntimeError):
    """Orthanc did not start, exited, or answered a REST call with an error."""


def require_orthanc() -> Path:
    """The Orthanc binary, or a failure that says how to get it (never a skip)."""
    if not ORTHANC.exists():
        raise AssertionError(
            f"Orthanc missing: {ORTHANC} not found; install Debian's orthanc package "
            "(apt-get install orthanc; it need not run as a service)"
        )
    return ORTHANC


class Orthanc:
    """One Orthanc process on loopback with its own configuration, storage and index.

    ``modalities`` maps a name (used in ``/modalities/{name}/...``) to
    ``(AE title, host, port)`` of the DICOM peers Orthanc may send to.
    ``settings`` are merged over the defaults of :meth:`configuration`.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        ae_title: str = ORTHANC_AE,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        name: str = "dicom-node-test",
        settings: Mapping[str, Any] | None = None,
        dicom_port: int | None = None,
        http_port: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.ae_title = ae_title
        self.modalities = dict(modalities or {})
        self.name = name
        self.settings = dict(settings or {})
        self.dicom_port = dicom_port or free_port()
        self.http_port = http_port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def log_path(self) -> Path:
        return self.workdir / "orthanc.log"

    def configuration(self) -> dict[str, Any]:
        """The JSON configuration Orthanc is started with."""
        config: dict[str, Any] = {
            "Name": self.name,
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "SyncStorageArea": True,
            "Plugins": [],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {name: list(peer) for name, peer in self.modalities.items()},
        }
        config.update(self.settings)
        return config

    def start(self, timeout_s: float = 60.0) -> Orthanc:
        """Write the configuration, start Orthanc and wait for its HTTP and DICOM servers."""
        binary = require_orthanc()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.configuration(), indent=2), encoding="utf-8")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), str(self.config_path)],
                stdout=log,
                stderr=log,
                env={**os.environ, "TCP_NODELAY": "1"},
                cwd=self.workdir,
            )
        deadline = time.monotonic() + timeout_s
        self._wait(lambda: self._system() is not None, deadline, "GET /system")
        self._wait(lambda: echo_ok(self.dicom_port, "PROBE", self.ae_title), deadline, "C-ECHO")
        return self

    def _system(self) -> Any:
        try:
            return self.get_json("/system", timeout_s=2)
        except OrthancError:
            return None

    def _wait(self, ready: Any, deadline: float, what: str) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise OrthancError(f"Orthanc exited with {self.process.returncode} before {what}:\n{self.log_tail()}")
            if ready():
                return
            time.sleep(0.2)
        raise OrthancError(f"Orthanc did not answer {what} in time:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; safe to call when not started or already gone."""
        if self.process is not None:
            terminate(self.process)

    def __enter__(self) -> Orthanc:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:]) or "(no log)"

    # -- REST ----------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        content_type: str = "application/json",
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> bytes:
        """One HTTP call; the response body, or :class:`OrthancError` with Orthanc's answer."""
        request = urllib.request.Request(self.base_url + path, data=body, method=method)
        if body is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return bytes(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise OrthancError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise OrthancError(f"{method} {path}: {exc}") from exc

    def get_json(self, path: str, *, timeout_s: float = HTTP_TIMEOUT_S) -> Any:
        return json.loads(self.request("GET", path, timeout_s=timeout_s))

    def post_json(self, path: str, payload: Any) -> Any:
        return json.loads(self.request("POST", path, json.dumps(payload).encode("utf-8")))

    def upload_instance(self, data: bytes | Path) -> dict[str, Any]:
        """``POST /instances`` with one Part 10 file; Orthanc's answer (``ID``, ``ParentStudy``, ...)."""
        body = data.read_bytes() if isinstance(data, Path) else data
        answer = json.loads(self.request("POST", "/instances", body, content_type="application/dicom"))
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise OrthancError(f"POST /instances: {answer}")
        return dict(answer)

    def upload_files(self, paths: Iterable[Path]) -> list[dict[str, Any]]:
        return [self.upload_instance(path) for path in paths]

    def store_to_modality(self, modality: str, resources: list[str], *, synchronous: bool = True) -> dict[str, Any]:
        """C-STORE Orthanc resources (patients, studies, series or instances) to a modality.

        Synchronous: returns once every instance is acknowledged, with Orthanc's
        ``InstancesCount`` and ``FailedInstancesCount``.
        """
        answer = self.post_json(f"/modalities/{modality}/store", {"Resources": resources, "Synchronous": synchronous})
        if synchronous and int(answer.get("FailedInstancesCount", 0)):
            raise OrthancError(f"store to {modality}: {answer}")
        return dict(answer)

    def lookup_study(self, study_instance_uid: str) -> str | None:
        """The Orthanc ID of the study with this StudyInstanceUID, or None.

        ``/tools/lookup`` wants the bare UID as the body: a JSON-quoted string matches nothing.
        """
        body = study_instance_uid.encode("ascii")
        matches = json.loads(self.request("POST", "/tools/lookup", body, content_type="text/plain"))
        return next((str(m["ID"]) for m in matches if m.get("Type") == "Study"), None)

    def studies(self) -> list[str]:
        return [str(i) for i in self.get_json("/studies")]

    def study_series(self, study_id: str) -> list[dict[str, Any]]:
        """Every series of a study, each with ``ID``, ``MainDicomTags`` and ``Instances``."""
        return list(self.get_json(f"/studies/{study_id}/series"))

    def instance_file(self, instance_id: str) -> bytes:
        """``GET /instances/{id}/file``: the Part 10 file as Orthanc stored it."""
        return self.request("GET", f"/instances/{instance_id}/file")

    def instance_dataset(self, instance_id: str) -> Dataset:
        return dcmread(BytesIO(self.instance_file(instance_id)))

    def statistics(self) -> dict[str, Any]:
        return dict(self.get_json("/statistics"))
