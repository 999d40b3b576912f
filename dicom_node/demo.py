"""A synthetic head CT (a phantom, no patient data): ``dicom-node demo`` and the test suite's generator.

A new user needs a head CT to try the node with, and the tests need series whose truth
is known exactly; both use this one generator (``tests/support/synthetic_ct.py``
re-exports it).

The phantom is an ellipsoidal head: air outside, a 7 mm skull shell at about
+1000 HU, brain at about +35 HU, and optional spherical hyperdense lesions
(acute blood, about +65 HU) whose volume is known exactly from the voxel grid.

Patient coordinates (LPS, mm) have their origin at the centre of the head, so a
lesion's ``center_mm`` is also where a correct affine must put its centroid.
With ``gantry_tilt_deg`` the image planes are tilted about the patient x axis
while the table still moves along z, as on a tilted-gantry scanner: the slices
are then sheared (ImageOrientationPatient is not perpendicular to the stacking
direction). The table step is chosen so that the planes stay
``slice_thickness_mm`` apart along their normal, which keeps
:func:`lesion_volume_ml` exact.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

#: The root of every UID the phantom gets (under the project's root, arc 99: synthetic data).
TEST_UID_PREFIX = "1.2.826.0.1.3680043.10.1476.99."


@dataclass(frozen=True)
class Lesion:
    """A spherical hyperdense lesion, centred in patient millimetres relative to the head centre."""

    center_mm: tuple[float, float, float]
    radius_mm: float
    hu: float = 65.0


@dataclass
class SeriesSpec:
    """What to generate; defaults give a plausible 5 mm axial head CT."""

    n_slices: int = 40
    rows: int = 512
    columns: int = 512
    pixel_spacing_mm: tuple[float, float] = (0.45, 0.45)
    slice_thickness_mm: float = 5.0
    lesions: list[Lesion] = field(default_factory=list)
    study_instance_uid: str = field(default_factory=lambda: generate_uid(TEST_UID_PREFIX))
    series_instance_uid: str = field(default_factory=lambda: generate_uid(TEST_UID_PREFIX))
    frame_of_reference_uid: str = field(default_factory=lambda: generate_uid(TEST_UID_PREFIX))
    patient_name: str = "Synthetic^Phantom"
    patient_id: str = "SYN0001"
    series_number: int = 2
    series_description: str = "HEAD 5mm STND"
    seed: int = 0
    gantry_tilt_deg: float = 0.0


def _positions(spec: SeriesSpec) -> np.ndarray:
    z = (np.arange(spec.n_slices) - (spec.n_slices - 1) / 2.0) * spec.slice_thickness_mm
    return z


def _tilt_rad(spec: SeriesSpec) -> float:
    return float(np.deg2rad(spec.gantry_tilt_deg))


def _row_column_cosines(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray]:
    """Direction of increasing column index, then of increasing row index (LPS)."""
    t = _tilt_rad(spec)
    return np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), np.sin(t)])


def _image_positions(spec: SeriesSpec) -> np.ndarray:
    """ImagePositionPatient of every slice, shape (n_slices, 3)."""
    dy, dx = spec.pixel_spacing_mm
    row_cos, col_cos = _row_column_cosines(spec)
    # The table moves along z; dividing by cos(tilt) keeps the planes
    # slice_thickness_mm apart along their normal.
    table_z = _positions(spec) / np.cos(_tilt_rad(spec))
    centres = np.stack([np.zeros_like(table_z), np.zeros_like(table_z), table_z], axis=1)
    corner = (spec.columns - 1) / 2 * dx * row_cos + (spec.rows - 1) / 2 * dy * col_cos
    return centres - corner


def _tilted_head_volume(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray]:
    """The phantom sampled on tilted planes: each pixel at its true 3D position."""
    rng = np.random.default_rng(spec.seed)
    dy, dx = spec.pixel_spacing_mm
    t = _tilt_rad(spec)
    y = (np.arange(spec.rows) - (spec.rows - 1) / 2.0) * dy
    x = (np.arange(spec.columns) - (spec.columns - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    volume = np.full((spec.n_slices, spec.rows, spec.columns), -1000, dtype=np.int16)
    mask = np.zeros(volume.shape, dtype=bool)
    semi_x, semi_y, semi_z = 75.0, 92.0, 1.5 * max(90.0, spec.n_slices * spec.slice_thickness_mm / 2)
    for k, table_z in enumerate(_positions(spec) / np.cos(t)):
        px, py, pz = xx, yy * np.cos(t), table_z + yy * np.sin(t)
        scale = 1.0 - (pz / semi_z) ** 2
        r = np.sqrt(np.clip(scale, 1e-12, None))
        outer = np.where(scale > 0, (px / (semi_x * r)) ** 2 + (py / (semi_y * r)) ** 2, np.inf)
        thick = semi_x * r > 8
        inner_x = np.where(thick, semi_x * r - 7.0, 1.0)
        inner_y = np.where(thick, semi_y * r - 7.0, 1.0)
        inner = np.where(thick, (px / inner_x) ** 2 + (py / inner_y) ** 2, np.inf)
        plane = volume[k]
        plane[outer <= 1.0] = 1000
        brain = inner <= 1.0
        plane[brain] = 35
        for lesion in spec.lesions:
            cx, cy, cz = lesion.center_mm
            inside = ((px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2) <= lesion.radius_mm**2
            inside &= brain
            plane[inside] = int(round(lesion.hu))
            mask[k] |= inside
        noise = rng.normal(0.0, 4.0, size=plane.shape).round().astype(np.int16)
        plane[outer <= 1.0] += noise[outer <= 1.0]
    return volume, mask


def head_volume(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray]:
    """The HU volume (slices, rows, columns) as int16, and the lesion mask (bool)."""
    if spec.gantry_tilt_deg:
        return _tilted_head_volume(spec)
    rng = np.random.default_rng(spec.seed)
    dy, dx = spec.pixel_spacing_mm
    y = (np.arange(spec.rows) - (spec.rows - 1) / 2.0) * dy
    x = (np.arange(spec.columns) - (spec.columns - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    volume = np.full((spec.n_slices, spec.rows, spec.columns), -1000, dtype=np.int16)
    mask = np.zeros(volume.shape, dtype=bool)
    semi_x, semi_y, semi_z = 75.0, 92.0, 1.5 * max(90.0, spec.n_slices * spec.slice_thickness_mm / 2)
    for k, z in enumerate(_positions(spec)):
        scale = 1.0 - (z / semi_z) ** 2
        if scale <= 0:
            continue
        r = np.sqrt(scale)
        outer = (xx / (semi_x * r)) ** 2 + (yy / (semi_y * r)) ** 2
        inner = (xx / (semi_x * r - 7.0)) ** 2 + (yy / (semi_y * r - 7.0)) ** 2 if semi_x * r > 8 else outer * 2
        plane = volume[k]
        plane[outer <= 1.0] = 1000
        brain = inner <= 1.0
        plane[brain] = 35
        for lesion in spec.lesions:
            cx, cy, cz = lesion.center_mm
            inside = ((xx - cx) ** 2 + (yy - cy) ** 2 + (z - cz) ** 2) <= lesion.radius_mm**2
            inside &= brain
            plane[inside] = int(round(lesion.hu))
            mask[k] |= inside
        noise = rng.normal(0.0, 4.0, size=plane.shape).round().astype(np.int16)
        plane[outer <= 1.0] += noise[outer <= 1.0]
    return volume, mask


def lesion_volume_ml(spec: SeriesSpec, mask: np.ndarray) -> float:
    """The exact planted lesion volume in millilitres, from the voxel grid."""
    dy, dx = spec.pixel_spacing_mm
    return float(mask.sum()) * dy * dx * spec.slice_thickness_mm / 1000.0


def series_datasets(spec: SeriesSpec) -> list[Dataset]:
    """One CT Image Storage dataset per slice, Explicit VR Little Endian, raw HU + 1024."""
    volume, _ = head_volume(spec)
    now = datetime.datetime(2026, 1, 1, 8, 0, 0)
    z_positions = _positions(spec)
    image_positions = _image_positions(spec)
    row_cos, col_cos = _row_column_cosines(spec)
    datasets = []
    for k in range(spec.n_slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        sop_uid = generate_uid(TEST_UID_PREFIX)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.AccessionNumber = "SYNACC1"
        ds.Modality = "CT"
        ds.Manufacturer = "dicom-node test phantom"
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT HEAD WO CONTRAST"
        ds.SeriesDescription = spec.series_description
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = "HEAD"
        ds.SliceThickness = f"{spec.slice_thickness_mm:g}"
        ds.KVP = "120"
        ds.ConvolutionKernel = "STANDARD"
        ds.StudyInstanceUID = spec.study_instance_uid
        ds.SeriesInstanceUID = spec.series_instance_uid
        ds.StudyID = "1"
        ds.SeriesNumber = spec.series_number
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in image_positions[k]]
        if spec.gantry_tilt_deg:
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row_cos, *col_cos)]
            ds.GantryDetectorTilt = f"{spec.gantry_tilt_deg:g}"
        else:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.FrameOfReferenceUID = spec.frame_of_reference_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = f"{z_positions[k]:.4f}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = spec.rows
        ds.Columns = spec.columns
        ds.PixelSpacing = [f"{spec.pixel_spacing_mm[0]:g}", f"{spec.pixel_spacing_mm[1]:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "80"
        ds.PixelData = (volume[k].astype(np.int32) + 1024).astype(np.int16).tobytes()
        datasets.append(ds)
    return datasets


def write_series(spec: SeriesSpec, directory: Path) -> list[Path]:
    """Write the series as Part 10 files named by instance number; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in series_datasets(spec):
        path = directory / f"IM{int(ds.InstanceNumber):05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


#: The demo study's bleed: 12 mm radius, off centre in the right hemisphere (about 7 mL).
DEMO_LESION = Lesion((20.0, 10.0, 0.0), 12.0)


@dataclass(frozen=True)
class DemoStudy:
    """What :func:`write_demo_study` wrote."""

    paths: list[Path]
    study_instance_uid: str
    lesion_ml: float


def write_demo_study(directory: Path, *, positive: bool = True, n_slices: int = 40) -> DemoStudy:
    """Write a 5 mm axial head CT of ``n_slices`` images, with or without a bleed, into ``directory``."""
    spec = SeriesSpec(n_slices=n_slices, lesions=[DEMO_LESION] if positive else [])
    paths = write_series(spec, directory)
    lesion_ml = lesion_volume_ml(spec, head_volume(spec)[1]) if positive else 0.0
    return DemoStudy(paths, spec.study_instance_uid, lesion_ml)
