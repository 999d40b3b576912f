"""Anonymised head CT exports as hospitals and public collections really hand them out.

Issue 12: a real anonymised head CT export reached the node with no Frame of
Reference, blank descriptions, gantry tilt, JPEG Lossless pixel data, a missing
slice and a stray slice of another patient in the same folder, and nothing came
back. This module builds such exports from the phantom of
:mod:`tests.support.synthetic_ct` (no patient data anywhere), at test time:

* **header quirks**: StudyDescription empty, BodyPartExamined absent, a
  SeriesDescription that names only the contrast protocol, no FrameOfReferenceUID
  (and so no PositionReferenceIndicator), an empty Manufacturer, an empty
  SpecificCharacterSet (as the real GE slices in ``../shared`` have), anonymised
  patient name and ID, an AccessionNumber and StudyID longer than SH allows
  (an anonymiser's hash), and private elements of two private creators, one of them
  a sequence and one with VR UN as anonymisers leave them;
* **geometry quirks**: gantry tilt, one slice missing from the middle;
* **encoding**: JPEG Lossless SV1 (made by DCMTK's ``dcmcjpeg``, as pydicom cannot
  encode it), optionally mixed within one series with JPEG-LS Lossless (pyjpegls
  through pydicom) and uncompressed Explicit VR Little Endian;
* **a stray slice**: one slice of another patient and another study, written into
  the same folder so that a sender sends it in the same association.

Each :class:`ExportCase` says what the node must do with it. UIDs derive from the
case name, so the corpus is the same on every run and a test can name its objects.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLosslessSV1, JPEGLSLossless, generate_uid

from tests.support.synthetic_ct import TEST_UID_PREFIX, Lesion, SeriesSpec, series_datasets

DCMCJPEG = "/usr/bin/dcmcjpeg"
DCMCJPEG_TIMEOUT_S = 60

#: Private creators of the blocks an export carries; invented names, no vendor's.
PRIVATE_CREATOR = "DICOMNODE SYNTHETIC EXPORT"
PRIVATE_CREATOR_2 = "DICOMNODE SYNTHETIC RECON"

#: Where the positive cases plant their lesion (patient mm from the head centre).
LESION = Lesion(center_mm=(25.0, 10.0, 0.0), radius_mm=9.0)


def case_uid(case_name: str, what: str) -> str:
    """A UID that is the same on every run for this case and purpose."""
    return generate_uid(TEST_UID_PREFIX, entropy_srcs=["anonymised-export", case_name, what])


@dataclass(frozen=True)
class ExportProfile:
    """How an export differs from the series the scanner made. The defaults are issue 12's export."""

    #: SeriesDescription after anonymisation: the contrast protocol only, no body part.
    series_description: str = "NON CON 0.625"
    drop_frame_of_reference: bool = True
    empty_manufacturer: bool = True
    empty_character_set: bool = True
    private_tags: bool = True
    #: An anonymiser's hash in AccessionNumber and StudyID, longer than their VR (SH, 16) allows.
    overlong_identifiers: bool = True
    #: Index (before removal) of the slice the export lost; None keeps every slice.
    missing_slice: int | None = None
    #: The transfer syntax of slice k is ``transfer_syntaxes[k % len(transfer_syntaxes)]``.
    transfer_syntaxes: tuple[str, ...] = (JPEGLosslessSV1,)
    #: A one-slice series of another patient and study, written into the same folder.
    stray_slice: bool = False


#: Mostly JPEG Lossless with JPEG-LS and uncompressed slices among them, as a PACS that
#: recompressed part of a study over the years hands it out.
MIXED_SYNTAXES: tuple[str, ...] = (
    JPEGLosslessSV1, JPEGLosslessSV1, JPEGLSLossless, JPEGLosslessSV1, ExplicitVRLittleEndian,
)


@dataclass(frozen=True)
class ExportCase:
    """One study of the corpus and what the node must make of it."""

    name: str
    spec: SeriesSpec
    profile: ExportProfile
    #: The main study gets a SEG (a lesion was planted) as well as the SR and key images.
    positive: bool
    stray: SeriesSpec | None = None

    @property
    def missing_sop_instance_uid(self) -> str | None:
        """The SOP Instance UID of the slice left out of the export, if one was."""
        index = self.profile.missing_slice
        return None if index is None else case_uid(self.name, f"instance-{index}")

    @property
    def sent_slices(self) -> int:
        return self.spec.n_slices - (self.profile.missing_slice is not None)


