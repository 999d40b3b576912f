"""The built OHIF viewer over Orthanc DICOMweb in headless Chromium, on loopback, for tests and the README.

Pieces, each pinned in the repository:

* the viewer: ``npm pack @ohif/app`` at the version and sha512 in
  ``tests/interop/ohif/ohif-pin.json``; its ``package/dist`` is the built app;
* the browser driver: puppeteer-core from ``tests/interop/ohif/package.json``
  and its lockfile, installed with ``PUPPETEER_SKIP_DOWNLOAD=1`` (it drives
  Debian's ``/usr/bin/chromium``; no browser is downloaded);
* Orthanc with Debian's DICOMweb plugin on loopback ports, and
  :class:`~tests.support.viewer_server.ViewerServer` in front of it.

:func:`open_pages` runs ``drive_ohif.mjs`` with a plan of pages and returns
what it reported; the screenshots land in the plan's folder. Chromium gets
WebGL2 from SwiftShader by itself, so this runs on CPU-only machines.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.support import npm
from tests.support.interop_objects import WrittenResults
from tests.support.orthanc import Orthanc
from tests.support.viewer_server import ViewerServer

OHIF_DIR = Path(__file__).resolve().parents[1] / "interop" / "ohif"
DRIVER = "drive_ohif.mjs"
CHROMIUM = Path("/usr/bin/chromium")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
#: The whole browser run; the test's own bound (3 minutes) is above it.
DRIVER_TIMEOUT_S = 160


@dataclass(frozen=True)
class StudyInViewer:
    """The UIDs a viewer URL needs for one study loaded into Orthanc."""

    results: WrittenResults
    study: str
    ct_series: str
    seg_series: str
    sr_series: str
    key_image_series: str

    def url(self, series: str | None = None) -> str:
        """``/viewer?StudyInstanceUIDs=...`` (OHIF's default mode), opening ``series`` first."""
        query = f"StudyInstanceUIDs={self.study}"
        return f"/viewer?{query}&initialSeriesInstanceUID={series}" if series else f"/viewer?{query}"


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium; tests/run-all.sh does)")
    return CHROMIUM


def ohif_dist() -> Path:
    """The built viewer, unpacked from the pinned npm tarball."""
    pin = json.loads((OHIF_DIR / "ohif-pin.json").read_text(encoding="utf-8"))
    dist = npm.packed_package(pin["package"], pin["integrity"]) / "dist"
    if not (dist / "index.html").is_file():
        pytest.fail(f"{pin['package']} has no dist/index.html: not the built viewer this test expects")
    return dist


def driver_dir() -> Path:
    """puppeteer-core installed (without a browser of its own), with the driver script next to it."""
    target = npm.locked_packages(OHIF_DIR, env={"PUPPETEER_SKIP_DOWNLOAD": "1"})
    shutil.copy2(OHIF_DIR / DRIVER, target / DRIVER)
    return target


@contextmanager
def ohif_over_orthanc(workdir: Path) -> Iterator[tuple[Orthanc, ViewerServer]]:
    """Orthanc with DICOMweb on loopback and the viewer served in front of it."""
    if not DICOMWEB_PLUGIN.exists():
        pytest.fail(f"{DICOMWEB_PLUGIN} not found: install Debian's orthanc-dicomweb")
    dist = ohif_dist()
    settings = {
        "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "WadoRoot": "/wado"},
    }
    with Orthanc(workdir / "orthanc", settings=settings) as orthanc, ViewerServer(dist, orthanc.http_port) as server:
        yield orthanc, server


def load_study(orthanc: Orthanc, results: WrittenResults) -> StudyInViewer:
    """Upload the CT and every result object; the UIDs to open them with."""
    for path in (*results.ct, results.seg, results.sr, *results.key_images):
        orthanc.upload_instance(path)

    def series_of(path: Path) -> str:
        return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)

    return StudyInViewer(
        results=results,
        study=str(results.case.source_images[0].StudyInstanceUID),
        ct_series=str(results.case.source_images[0].SeriesInstanceUID),
        seg_series=series_of(results.seg),
        sr_series=series_of(results.sr),
        key_image_series=series_of(results.key_images[0]),
    )


def lesion_spheres(results: WrittenResults) -> list[dict[str, Any]]:
    """The planted lesions (patient mm) as the driver takes them."""
    return [{"center": list(lesion.center_mm), "radius": lesion.radius_mm} for lesion in results.case.spec.lesions]


def open_pages(server: ViewerServer, pages: Sequence[dict[str, Any]], out_dir: Path) -> dict[str, Any]:
    """Run the driver over ``pages``; its report, with each page's result under ``pages``."""
    chromium = require_chromium()
    driver = driver_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"baseUrl": server.base_url, "outDir": str(out_dir), "chromium": str(chromium), "pages": list(pages)}
    plan_path = out_dir / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1), encoding="utf-8")
    try:
        completed = subprocess.run(
            [npm.tool("node"), str(driver / DRIVER), str(plan_path)],
            capture_output=True,
            text=True,
            timeout=DRIVER_TIMEOUT_S,
            check=False,
            cwd=driver,
            env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the viewer did not finish within {DRIVER_TIMEOUT_S} s (screenshots so far in {out_dir})")
    if completed.returncode != 0:
        pytest.fail(f"{DRIVER} could not drive Chromium:\n{completed.stderr[-4000:]}")
    report = dict(json.loads(completed.stdout))
    (out_dir / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    report["by_name"] = {page["name"]: page for page in report["pages"]}
    return report
