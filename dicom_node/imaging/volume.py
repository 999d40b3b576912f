"""One CT series in, one HU volume out: sorted by geometry, with the way back to each frame.

The volume keeps the *acquired* grid: slice ``k`` of :attr:`CTVolume.hu` is exactly
the pixel matrix of instance ``source_sop_instance_uids[k]``. Models therefore
predict on the frames the scanner made, and a label map can be written as a
DICOM SEG aligned frame for frame with the source images (which is what viewers
display reliably; see NOTES.md).

Why not ``highdicom.get_volume_from_series`` (0.28.2)? It is the reference we
check against in the tests, but it refuses real cases that a node must survive:

* gantry tilt: it requires the stacking direction to be perpendicular to the
  image planes and raises "not a regularly-spaced volume";
* one missing slice: any gap is refused (``allow_missing_positions`` is not exposed);
* a missing FrameOfReferenceUID raises ``AttributeError``;
* a single slice gets SpacingBetweenSlices or 1.0 mm, not SliceThickness;
* it decodes every frame to float64 and ``np.stack``-s them: two full copies,
  about 4 GB for 1000 slices of 512x512.

So the rules below are ours, each stated where it is enforced, and
:meth:`CTVolume.to_highdicom` hands an untilted volume to highdicom when a
caller wants its tools.

Rules, in short:

* order is the projection of ImagePositionPatient on the slice normal
  (row cosines x column cosines), ascending; file and InstanceNumber order are ignored;
* instances of another series are left out and recorded (``excluded_sop_instance_uids``);
* a gap of up to ``max_gap_slices`` consecutive missing slices, and in all at most
  ``max_missing_fraction`` of the volume, is filled by linear interpolation between
  its neighbours, so that z is never silently compressed; the filled slices have no
  source instance (``None`` in ``source_sop_instance_uids``) and are recorded in
  the warnings. Larger gaps, or spacing that is not a whole multiple of the
  nominal spacing (e.g. 2.5 mm posterior fossa + 5 mm supratentorial), are refused;
* gantry tilt is kept on the acquired grid; the affine carries the shear, so patient
  coordinates and voxel volumes stay right (``|det|`` of a shear is the
  perpendicular slice distance times the pixel area);
* a single slice takes its z spacing from SliceThickness;
* HU come from the modality LUT (rescale slope/intercept) and are clipped below at
  -1024: padding outside the field of view (often -2000 or -3024) is air.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
import pydicom
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

if TYPE_CHECKING:
    import highdicom

logger = logging.getLogger(__name__)

#: Air; anything the modality LUT puts below it is padding outside the field of view.
HU_FLOOR = -1024
#: Stacking vectors further than this from the slice normal count as gantry tilt.
_TILT_TOLERANCE_DEG = 0.05
#: Direction cosines of two instances may differ by this much and still be one stack.
_ORIENTATION_TOLERANCE = 1e-3

Source = Dataset | str | os.PathLike[str]


class AssemblyWarningKind(Enum):
    """What a volume assembly warning is about, so that callers choose by kind, not by its wording."""

    OTHER_SERIES = "other-series"  # instances of another series were among the sources, left out
    DUPLICATE_INSTANCES = "duplicate-instances"  # one SOP Instance UID received more than once, read once
    NO_FRAME_OF_REFERENCE = "no-frame-of-reference"  # FrameOfReferenceUID absent: one frame assumed
    REPEATED_POSITION = "repeated-position"  # instances at one slice position dropped, the last received kept
    MISSING_SLICES = "missing-slices"  # gaps filled by interpolation: slices with no source instance
    GANTRY_TILT = "gantry-tilt"  # a sheared grid, kept as acquired


@dataclass(frozen=True)
class AssemblyWarning:
    """Something the assembly accepted but a reader of the result should know; ``text`` says it in full."""

    kind: AssemblyWarningKind
    text: str

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, eq=False)
class CTVolume:
    """An HU volume ``(slices, rows, columns)`` with its geometry and provenance.

    ``affine`` maps a voxel index ``(k, i, j, 1)`` (slice, row, column) to patient
    coordinates in mm (DICOM LPS). For a tilted acquisition its first column is
    not perpendicular to the other two. ``spacing_mm`` is ``(z, y, x)``: z is the
    distance between slice planes along their normal, y the distance between rows
    and x between columns (PixelSpacing, which need not be square).

    Slice 0 is the lowest position along the normal (row cosines x column
    cosines): the most inferior slice of an axial head CT. highdicom stacks the
    other way (a right-handed index order); :meth:`to_highdicom` keeps ours.

    ``affine`` is None only for volumes built with :meth:`from_array` without one
    (for instance from PNG training data); everything from DICOM has one.

    ``real_hu`` says whether ``hu`` holds measured Hounsfield units (always, from
    DICOM). It is False for pseudo-HU read back from a windowed 8-bit image, where
    everything above the window's top is a saturated pixel set to a placeholder,
    not a measurement: rules that judge a density (the gate's ceiling on blood,
    :mod:`dicom_node.models.gating`) must not run on such values.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray | None
    source_sop_instance_uids: tuple[str | None, ...]
    series_instance_uid: str | None = None
    study_instance_uid: str | None = None
    frame_of_reference_uid: str | None = None
    image_orientation: tuple[float, float, float, float, float, float] | None = None
    image_positions: np.ndarray | None = None
    gantry_tilt_deg: float = 0.0
    warnings: tuple[AssemblyWarning, ...] = ()
    excluded_sop_instance_uids: tuple[str, ...] = field(default=())
    real_hu: bool = True

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError("hu must be 3D (slices, rows, columns)")
        if self.hu.dtype not in (np.int16, np.float32):
            raise ValueError("hu must be int16 or float32 to keep a 1000-slice study in memory")
        if len(self.source_sop_instance_uids) != self.hu.shape[0]:
            raise ValueError("source_sop_instance_uids needs one entry (or None) per slice")
        if len(self.spacing_mm) != 3 or not all(s > 0 for s in self.spacing_mm):
            raise ValueError("spacing_mm is three positive distances (z, y, x)")
        if self.affine is not None and self.affine.shape != (4, 4):
            raise ValueError("affine must be a 4x4 matrix")
        if self.image_positions is not None and self.image_positions.shape != (self.hu.shape[0], 3):
            raise ValueError("image_positions needs one (x, y, z) per slice")

    @classmethod
    def from_array(
        cls,
        hu: np.ndarray,
        *,
        spacing_mm: tuple[float, float, float],
        affine: np.ndarray | None = None,
        real_hu: bool = True,
    ) -> CTVolume:
        """A volume without DICOM provenance: PNG training data (``real_hu=False``), or tests."""
        return cls(
            hu=hu,
            spacing_mm=tuple(float(s) for s in spacing_mm),  # type: ignore[arg-type]
            affine=affine,
            source_sop_instance_uids=(None,) * hu.shape[0],
            real_hu=real_hu,
        )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(slices, rows, columns)."""
        return self.hu.shape  # type: ignore[return-value]

    @property
    def voxel_volume_mm3(self) -> float:
        """Volume of one voxel; correct under gantry tilt because z is perpendicular spacing."""
        return float(np.prod(self.spacing_mm))

    @property
    def interpolated_slices(self) -> tuple[int, ...]:
        """Indices of slices filled in for missing instances (no source frame)."""
        return tuple(k for k, uid in enumerate(self.source_sop_instance_uids) if uid is None)

    @property
    def is_tilted(self) -> bool:
        """True when the slices are sheared (gantry tilt); the affine is then not orthogonal."""
        return abs(self.gantry_tilt_deg) > _TILT_TOLERANCE_DEG

    def index_to_patient(self, indices: np.ndarray | Sequence[float]) -> np.ndarray:
        """Patient coordinates (mm, LPS) of voxel indices ``(..., 3)`` given as (k, i, j)."""
        if self.affine is None:
            raise ValueError("this volume has no affine: it was not built from DICOM geometry")
        indices = np.asarray(indices, dtype=float)
        return indices @ self.affine[:3, :3].T + self.affine[:3, 3]

    def to_highdicom(self) -> highdicom.Volume:
        """The same voxels as a :class:`highdicom.Volume` (which needs an orthogonal affine).

        Refused for tilted volumes: highdicom volumes cannot represent a shear.
        The array is shared, not copied.
        """
        import highdicom

        if self.affine is None:
            raise ValueError("a highdicom Volume needs an affine; this volume has none")
        if self.is_tilted:
            raise ValueError(
                "a highdicom Volume needs an orthogonal affine; this volume has "
                f"{self.gantry_tilt_deg:.2f} deg of gantry tilt"
            )
        return highdicom.Volume(
            array=self.hu,
            affine=self.affine,
            coordinate_system="PATIENT",
            frame_of_reference_uid=self.frame_of_reference_uid,
        )


@dataclass(frozen=True)
class _Slice:
    """One instance's header and where its pixels come from."""

    source: Source
    header: Dataset
    sop_instance_uid: str


