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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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


@dataclass(frozen=True)
class Anatomy:
    """A phantom with the anatomy that makes the intracranial space hard to find.

    ``body="head"``: a closed skull (ellipsoid shell, vertex included) with scalp,
    ending at a skull base ``skull_base_mm`` below the head centre. Below the base:
    a bony floor pierced by a foramen magnum, then a neck (soft tissue, a pharynx
    of air, a vertebra whose canal holds the cord, which runs up through the
    foramen into the brain). Options: ``base_opening_mm`` of skull above the base
    whose ring is open at the front into an air sinus (no closed bone ring there),
    and a craniectomy (``craniectomy_deg`` of the ring missing on the patient's
    right over ``craniectomy_z_mm``, scalp lying on the brain).

    The hyperdense mimics of blood, both off by default (None): ``venous_sinus_hu``,
    the dural venous sinuses of a contrast-enhanced CT (about 180 HU: the superior
    sagittal sinus, a 6 mm tube along the midline under the inner table from the
    forehead over the vertex to the torcular, and the transverse sinuses from there
    along the posterior inner table), each with a 1 mm partial-volume rim halfway
    between it and the brain; ``calcification_hu``, physiological calcifications
    (about 300-600 HU: the pineal gland near the centre, the choroid plexus glomera
    in the posterior horns), small balls without a rim.

    ``body="chest"``: a wide thorax (lungs, ribs, spine, sternum): no skull ring.

    The intracranial space is known exactly: inside the inner table, above the
    base (:func:`anatomical_volume` returns it).
    """

    body: Literal["head", "chest"] = "head"
    head_centre_z_mm: float = 0.0
    skull_base_mm: float = 40.0
    base_opening_mm: float = 15.0
    opening_width_mm: float = 20.0
    craniectomy_deg: float = 0.0
    craniectomy_z_mm: tuple[float, float] = (0.0, 60.0)
    venous_sinus_hu: float | None = None
    calcification_hu: float | None = None


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
    study_description: str = "CT HEAD WO CONTRAST"
    body_part_examined: str = "HEAD"
    seed: int = 0
    #: Standard deviation of the pixel noise in the body, in HU: 4 is a 5 mm slice of a
    #: standard kernel; thin slices of a real scanner are noisier (10-20 HU at 0.6 mm).
    noise_hu: float = 4.0
    gantry_tilt_deg: float = 0.0
    #: Anatomy beyond the plain ellipsoid (skull base, neck, vertex, craniectomy) or
    #: another body part; None keeps the plain ellipsoid above.
    anatomy: Anatomy | None = None


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


