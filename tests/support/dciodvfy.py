"""Check a DICOM file against its IOD with dciodvfy (dicom3tools), and parse the verdict.

dciodvfy checks every module, attribute type, condition and value
representation of the IOD the SOP Class names (PS3.3 Annex A), and it is the
validator PACS vendors run, so every object we create goes through it in the
tests. It writes one message per line to stderr, each starting with "Error"
or "Warning", plus the name of the IOD it recognised; it exits non-zero when
it found errors.

The messages quote attribute values, patient names included: show them to the
person running the check, never write them to the node's log.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Where Debian's dicom3tools package installs the validator.
DCIODVFY = Path("/usr/bin/dciodvfy")


@dataclass(frozen=True)
class ValidationResult:
    """dciodvfy's verdict on one file: errors, warnings, the IOD it checked against."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    iod: str | None
    returncode: int

    @property
    def ok(self) -> bool:
        """No errors (warnings are allowed)."""
        return not self.errors and self.returncode == 0


def parse_dciodvfy_output(text: str, returncode: int = 0) -> ValidationResult:
    """Split dciodvfy's output into errors, warnings and the recognised IOD name.

    A line that starts with neither "Error" nor "Warning" is the IOD name (the
    first one wins); dciodvfy does not always end its last message with a
    newline, so the text is split on line breaks only.
    """
    errors: list[str] = []
    warnings: list[str] = []
    iod: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("Error"):
            errors.append(stripped)
        elif stripped.startswith("Warning"):
            warnings.append(stripped)
        elif iod is None:
            iod = stripped
    return ValidationResult(tuple(errors), tuple(warnings), iod, returncode)


def run_dciodvfy(
    path: str | os.PathLike[str], *, executable: Path = DCIODVFY, timeout_s: float = 60.0
) -> ValidationResult:
    """Validate one Part 10 file; raise ``FileNotFoundError`` if dciodvfy is missing.

    The command is an argument list (no shell), so a path can never be read as
    shell syntax.
    """
    if not executable.is_file():
        raise FileNotFoundError(
            f"{executable} not found: install dicom3tools (Debian: apt-get install dicom3tools)"
        )
    completed = subprocess.run(
        [str(executable), os.fspath(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout_s,
        check=False,
    )
    return parse_dciodvfy_output(completed.stderr + "\n" + completed.stdout, completed.returncode)