def _read_header(source: Source) -> Dataset:
    if isinstance(source, Dataset):
        return source
    return pydicom.dcmread(source, stop_before_pixels=True)


def _floats(ds: Dataset, keyword: str, count: int) -> np.ndarray:
    value = ds.get(keyword)
    if value is None or len(value) != count:
        raise ValueError(
            f"every instance needs {keyword} with {count} values: the CT Image IOD requires "
            "the Image Plane module, and without it slices cannot be placed"
        )
    return np.asarray([float(v) for v in value], dtype=float)


def _hu_dtype(headers: Sequence[Dataset]) -> np.dtype:
    """int16 when every rescale is integral (almost every CT), float32 otherwise."""
    for ds in headers:
        if ds.get("ModalityLUTSequence"):
            return np.dtype(np.float32)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        if slope != round(slope) or intercept != round(intercept):
            return np.dtype(np.float32)
    return np.dtype(np.int16)


def _decode(slice_: _Slice, rows: int, columns: int) -> np.ndarray:
    """Stored values of one frame, decoded by pydicom's pixel handlers, without caching.

    ``pixel_array(path)`` reads only the pixel data of a file, and
    ``pixel_array(dataset)`` does not keep the decoded array on the dataset
    (``ds.pixel_array`` would, doubling memory for in-memory series).
    """
    source = slice_.source
    if isinstance(source, Dataset):
        if "TransferSyntaxUID" not in getattr(source, "file_meta", {}):
            raise ValueError(
                "an in-memory dataset needs file_meta.TransferSyntaxUID to decode its pixel data"
            )
        dataset = source
    elif _is_deflated(source):
        # pixel_array(path) reads the raw file and cannot inflate it: read it whole.
        dataset = dcmread(source)
    else:
        dataset = None
    if dataset is not None and "PixelData" not in dataset:
        raise ValueError(f"instance {slice_.sop_instance_uid} has no Pixel Data")
    _check_pixel_length(slice_, dataset if dataset is not None else source, rows, columns)
    try:
        frame = pixel_array(dataset if dataset is not None else os.fspath(source))
    except AttributeError as exc:  # pydicom's way of saying there is no Pixel Data element
        raise ValueError(f"instance {slice_.sop_instance_uid} has no Pixel Data") from exc
    if frame.shape != (rows, columns):
        raise ValueError(
            f"instance {slice_.sop_instance_uid} decodes to shape {frame.shape}, expected "
            f"({rows}, {columns}); multi-frame and colour images are not CT slices we can stack"
        )
    return frame