def export_case(
    name: str,
    *,
    n_slices: int = 40,
    slice_thickness_mm: float = 5.0,
    positive: bool = True,
    gantry_tilt_deg: float = 8.5,
    profile: ExportProfile | None = None,
    seed: int = 0,
) -> ExportCase:
    """A case with deterministic UIDs; by default issue 12's export at 40 slices of 5 mm."""
    profile = profile or ExportProfile(missing_slice=n_slices // 4, stray_slice=True)
    spec = SeriesSpec(
        n_slices=n_slices,
        slice_thickness_mm=slice_thickness_mm,
        lesions=[LESION] if positive else [],
        study_instance_uid=case_uid(name, "study"),
        series_instance_uid=case_uid(name, "series"),
        frame_of_reference_uid=case_uid(name, "frame-of-reference"),
        patient_name="ANONYMIZED",
        patient_id=case_uid(name, "patient").rsplit(".", 1)[1][:16],
        series_description=profile.series_description,
        seed=seed,
        gantry_tilt_deg=gantry_tilt_deg,
    )
    stray = None
    if profile.stray_slice:
        stray = replace(
            spec,
            n_slices=1,
            lesions=[],
            study_instance_uid=case_uid(name, "stray-study"),
            series_instance_uid=case_uid(name, "stray-series"),
            frame_of_reference_uid=case_uid(name, "stray-frame-of-reference"),
            patient_id=case_uid(name, "stray-patient").rsplit(".", 1)[1][:16],
            series_number=3,
            seed=seed + 1,
        )
    return ExportCase(name=name, spec=spec, profile=profile, positive=positive, stray=stray)


def corpus() -> list[ExportCase]:
    """The CI corpus: a positive export with mixed transfer syntaxes, and a negative one.

    Both carry every header and geometry quirk; the positive one also sends a stray
    slice of another patient in its association. 40 slices of 5 mm keep the
    acceptance test short; :func:`timing_case` is the 238-slice export of the issue.
    """
    positive = export_case(
        "positive-mixed",
        profile=ExportProfile(missing_slice=10, transfer_syntaxes=MIXED_SYNTAXES, stray_slice=True),
        positive=True,
        seed=1,
    )
    negative = export_case("negative-jpeg", profile=ExportProfile(missing_slice=30), positive=False, seed=2)
    return [positive, negative]


def non_head_case(name: str = "labelled-chest", *, seed: int = 4) -> ExportCase:
    """The head phantom under a header that names another body part: the header wins, the study is skipped."""
    profile = ExportProfile(series_description="CHEST ABDOMEN 5mm", missing_slice=None, stray_slice=False)
    return export_case(name, positive=True, profile=profile, seed=seed)


def timing_case(name: str = "timing-238", *, seed: int = 3) -> ExportCase:
    """Issue 12's export at full size: 238 JPEG Lossless slices of 0.625 mm, 8.5° tilt, a gap, a stray slice."""
    return export_case(name, n_slices=238, slice_thickness_mm=0.625, seed=seed)


def _add_private_elements(ds: Dataset, slice_index: int) -> None:
    """Two private blocks as scanners and anonymisers leave them (PS3.5 7.8)."""
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", "RECON 2 OF 3")
    block.add_new(0x02, "DS", ["0.5", f"{slice_index * 0.625:.3f}"])
    block.add_new(0x03, "OB", bytes(range(16)))
    item = Dataset()
    item_block = item.private_block(0x0009, PRIVATE_CREATOR, create=True)
    item_block.add_new(0x10, "SH", "ITEM")
    block.add_new(0x04, "SQ", [item])
    # An anonymiser that does not know a private element's VR writes it as UN.
    recon = ds.private_block(0x0043, PRIVATE_CREATOR_2, create=True)
    recon.add_new(0x01, "UN", b"\x01\x00\x02\x00")
    recon.add_new(0x02, "SS", [-1, 7])


def _anonymise(ds: Dataset, case: ExportCase, spec: SeriesSpec, slice_index: int) -> None:
    """Make one slice look like issue 12's export (see the module docstring)."""
    profile = case.profile
    ds.SOPInstanceUID = case_uid(case.name, f"{'stray-' if spec is case.stray else ''}instance-{slice_index}")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDescription = ""
    del ds.BodyPartExamined
    if profile.overlong_identifiers:
        digest = case_uid(case.name, "accession").replace(".", "")[-24:]
        # Invalid on purpose, so pydicom is told not to check them.
        ds[0x0008, 0x0050] = DataElement(0x00080050, "SH", digest, validation_mode=pydicom_config.IGNORE)
        ds[0x0020, 0x0010] = DataElement(0x00200010, "SH", digest[:20], validation_mode=pydicom_config.IGNORE)
    else:
        ds.AccessionNumber = ""
        ds.StudyID = ""
    if profile.empty_character_set:
        ds.SpecificCharacterSet = ""
    if profile.empty_manufacturer:
        ds.Manufacturer = ""
    if profile.drop_frame_of_reference:
        del ds.FrameOfReferenceUID
        del ds.PositionReferenceIndicator
    if profile.private_tags:
        _add_private_elements(ds, slice_index)


def export_datasets(case: ExportCase, spec: SeriesSpec) -> list[Dataset]:
    """The slices of ``spec`` (the case's main series or its stray) as the export has them, uncompressed."""
    datasets = series_datasets(spec)
    for index, ds in enumerate(datasets):
        _anonymise(ds, case, spec, index)
    if spec is case.spec and case.profile.missing_slice is not None:
        del datasets[case.profile.missing_slice]
    return datasets


@dataclass
class WrittenExport:
    """The files of one case, all in one folder (as the export came)."""

    folder: Path
    main: list[Path] = field(default_factory=list)
    stray: list[Path] = field(default_factory=list)

    @property
    def files(self) -> list[Path]:
        return sorted(self.main + self.stray)


def _write(ds: Dataset, path: Path, transfer_syntax: str, scratch: Path) -> None:
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.save_as(path, enforce_file_format=True)
    elif transfer_syntax == JPEGLSLossless:
        ds.compress(JPEGLSLossless)  # pyjpegls
        ds.save_as(path, enforce_file_format=True)
    elif transfer_syntax == JPEGLosslessSV1:
        # pydicom cannot encode JPEG Lossless; DCMTK can, as a PACS export would have it.
        raw = scratch / path.name
        ds.save_as(raw, enforce_file_format=True)
        subprocess.run(
            [DCMCJPEG, "+e1", "+tl", str(raw), str(path)], check=True, capture_output=True, timeout=DCMCJPEG_TIMEOUT_S
        )
        raw.unlink()
    else:
        raise ValueError(f"the export profile does not write {transfer_syntax}")


def write_export(case: ExportCase, folder: Path) -> WrittenExport:
    """Write the case into ``folder``: file names as an export has them, the stray slice among them."""
    assert Path(DCMCJPEG).exists(), "dcmcjpeg missing: install Debian's dcmtk"
    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / f".{folder.name}-raw"
    scratch.mkdir(exist_ok=True)
    written = WrittenExport(folder)
    syntaxes = case.profile.transfer_syntaxes
    for k, ds in enumerate(export_datasets(case, case.spec)):
        path = folder / f"IM{k:06d}"
        _write(ds, path, syntaxes[k % len(syntaxes)], scratch)
        written.main.append(path)
    if case.stray is not None:
        # Named to sort among the main study's files: the sender meets it mid-study.
        for ds in export_datasets(case, case.stray):
            path = folder / f"IM{len(written.main) // 2:06d}a"
            _write(ds, path, syntaxes[0], scratch)
            written.stray.append(path)
    scratch.rmdir()
    return written


def transfer_syntaxes_of(paths: list[Path]) -> set[str]:
    """The transfer syntaxes the files are encoded in."""
    return {str(dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in paths}


STORESCU = "/usr/bin/storescu"  # not the venv's pynetdicom `storescu` (see ../shared/NOTES.md)
#: The storescu profile that proposes each transfer syntax the corpus uses, each in its own context.
STORESCU_PROFILE = "AnonymisedExport"


def write_storescu_config(path: Path, sop_class_uid: str, transfer_syntaxes: set[str]) -> Path:
    """A DCMTK storescu configuration (``-xf``) proposing every transfer syntax of a mixed study.

    storescu's ``-x?`` options propose one compressed syntax plus the uncompressed ones,
    and storescu cannot convert between compressed syntaxes: a study with JPEG
    Lossless and JPEG-LS slices needs a presentation context for each, which only a
    configuration file can propose (the format of DCMTK's ``/etc/dcmtk/storescu.cfg``).
    """
    lines = ["[[TransferSyntaxes]]"]
    for n, syntax in enumerate(sorted(transfer_syntaxes), start=1):
        lines += [f"[Syntax{n}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", f"[{STORESCU_PROFILE}]"]
    lines += [f"PresentationContext{n} = {sop_class_uid}\\Syntax{n}" for n in range(1, len(transfer_syntaxes) + 1)]
    lines += ["[[Profiles]]", f"[{STORESCU_PROFILE}]", f"PresentationContexts = {STORESCU_PROFILE}"]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
    return path


def send_folder(port: int, folder: Path, called_ae: str, *, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Send every file of ``folder`` over one association with DCMTK storescu, as a PACS would.

    The association proposes exactly the transfer syntaxes the files are in, so none
    is converted; ``-nh`` goes on after a refused file, as a PACS sending a study does.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file())
    sop_classes = {str(dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files}
    assert len(sop_classes) == 1, "one SOP class per export"
    config = write_storescu_config(
        folder.parent / f"{folder.name}-storescu.cfg", sop_classes.pop(), transfer_syntaxes_of(files)
    )
    return subprocess.run(
        [STORESCU, "-v", "-nh", "-xf", str(config), STORESCU_PROFILE, "-aet", "STORESCU", "-aec", called_ae,
         "127.0.0.1", str(port), *map(str, files)],
        capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=timeout_s,
    )
