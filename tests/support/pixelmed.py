"""Validate DICOM files with PixelMed (Debian's pixelmed-apps), a second opinion next to dciodvfy.

PixelMed checks what dciodvfy does not: the SR content tree against the
templates of PS3.16 (TID 1500 and the templates it includes) and the context
groups of its codes. Its validators are Java classes in ``pixelmed.jar``:

* ``com.pixelmed.validate.DicomSRValidator``: IOD and templates of an SR;
* ``com.pixelmed.validate.DicomInstanceValidator``: the IOD of a few other
  objects; the 2022-06-18 release packaged by Debian knows Segmentation,
  Enhanced CT/MR, legacy converted, MR spectroscopy and raw data, and answers
  ``IOD (SOP Class) unrecognized`` for anything else (Secondary Capture
  included).

Each class's ``main`` validates one file and compiles PixelMed's XSLT first,
which takes 5 to 15 s, so :func:`run_pixelmed` runs a small Java program (Java's
single-file source launcher, which Debian's JRE supports) that builds each
validator once and validates every file given. The program's exit status is
0 even when a file has errors: the verdict is in the text, one
``Error: ...`` / ``Warning: ...`` line per finding.

Since JDK 17 the XSLT compiler refuses PixelMed's stylesheets
(``JAXP0801003 ... exceeds the '10,000' limit``); the ``jdk.xml.xpath*`` limits are
lifted for this process only.

Like dciodvfy's, the messages may quote attribute values (patient names
included): show them to the person running the tests, never log them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
#: JDK 17+ limits on XPath expressions that PixelMed's compiled stylesheets exceed (0: no limit).
JVM_OPTIONS = (
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
    "-Djava.awt.headless=true",
)
#: Separates the verdicts of the files in the batch program's output.
MARKER = "==== pixelmed-validation "
TIMEOUT_S = 300.0

_BATCH_SOURCE = """
import com.pixelmed.dicom.Attribute;
import com.pixelmed.dicom.AttributeList;
import com.pixelmed.dicom.SOPClass;
import com.pixelmed.dicom.TagFromName;
import com.pixelmed.validate.DicomInstanceValidator;
import com.pixelmed.validate.DicomSRValidator;

public class PixelMedBatch {
    public static void main(String[] paths) throws Exception {
        DicomInstanceValidator iodValidator = null;
        DicomSRValidator srValidator = null;
        for (int i = 0; i < paths.length; i++) {
            System.out.println("@MARKER@" + i);
            try {
                // As both validators' main(): the header only, up to Pixel Data.
                AttributeList list = new AttributeList();
                list.read(paths[i], TagFromName.PixelData);
                String sopClass = Attribute.getSingleStringValueOrEmptyString(list, TagFromName.SOPClassUID);
                if (SOPClass.isStructuredReport(sopClass)) {
                    if (srValidator == null) srValidator = new DicomSRValidator();
                    System.out.print(srValidator.validate(paths[i]));
                } else {
                    if (iodValidator == null) iodValidator = new DicomInstanceValidator();
                    System.out.print(iodValidator.validate(list));
                }
            } catch (Exception e) {
                System.out.println("Error: validator failed: " + e);
            }
            System.out.println();
        }
    }
}
""".replace("@MARKER@", MARKER)


@dataclass(frozen=True)
class PixelMedResult:
    """PixelMed's verdict on one file.

    ``iod`` is the IOD it recognised (``"Segmentation"``, ``"Comprehensive3DSR"``)
    or None; ``root_template`` the SR root template it checked (``"TID_1500
    (MeasurementReport)"``) or None.
    """

    path: Path
    iod: str | None
    root_template: str | None
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    text: str

    @property
    def recognized(self) -> bool:
        return self.iod is not None


def require_pixelmed() -> str:
    """The java launcher, or a failure naming the package that provides PixelMed (never a skip)."""
    java = shutil.which("java")
    if not PIXELMED_JAR.is_file() or java is None:
        pytest.fail(
            f"PixelMed is required ({PIXELMED_JAR} and java): install Debian's pixelmed-apps "
            "(apt-get install pixelmed-apps; it brings a Java runtime)"
        )
    return java


def parse_pixelmed_output(path: Path, text: str) -> PixelMedResult:
    """Split one file's validator output into errors, warnings, IOD and root template."""
    errors: list[str] = []
    warnings: list[str] = []
    iod: str | None = None
    template: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Error"):
            errors.append(stripped)
        elif stripped.startswith("Warning"):
            warnings.append(stripped)
        elif (found := re.fullmatch(r"Found (\S+) IOD", stripped)) is not None:
            iod = found.group(1)
        elif (found := re.fullmatch(r"Found Root Template (.+)", stripped)) is not None:
            template = found.group(1)
    return PixelMedResult(path, iod, template, tuple(errors), tuple(warnings), text)


def run_pixelmed(paths: Sequence[Path], *, timeout_s: float = TIMEOUT_S) -> list[PixelMedResult]:
    """Validate every file in one JVM; one :class:`PixelMedResult` per path, in order.

    The paths are passed as arguments (no shell). A failure of the batch program
    itself (Java missing, PixelMed's classes changed) raises AssertionError with
    its output.
    """
    java = require_pixelmed()
    if not paths:
        return []
    with tempfile.TemporaryDirectory(prefix="pixelmed-") as work:
        source = Path(work) / "PixelMedBatch.java"
        source.write_text(_BATCH_SOURCE, encoding="utf-8")
        completed = subprocess.run(
            [java, *JVM_OPTIONS, "-cp", str(PIXELMED_JAR), str(source), *(os.fspath(p) for p in paths)],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            check=False,
        )
    sections = completed.stdout.split(MARKER)[1:]
    if completed.returncode != 0 or len(sections) != len(paths):
        raise AssertionError(
            f"PixelMed batch validation failed (exit {completed.returncode}, {len(sections)} of {len(paths)} "
            f"verdicts):\n{completed.stderr[-3000:]}\n{completed.stdout[-2000:]}"
        )
    results = []
    for index, (path, section) in enumerate(zip(paths, sections, strict=True)):
        number, _, text = section.partition("\n")
        assert int(number) == index, f"PixelMed verdicts out of order at {path}"
        results.append(parse_pixelmed_output(Path(path), text))
    return results