def _is_deflated(path: Path | str) -> bool:
    meta = dcmread(path, stop_before_pixels=True, specific_tags=[]).file_meta
    return meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian


def _check_pixel_length(slice_: _Slice, source: Dataset | Path | str, rows: int, columns: int) -> None:
    """Native Pixel Data must hold exactly Rows x Columns samples: pydicom silently drops a
    surplus, and a header that does not describe its pixels must not be analysed. Checked
    before decoding, so that a shortfall is reported in these terms too, not as numpy's
    "cannot reshape"."""
    header = slice_.header
    syntax = header.file_meta.get("TransferSyntaxUID") if hasattr(header, "file_meta") else None
    if syntax is None or UID(syntax).is_compressed:
        return
    dataset = source if isinstance(source, Dataset) else dcmread(source, defer_size=256)
    if "PixelData" not in dataset:
        return
    raw = dataset.get_item("PixelData")  # the raw element: its length, without loading the value
    length = raw.length if hasattr(raw, "length") else len(dataset.PixelData)
    expected = rows * columns * int(header.get("BitsAllocated", 16)) // 8 * int(header.get("SamplesPerPixel", 1))
    if length is not None and not expected <= length <= expected + 1:  # one byte of padding keeps it even
        raise ValueError(
            f"instance {slice_.sop_instance_uid} has {length} bytes of Pixel Data, "
            f"{expected} expected for {rows} x {columns}"
        )