def _plane_coordinates(spec: SeriesSpec) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Patient x, y, z (mm) of every pixel of each image plane in turn.

    Both phantoms are sampled this way, so a gantry tilt shears their anatomy
    and lesions alike: the table moves along z, the plane's rows along its
    tilted column direction.
    """
    dy, dx = spec.pixel_spacing_mm
    t = _tilt_rad(spec)
    y = (np.arange(spec.rows) - (spec.rows - 1) / 2.0) * dy
    x = (np.arange(spec.columns) - (spec.columns - 1) / 2.0) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    for table_z in _positions(spec) / np.cos(t):
        yield xx, yy * np.cos(t), table_z + yy * np.sin(t)


def _plant_lesions(
    spec: SeriesSpec, plane: np.ndarray, coordinates: tuple[np.ndarray, np.ndarray, np.ndarray], region: np.ndarray
) -> np.ndarray:
    """Write each lesion's HU into ``plane`` where its ball meets ``region``; the union of those pixels.

    Clipping to the region keeps a planted bleed inside the brain, as the
    ground truth the tests measure against assumes.
    """
    px, py, pz = coordinates
    planted = np.zeros(plane.shape, dtype=bool)
    for lesion in spec.lesions:
        cx, cy, cz = lesion.center_mm
        inside = ((px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2) <= lesion.radius_mm**2
        inside &= region
        plane[inside] = int(round(lesion.hu))
        planted |= inside
    return planted


def _ellipsoid_head_volume(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray]:
    """The ellipsoid phantom sampled on its image planes (tilted or not): each pixel at its true 3D position.

    Every plane lies within the ellipsoid (its z semi-axis is 1.5 times the half stack), so
    untilted planes are the tilt-0 case of the same sampling.
    """
    rng = np.random.default_rng(spec.seed)
    volume = np.full((spec.n_slices, spec.rows, spec.columns), -1000, dtype=np.int16)
    mask = np.zeros(volume.shape, dtype=bool)
    semi_x, semi_y, semi_z = 75.0, 92.0, 1.5 * max(90.0, spec.n_slices * spec.slice_thickness_mm / 2)
    for k, (px, py, pz) in enumerate(_plane_coordinates(spec)):
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
        mask[k] = _plant_lesions(spec, plane, (px, py, pz), brain)
        noise = rng.normal(0.0, spec.noise_hu, size=plane.shape).round().astype(np.int16)
        plane[outer <= 1.0] += noise[outer <= 1.0]
    return volume, mask


def head_volume(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray]:
    """The HU volume (slices, rows, columns) as int16, and the lesion mask (bool)."""
    if spec.anatomy is not None:
        volume, lesions, _ = anatomical_volume(spec)
        return volume, lesions
    return _ellipsoid_head_volume(spec)


#: Semi-axes (x, y, z) in mm of the anatomical phantom's scalp, outer and inner table.
_SCALP = (80.0, 97.0, 90.0)
_OUTER_TABLE = (75.0, 92.0, 85.0)
_INNER_TABLE = (68.0, 85.0, 78.0)
#: Thickness of the bony floor at the skull base, and where the foramen magnum pierces it.
_FLOOR_MM = 7.0
_FORAMEN = (0.0, 30.0, 15.0)  # centre x, y and radius, mm
_CORD_RADIUS_MM = 9.0
#: Radius of the enhanced venous sinuses, and the torcular's height above the skull base.
_SINUS_RADIUS_MM = 3.0
_TORCULAR_ABOVE_BASE_MM = 15.0
#: Calcifications (x, y, z, radius in mm; +y is posterior): the pineal gland, the two choroid plexus glomera.
_CALCIFICATIONS = ((0.0, 12.0, 0.0, 3.0), (-24.0, 32.0, 6.0, 2.5), (24.0, 32.0, 6.0, 2.5))


def _ellipse(px: np.ndarray, py: np.ndarray, pz: np.ndarray, semi: tuple[float, float, float]) -> np.ndarray:
    return (px / semi[0]) ** 2 + (py / semi[1]) ** 2 + (pz / semi[2]) ** 2 <= 1.0


def _disc(px: np.ndarray, py: np.ndarray, cx: float, cy: float, rx: float, ry: float | None = None) -> np.ndarray:
    return ((px - cx) / rx) ** 2 + ((py - cy) / (rx if ry is None else ry)) ** 2 <= 1.0


def _head_plane(anatomy: Anatomy, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HU of one plane of the anatomical head (coordinates relative to the head centre), and its intracranial space."""
    plane = np.full(px.shape, -1000, dtype=np.int16)
    base = -anatomy.skull_base_mm
    above = pz > base
    inner = _ellipse(px, py, pz, _INNER_TABLE)
    outer = _ellipse(px, py, pz, _OUTER_TABLE)
    plane[_ellipse(px, py, pz, _SCALP) & (pz > base - _FLOOR_MM)] = 40
    plane[outer & above] = 1000
    shell = outer & ~inner & above
    if anatomy.base_opening_mm > 0:
        opening = shell & (pz < base + anatomy.base_opening_mm) & (np.abs(px) < anatomy.opening_width_mm / 2) & (py < 0)
        plane[opening] = -900
        plane[_disc(px, py, 0.0, -_OUTER_TABLE[1], 14.0, 10.0) & (pz < base + anatomy.base_opening_mm) & above] = -900
    if anatomy.craniectomy_deg > 0:
        z0, z1 = anatomy.craniectomy_z_mm
        angle = np.degrees(np.arctan2(py, -px))  # 0 degrees = the patient's right (-x in LPS)
        defect = shell & (np.abs(angle) <= anatomy.craniectomy_deg / 2) & (pz >= z0) & (pz <= z1)
        plane[defect] = 30
    intracranial = inner & above
    plane[intracranial] = 35
    if anatomy.venous_sinus_hu is not None:
        _enhance_sinuses(plane, intracranial, (px, py, pz), anatomy.venous_sinus_hu, base)
    if anatomy.calcification_hu is not None:
        for cx, cy, cz, radius in _CALCIFICATIONS:
            ball = (px - cx) ** 2 + (py - cy) ** 2 + (pz - cz) ** 2 <= radius**2
            plane[intracranial & ball] = int(round(anatomy.calcification_hu))
    floor = (pz <= base) & (pz > base - _FLOOR_MM) & _ellipse(px, py, np.full_like(pz, base), _OUTER_TABLE)
    plane[floor] = 1000
    fx, fy, fr = _FORAMEN
    plane[floor & _disc(px, py, fx, fy, fr)] = 5
    neck = pz <= base - _FLOOR_MM
    plane[neck & _disc(px, py, 0.0, 10.0, 50.0, 55.0)] = 40
    plane[neck & _disc(px, py, 0.0, -15.0, 12.0, 8.0)] = -900
    plane[neck & _disc(px, py, fx, fy, 16.0)] = 1000
    plane[(neck | floor) & _disc(px, py, fx, fy, _CORD_RADIUS_MM)] = 35
    return plane, intracranial