def assemble_volume(
    sources: Sequence[Source],
    *,
    series_instance_uid: str,
    max_gap_slices: int = 2,
    max_missing_fraction: float = 0.1,
    spacing_rtol: float = 0.1,
) -> CTVolume:
    """Build the HU volume of one series from its instances (datasets or file paths).

    Parameters
    ----------
    sources:
        Datasets or paths of the series' instances, in any order; instances of
        other series may be among them and are left out (and recorded).
    series_instance_uid:
        The series to assemble; the caller states it (selection chose it) rather
        than have it guessed from the majority of the files.
    max_gap_slices:
        Most consecutive missing slices a gap may have and still be filled.
    max_missing_fraction:
        Most of the volume, as a fraction of its slices, that may be filled in.
    spacing_rtol:
        How far (relative to the nominal spacing) a step between slices may be
        from a whole multiple of the nominal spacing.

    Paths are read twice, headers first (to sort and check) then pixels one file
    at a time into a preallocated array, so that memory is the volume plus one
    frame. The steps: read the headers, check they describe one stack, order the
    slices on the normal and place them on the acquired grid, decode the pixels.
    """
    if max_gap_slices < 0:
        raise ValueError("max_gap_slices must not be negative")
    if not 0 <= max_missing_fraction < 1:
        raise ValueError("max_missing_fraction must be in [0, 1)")
    warnings: list[AssemblyWarning] = []
    slices, excluded = _read_series(sources, series_instance_uid, warnings)
    plane = _check_plane(slices, warnings)
    slices, positions, along = _order(slices, plane.normal, warnings)
    if len(slices) == 1:
        grid = _single_slice_grid(slices[0].header, plane.normal)
    else:
        grid = _stack_grid(
            positions, along, plane.normal, warnings,
            max_gap_slices=max_gap_slices, max_missing_fraction=max_missing_fraction, spacing_rtol=spacing_rtol,
        )
    hu = _decode_slices(slices, grid.indices, plane.rows, plane.columns)
    volume = _volume(slices, plane, grid, hu, positions[0], series_instance_uid, warnings, excluded)
    for warning in warnings:
        logger.warning(
            "volume assembly: %s",
            warning,
            extra={"series_instance_uid": series_instance_uid, "stage": "volume"},
        )
    return volume


@dataclass(frozen=True)
class _Plane:
    """What every slice of the series shares: matrix, orientation, pixel spacing, frame of reference."""

    rows: int
    columns: int
    orientation: np.ndarray  # ImageOrientationPatient: row cosines, then column cosines
    pixel_spacing: np.ndarray  # (between rows, between columns)
    frame_of_reference_uid: str | None

    @property
    def normal(self) -> np.ndarray:
        """Row cosines x column cosines, normalised: the direction slices are ordered along."""
        normal = np.cross(self.orientation[:3], self.orientation[3:])
        return normal / np.linalg.norm(normal)


@dataclass(frozen=True)
class _Grid:
    """Where the ordered slices sit on the acquired grid, and the step from one slice to the next."""

    indices: np.ndarray  # grid index of each ordered slice; gaps are the missing ones
    step: np.ndarray  # patient-space vector between neighbouring slices (sheared when tilted)
    spacing_z: float  # distance between slice planes along the normal
    tilt_deg: float = 0.0

    @property
    def n_total(self) -> int:
        return int(self.indices[-1]) + 1


def _read_series(
    sources: Sequence[Source], series_instance_uid: str, warnings: list[AssemblyWarning]
) -> tuple[list[_Slice], list[str]]:
    """Read: the headers of the series' instances, each SOP Instance UID once; others excluded."""
    slices: list[_Slice] = []
    excluded: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for source in sources:
        header = _read_header(source)
        sop_uid = str(header.get("SOPInstanceUID", ""))
        if header.get("SeriesInstanceUID") != series_instance_uid:
            excluded.append(sop_uid)
            continue
        if sop_uid in seen:
            duplicates += 1
            continue
        seen.add(sop_uid)
        slices.append(_Slice(source=source, header=header, sop_instance_uid=sop_uid))
    if excluded:
        warnings.append(AssemblyWarning(
            AssemblyWarningKind.OTHER_SERIES, f"{len(excluded)} instance(s) of other series were among the sources and were left out"
        ))
    if duplicates:
        warnings.append(AssemblyWarning(
            AssemblyWarningKind.DUPLICATE_INSTANCES, f"{duplicates} duplicate instance(s) (same SOP Instance UID) were read once"
        ))
    if not slices:
        raise ValueError(f"no instance of series {series_instance_uid} among the sources")
    return slices, excluded


def _check_plane(slices: list[_Slice], warnings: list[AssemblyWarning]) -> _Plane:
    """Check: one frame per instance, and one matrix, orientation, pixel spacing and frame of reference."""
    first = slices[0].header
    for s in slices:
        if int(s.header.get("NumberOfFrames", 1) or 1) != 1:
            raise ValueError(
                "multi-frame (enhanced) CT is not supported: one instance per slice is required"
            )
    rows, columns = int(first.Rows), int(first.Columns)
    if any((int(s.header.Rows), int(s.header.Columns)) != (rows, columns) for s in slices):
        raise ValueError("all instances of a series must have the same Rows and Columns")

    orientation = _floats(first, "ImageOrientationPatient", 6)
    pixel_spacing = _floats(first, "PixelSpacing", 2)
    for s in slices[1:]:
        if np.abs(_floats(s.header, "ImageOrientationPatient", 6) - orientation).max() > _ORIENTATION_TOLERANCE:
            raise ValueError(
                "all instances must share ImageOrientationPatient (within 1e-3); "
                "a series mixing orientations is not one volume"
            )
        if not np.allclose(_floats(s.header, "PixelSpacing", 2), pixel_spacing, rtol=1e-4, atol=1e-6):
            raise ValueError("all instances of a series must share PixelSpacing")
    return _Plane(rows, columns, orientation, pixel_spacing, _frame_of_reference(slices, warnings))


def _frame_of_reference(slices: list[_Slice], warnings: list[AssemblyWarning]) -> str | None:
    """The one FrameOfReferenceUID of the slices, None (with a warning) when none has one."""
    frames_of_reference = {s.header.get("FrameOfReferenceUID") for s in slices}
    frames_of_reference.discard(None)
    frames_of_reference.discard("")
    if len(frames_of_reference) > 1:
        raise ValueError("instances of one series must share one FrameOfReferenceUID")
    frame_of_reference_uid = next(iter(frames_of_reference), None)
    if frame_of_reference_uid is None:
        warnings.append(AssemblyWarning(
            AssemblyWarningKind.NO_FRAME_OF_REFERENCE,
            "FrameOfReferenceUID is absent: positions are assumed to share one frame of reference; "
            "our objects use a Frame of Reference UID derived from the series UID",
        ))
    return frame_of_reference_uid


#: Two slices closer than this (mm) along the normal are at one position.
SAME_POSITION_MM = 1e-3