def _depth_under_inner_table(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    """Distance (mm) inward from the inner table, along the ray from the head centre.

    Along the ray the inner table lies at ``|p| / rho`` (``rho``: the point's
    ellipsoidal radius, 1 on the table), so the depth is ``|p| (1 - rho) / rho``;
    close to the normal distance on a head this round.
    """
    rho = np.sqrt((px / _INNER_TABLE[0]) ** 2 + (py / _INNER_TABLE[1]) ** 2 + (pz / _INNER_TABLE[2]) ** 2)
    return np.sqrt(px**2 + py**2 + pz**2) * (1.0 - rho) / np.maximum(rho, 1e-6)


def _enhance_sinuses(
    plane: np.ndarray,
    intracranial: np.ndarray,
    coordinates: tuple[np.ndarray, np.ndarray, np.ndarray],
    hu: float,
    base: float,
) -> None:
    """Write the contrast-filled sinuses into ``plane``, in place (see :class:`Anatomy`).

    Both are tubes of :data:`_SINUS_RADIUS_MM` whose axis runs just under the inner
    table: the superior sagittal one in the midline plane, from the forehead (z > 0
    at the front) over the vertex down to the torcular behind; the transverse ones
    in the torcular's axial plane, along the posterior half of the table.
    """
    px, py, pz = coordinates
    depth = _depth_under_inner_table(px, py, pz) - (_SINUS_RADIUS_MM + 0.5)
    torcular_z = base + _TORCULAR_ABOVE_BASE_MM
    sagittal = np.sqrt(px**2 + depth**2)
    sagittal = np.where((pz > torcular_z) & ((py > 0) | (pz > 0)), sagittal, np.inf)
    transverse = np.sqrt((pz - torcular_z) ** 2 + depth**2)
    transverse = np.where(py > 0, transverse, np.inf)
    distance = np.minimum(sagittal, transverse)
    plane[intracranial & (distance <= _SINUS_RADIUS_MM + 1.0)] = int(round((hu + 35.0) / 2.0))
    plane[intracranial & (distance <= _SINUS_RADIUS_MM)] = int(round(hu))


def _chest_plane(px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """HU of one plane of a thorax: wide, lungs, ribs and a spine, no skull ring."""
    plane = np.full(px.shape, -1000, dtype=np.int16)
    plane[_disc(px, py, 0.0, 0.0, 170.0, 120.0)] = -100
    plane[_disc(px, py, 0.0, 0.0, 160.0, 110.0)] = 40
    plane[_disc(px, py, -75.0, -5.0, 60.0, 80.0) | _disc(px, py, 75.0, -5.0, 60.0, 80.0)] = -850
    for angle in np.radians(np.arange(-60, 250, 22.0)):
        plane[_disc(px, py, 145.0 * np.cos(angle), -100.0 * np.sin(angle), 6.0)] = 900
    plane[_disc(px, py, 0.0, 90.0, 18.0)] = 900
    plane[_disc(px, py, 0.0, 90.0, 9.0)] = 35
    plane[_disc(px, py, 0.0, -105.0, 12.0, 5.0)] = 900
    return plane


def anatomical_volume(spec: SeriesSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU volume, lesion mask and the exact intracranial space of a phantom with ``spec.anatomy``.

    Every pixel is evaluated at its true patient position, so gantry tilt shears
    the anatomy exactly as on a scanner. Lesions are planted inside the brain only.
    """
    anatomy = spec.anatomy
    if anatomy is None:
        raise ValueError("anatomical_volume needs spec.anatomy")
    rng = np.random.default_rng(spec.seed)
    shape = (spec.n_slices, spec.rows, spec.columns)
    volume = np.empty(shape, dtype=np.int16)
    lesions = np.zeros(shape, dtype=bool)
    truth = np.zeros(shape, dtype=bool)
    for k, (px, py, pz) in enumerate(_plane_coordinates(spec)):
        if anatomy.body == "chest":
            plane = _chest_plane(px, py)
        else:
            plane, truth[k] = _head_plane(anatomy, px, py, pz - anatomy.head_centre_z_mm)
            lesions[k] = _plant_lesions(spec, plane, (px, py, pz), truth[k])
        body = plane > -950
        noise = rng.normal(0.0, spec.noise_hu, size=plane.shape).round().astype(np.int16)
        plane[body] += noise[body]
        volume[k] = plane
    return volume, lesions, truth


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
        ds.StudyDescription = spec.study_description
        ds.SeriesDescription = spec.series_description
        ds.PatientName = spec.patient_name
        ds.PatientID = spec.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.BodyPartExamined = spec.body_part_examined
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


def write_demo_study(
    directory: Path, *, positive: bool = True, n_slices: int = 40, chest: bool = False
) -> DemoStudy:
    """Write a 5 mm axial head CT of ``n_slices`` images, with or without a bleed, into ``directory``.

    ``chest``: a chest CT instead, headers and image alike, to see a series that is not a
    head stored but not analysed (its job ends ``skipped``).
    """
    if chest:
        spec = SeriesSpec(
            n_slices=n_slices, anatomy=Anatomy(body="chest"), series_description="CHEST 5mm STND",
            study_description="CT CHEST WO CONTRAST", body_part_examined="CHEST",
        )
        positive = False
    else:
        spec = SeriesSpec(n_slices=n_slices, lesions=[DEMO_LESION] if positive else [])
    paths = write_series(spec, directory)
    lesion_ml = lesion_volume_ml(spec, head_volume(spec)[1]) if positive else 0.0
    return DemoStudy(paths, spec.study_instance_uid, lesion_ml)


def send_command(directory: Path, *, calling_ae: str, called_ae: str, host: str, port: int) -> str:
    """The DCMTK line that sends ``directory`` to the node as its configuration says it listens."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    return f"TCP_NODELAY=1 /usr/bin/storescu -aet {calling_ae} -aec {called_ae} {host} {port} -xs +sd {directory}"