def _order(
    slices: list[_Slice], normal: np.ndarray, warnings: list[AssemblyWarning]
) -> tuple[list[_Slice], np.ndarray, np.ndarray]:
    """Order: ascending along the normal; returns the slices, their positions and distances along it.

    A PACS re-export can send a slice again under a new SOP Instance UID: of the instances
    at one position the one received last (``slices`` is in receipt order) is kept.
    """
    positions = np.stack([_floats(s.header, "ImagePositionPatient", 3) for s in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    keep = [k for i, k in enumerate(order) if i + 1 == len(order) or along[order[i + 1]] - along[k] > SAME_POSITION_MM]
    if len(keep) < len(order):
        _warn_repeated(slices, order, keep, warnings)
    return [slices[k] for k in keep], positions[keep], along[keep]


def _warn_repeated(slices: list[_Slice], order: np.ndarray, keep: list[int], warnings: list[AssemblyWarning]) -> None:
    """Say how many repeated instances were dropped, and how many differed in their pixels from the one kept."""
    kept = set(keep)
    differ = 0
    group: list[int] = []  # the instances at one position; in ``order`` the kept one comes last
    for k in order:
        group.append(int(k))
        if k in kept:
            if len(group) > 1:
                pixels = _pixel_bytes(slices[k].source)
                differ += sum(_pixel_bytes(slices[m].source) != pixels for m in group[:-1])
            group = []
    dropped = len(order) - len(keep)
    warnings.append(AssemblyWarning(
        AssemblyWarningKind.REPEATED_POSITION,
        f"{dropped} instances repeating a slice position dropped, the one received last kept "
        f"({dropped - differ} with identical pixel data, {differ} with different pixel data)",
    ))


def _pixel_bytes(source: Source) -> bytes:
    dataset = source if isinstance(source, Dataset) else dcmread(source)
    return bytes(dataset.get("PixelData") or b"")


def _single_slice_grid(header: Dataset, normal: np.ndarray) -> _Grid:
    """One slice: its z spacing is its SliceThickness."""
    thickness = header.get("SliceThickness")
    if thickness in (None, "") or float(thickness) <= 0:
        raise ValueError("a single-slice series needs a positive SliceThickness for its z spacing")
    spacing_z = float(thickness)
    return _Grid(indices=np.array([0]), step=normal * spacing_z, spacing_z=spacing_z)


def _stack_grid(
    positions: np.ndarray,
    along: np.ndarray,
    normal: np.ndarray,
    warnings: list[AssemblyWarning],
    *,
    max_gap_slices: int,
    max_missing_fraction: float,
    spacing_rtol: float,
) -> _Grid:
    """Place ordered slices on a regular grid: whole multiples of the nominal spacing, gaps allowed."""
    steps = np.diff(along)
    nominal = float(np.median(steps))
    if nominal <= 0 or steps.min() < spacing_rtol * nominal:
        raise ValueError(
            "two instances share one slice position: one instance per position is required "
            "(repeated or multi-phase acquisitions must be separate series)"
        )
    multiples = np.rint(steps / nominal)
    if np.any(np.abs(steps - multiples * nominal) > spacing_rtol * nominal):
        raise ValueError(
            "slice spacing is irregular (steps are not whole multiples of the nominal "
            f"{nominal:.3g} mm): variable-spacing series are not supported"
        )
    indices = np.concatenate([[0], np.cumsum(multiples).astype(int)])
    n_total = int(indices[-1]) + 1
    missing = n_total - len(along)
    largest_gap = int(multiples.max()) - 1
    if largest_gap > max_gap_slices or missing > max_missing_fraction * n_total:
        raise ValueError(
            f"{missing} slice(s) missing, at most {largest_gap} in a row: a gap may have at most "
            f"{max_gap_slices} missing slice(s) and all gaps at most "
            f"{max_missing_fraction:.0%} of the volume"
        )
    grid = _stacking_step(indices, positions, normal, nominal, warnings)
    if missing:
        gaps = [
            f"{int(m) - 1} between {along[k]:.1f} and {along[k + 1]:.1f} mm"
            for k, m in enumerate(multiples)
            if m > 1
        ]
        warnings.append(AssemblyWarning(
            AssemblyWarningKind.MISSING_SLICES,
            f"{missing} missing slice(s) filled by linear interpolation ({'; '.join(gaps)}); "
            "they have no source instance",
        ))
    return grid


def _stacking_step(
    indices: np.ndarray, positions: np.ndarray, normal: np.ndarray, nominal: float, warnings: list[AssemblyWarning]
) -> _Grid:
    """The step between slices, fitted to all positions; a step off the normal is gantry tilt."""
    # Least-squares line through the positions: its slope is the stacking
    # vector, parallel to the normal unless the gantry was tilted.
    design = np.stack([np.ones(len(indices)), indices], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, positions, rcond=None)
    step = coefficients[1]
    residual = np.abs(design @ coefficients - positions).max()
    if residual > max(0.05, 0.05 * nominal):
        raise ValueError(
            f"slice positions do not lie on a line (off by up to {residual:.2f} mm): "
            "the series is not one stack"
        )
    spacing_z = float(step @ normal)
    cosine = np.clip(spacing_z / np.linalg.norm(step), -1.0, 1.0)
    tilt_deg = float(np.degrees(np.arccos(cosine)))
    if tilt_deg <= _TILT_TOLERANCE_DEG:
        return _Grid(indices=indices, step=normal * spacing_z, spacing_z=spacing_z)
    warnings.append(AssemblyWarning(
        AssemblyWarningKind.GANTRY_TILT,
        f"gantry tilt of {tilt_deg:.2f} deg: the acquired (sheared) grid is kept and the "
        "affine carries the shear; the volume is not resampled",
    ))
    return _Grid(indices=indices, step=step, spacing_z=spacing_z, tilt_deg=tilt_deg)


def _decode_slices(slices: list[_Slice], indices: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Decode: each frame to HU into its grid slice, one frame at a time; then fill the gaps."""
    dtype = _hu_dtype([s.header for s in slices])
    hu = np.empty((int(indices[-1]) + 1, rows, columns), dtype=dtype)
    limit = np.iinfo(np.int16).max if dtype == np.int16 else np.inf
    for index, slice_ in zip(indices, slices):
        # float64 for one frame at a time: rescale output, or a LUT's unsigned output.
        values = apply_modality_lut(_decode(slice_, rows, columns), slice_.header)
        values = values.astype(np.float64, copy=False)
        np.clip(values, HU_FLOOR, limit, out=values)
        hu[index] = values
    _fill_gaps(hu, indices)
    return hu


def _volume(
    slices: list[_Slice],
    plane: _Plane,
    grid: _Grid,
    hu: np.ndarray,
    origin: np.ndarray,
    series_instance_uid: str,
    warnings: list[AssemblyWarning],
    excluded: list[str],
) -> CTVolume:
    """The volume with its affine (voxel index -> patient mm) and the way back to each source."""
    row_cosines, column_cosines = plane.orientation[:3], plane.orientation[3:]
    affine = np.eye(4)
    affine[:3, 0] = grid.step
    affine[:3, 1] = column_cosines * plane.pixel_spacing[0]
    affine[:3, 2] = row_cosines * plane.pixel_spacing[1]
    affine[:3, 3] = origin
    uids: list[str | None] = [None] * grid.n_total
    for index, slice_ in zip(grid.indices, slices):
        uids[index] = slice_.sop_instance_uid
    first = slices[0].header
    return CTVolume(
        hu=hu,
        spacing_mm=(grid.spacing_z, float(plane.pixel_spacing[0]), float(plane.pixel_spacing[1])),
        affine=affine,
        source_sop_instance_uids=tuple(uids),
        series_instance_uid=series_instance_uid,
        study_instance_uid=str(first.StudyInstanceUID) if "StudyInstanceUID" in first else None,
        frame_of_reference_uid=str(plane.frame_of_reference_uid) if plane.frame_of_reference_uid else None,
        image_orientation=tuple(float(v) for v in plane.orientation),  # type: ignore[arg-type]
        image_positions=origin + np.arange(grid.n_total)[:, None] * grid.step,
        gantry_tilt_deg=grid.tilt_deg,
        warnings=tuple(warnings),
        excluded_sop_instance_uids=tuple(excluded),
    )


def _fill_gaps(hu: np.ndarray, indices: np.ndarray) -> None:
    """Linear interpolation, in place, of the slices between known ``indices``."""
    for below, above in zip(indices[:-1], indices[1:]):
        for missing in range(below + 1, above):
            weight = (missing - below) / (above - below)
            blended = (1.0 - weight) * hu[below].astype(np.float32) + weight * hu[above]
            hu[missing] = np.rint(blended) if hu.dtype == np.int16 else blended
