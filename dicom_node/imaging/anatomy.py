"""Where the skull is: the intracranial space of a head CT, and whether an image shows a head.

Both answers come from HU alone, so they hold for anonymised exports whose
headers name no body part, and both come from one analysis of the skull:

1. **Coarse grid.** Each slice is reduced to blocks of about
   :attr:`AnatomyParameters.grid_mm` (2 mm): a block is *bone* when any of its
   pixels reaches ``bone_hu`` (so a thin temporal squama is never lost), and
   its soft-tissue value is the mean of its non-bone pixels. Everything below
   runs on this grid (about 16 times fewer pixels), which keeps a 240-slice
   512x512 study within the 2 s budget.
2. **The bony ring, slice by slice.** The bone is closed in-plane by a disc of
   ``closing_mm``: gaps narrower than about twice that (sutures, foramina, the
   openings into the sinuses and orbits at the skull base) are bridged, and the
   region the closed ring encloses is filled. A slice whose ring is open wider
   than that (a craniectomy) falls back to the convex hull of its bone, but
   only when one bone arc dominates the slice and spans at least
   ``hull_min_coverage`` of the turn around its centre, which a skull with a
   flap missing does and the jaw, face and neck do not.
3. **Soft tissue inside.** Enclosed blocks that are mostly not bone and whose
   soft-tissue value lies in ``soft_tissue_hu`` (CSF, brain, blood, enhancing
   vessels) are candidates; air (sinuses, mastoid cells) and fat (orbits) are not.
4. **One 3D space.** Up to ``bridge_mm`` of slices without candidates between
   slices with candidates (where a craniectomy begins, a corrupt slice) get
   what their neighbours share. Candidates are eroded by ``break_mm`` in-plane, which
   breaks thin bridges (optic canals, a jugular foramen), the largest
   6-connected 3D component is kept, which leaves out the neck, face and
   orbits, and the component is dilated back within the candidates.
5. **Below the foramen magnum.** The cord's canal is enclosed by the vertebral
   ring and connects to the brain, so going down from the widest slice, the
   first slice smaller than ``min_slice_area_mm2`` and everything below it are
   cut off. Then each slice's holes (calcifications, a shunt) are filled.

What is not handled, by design: a skull defect wider than the hull rule
accepts (a hemicraniectomy leaving less than ``hull_min_coverage`` of the
ring) loses that part of the space on those slices; brain herniated out past
the line joining the bone edges is outside; and a study cut off above the
foramen magnum keeps all of its lowest slices. The gate's margin
(:mod:`dicom_node.models.gating`) absorbs the 2 mm grid and the partial-volume
rim along the inner table.

Slices are analysed on the acquired grid, so a gantry tilt changes nothing in
plane; it only shears the 3D connectivity, by far less than a block per slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from dicom_node.imaging.morphology import (
    close_in_plane,
    dilate_in_plane,
    erode_in_plane,
    fill_holes_2d,
    label_components,
    largest_component,
)

if TYPE_CHECKING:
    from dicom_node.imaging.volume import CTVolume

#: Work this many slices at a time on the full-resolution grid, to bound memory.
_SLICES_PER_CHUNK = 16
#: Angular bins (of 10 degrees) for how much of the turn around its centre a bone arc covers.
_ANGLE_BINS = 36


@dataclass(frozen=True)
class AnatomyParameters:
    """The thresholds of the analysis; defaults are set for adult head CT in HU."""

    bone_hu: float = 300.0
    soft_tissue_hu: tuple[float, float] = (-40.0, 200.0)
    grid_mm: float = 2.0
    closing_mm: float = 8.0
    #: Bone both within this distance above and below a pixel closes it too (an opening seen on one slice only).
    z_closing_mm: float = 4.0
    #: Slices with no space over at most this distance, between slices with space, get what both sides share.
    bridge_mm: float = 10.0
    hull_min_coverage: float = 0.65
    break_mm: float = 4.0
    min_slice_area_mm2: float = 1000.0
    #: A slice shows a skull ring when the region it encloses is at least this large...
    ring_min_area_mm2: float = 2500.0
    #: ...no wider or longer than this (an adult skull's inside is about 150 x 185 mm)...
    ring_max_extent_mm: float = 215.0
    #: ...and mostly soft tissue (a rib cage encloses lungs, a skull encloses brain).
    ring_min_soft_fraction: float = 0.7

    def __post_init__(self) -> None:
        if self.grid_mm <= 0 or self.closing_mm < 0 or self.break_mm < 0:
            raise ValueError("grid_mm must be positive; closing_mm and break_mm must not be negative")
        if not self.soft_tissue_hu[0] < self.soft_tissue_hu[1] < self.bone_hu:
            raise ValueError("soft_tissue_hu must be an increasing pair below bone_hu")
        if not 0 < self.hull_min_coverage <= 1 or not 0 < self.ring_min_soft_fraction <= 1:
            raise ValueError("hull_min_coverage and ring_min_soft_fraction are fractions in (0, 1]")


@dataclass(frozen=True, eq=False)
class CoarseSlices:
    """The per-block summary of every slice (step 1) and the enclosed regions (step 2)."""

    bone: np.ndarray  # any pixel of the block is bone
    mostly_bone: np.ndarray  # at least half of the block is bone
    soft: np.ndarray  # the block's non-bone mean is in the soft-tissue range
    enclosed: np.ndarray  # inside the closed bony ring (not itself closed bone)
    factors: tuple[int, int]  # source pixels per block, (rows, cols)
    block_mm: tuple[float, float]  # block size in mm, (rows, cols)
    source_shape: tuple[int, int, int]

    @property
    def block_area_mm2(self) -> float:
        return self.block_mm[0] * self.block_mm[1]


def _block_factors(spacing_mm: tuple[float, float, float], grid_mm: float) -> tuple[int, int]:
    _, dy, dx = spacing_mm
    return max(1, round(grid_mm / dy)), max(1, round(grid_mm / dx))


def _block_sums(values: np.ndarray, factors: tuple[int, int], dtype: type) -> np.ndarray:
    """Sums over ``fy x fx`` blocks of ``(slices, rows, cols)``: whole rows first, the fast way for numpy."""
    slices, rows, cols = values.shape
    fy, fx = factors
    by_rows = values.reshape(slices, rows // fy, fy, cols).sum(axis=2, dtype=dtype)
    return by_rows.reshape(slices, rows // fy, cols // fx, fx).sum(axis=3, dtype=dtype)


def _summarise_blocks(hu: np.ndarray, factors: tuple[int, int], parameters: AnatomyParameters) -> tuple[np.ndarray, ...]:
    """Bone (any), bone (at least half) and soft tissue per block; the image is padded with air."""
    fy, fx = factors
    slices, rows, cols = hu.shape
    out_rows, out_cols = math.ceil(rows / fy), math.ceil(cols / fx)
    bone_any = np.zeros((slices, out_rows, out_cols), dtype=bool)
    mostly_bone = np.zeros_like(bone_any)
    soft = np.zeros_like(bone_any)
    low, high = parameters.soft_tissue_hu
    pad = ((0, 0), (0, out_rows * fy - rows), (0, out_cols * fx - cols))
    for first in range(0, slices, _SLICES_PER_CHUNK):
        chunk = hu[first : first + _SLICES_PER_CHUNK]
        if pad[1][1] or pad[2][1]:
            chunk = np.pad(chunk, pad, constant_values=-1024)
        bone = chunk >= parameters.bone_hu
        bone_count = _block_sums(bone.view(np.uint8), factors, np.int32)
        soft_sum = _block_sums(np.where(bone, chunk.dtype.type(0), chunk), factors, np.float64 if chunk.dtype.kind == "f" else np.int32)
        soft_count = fy * fx - bone_count
        mean = soft_sum / np.maximum(soft_count, 1)
        part = slice(first, first + chunk.shape[0])
        bone_any[part] = bone_count > 0
        mostly_bone[part] = 2 * bone_count >= fy * fx
        soft[part] = (soft_count > 0) & (mean >= low) & (mean <= high)
    return bone_any, mostly_bone, soft


def _close_across_slices(bone: np.ndarray, reach_slices: float) -> np.ndarray:
    """Bone, plus every pixel with bone both in the ``reach`` slices above and in those below.

    A ring that is open on one slice only (the thin wall of a frontal sinus, a
    partial-volume gap) is closed by its neighbours, where an in-plane closing
    would need a radius as wide as the gap.
    """
    reach = max(1, round(reach_slices))
    above = np.zeros_like(bone)
    below = np.zeros_like(bone)
    for step in range(1, min(reach, bone.shape[0] - 1) + 1):
        above[:-step] |= bone[step:]
        below[step:] |= bone[:-step]
    return bone | (above & below)


def summarise_slices(volume: CTVolume, parameters: AnatomyParameters | None = None) -> CoarseSlices:
    """Steps 1 and 2 of the module docstring: the coarse grid and what each slice's closed ring encloses."""
    parameters = parameters or AnatomyParameters()
    hu = volume.hu
    if hu.ndim != 3 or 0 in hu.shape:
        raise ValueError("the volume must be a non-empty (slices, rows, columns) array")
    factors = _block_factors(volume.spacing_mm, parameters.grid_mm)
    _, dy, dx = (float(s) for s in volume.spacing_mm)
    block_mm = (dy * factors[0], dx * factors[1])
    bone, mostly_bone, soft = _summarise_blocks(hu, factors, parameters)
    closed = close_in_plane(
        _close_across_slices(bone, parameters.z_closing_mm / float(volume.spacing_mm[0])),
        parameters.closing_mm / block_mm[0],
        parameters.closing_mm / block_mm[1],
    )
    enclosed = fill_holes_2d(closed) & ~closed
    return CoarseSlices(
        bone=bone,
        mostly_bone=mostly_bone,
        soft=soft,
        enclosed=enclosed,
        factors=factors,
        block_mm=block_mm,
        source_shape=tuple(int(s) for s in hu.shape),  # type: ignore[arg-type]
    )


def _extent_mm(region: np.ndarray, block_mm: tuple[float, float]) -> float:
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    return max((rows[-1] - rows[0] + 1) * block_mm[0], (cols[-1] - cols[0] + 1) * block_mm[1])


def ring_slices(coarse: CoarseSlices, parameters: AnatomyParameters | None = None) -> np.ndarray:
    """Per slice: does a closed skull ring enclose a head-sized region of soft tissue?"""
    parameters = parameters or AnatomyParameters()
    enclosed_area = coarse.enclosed.sum(axis=(1, 2)) * coarse.block_area_mm2
    rings = np.zeros(coarse.enclosed.shape[0], dtype=bool)
    for k in np.flatnonzero(enclosed_area >= parameters.ring_min_area_mm2):
        region = coarse.enclosed[k]
        soft_fraction = (region & coarse.soft[k]).sum() / region.sum()
        rings[k] = (
            soft_fraction >= parameters.ring_min_soft_fraction
            and _extent_mm(region, coarse.block_mm) <= parameters.ring_max_extent_mm
        )
    return rings


def _hull_region(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """The pixels of ``shape`` inside the convex hull of ``points`` (row, col); None if degenerate."""
    try:
        hull = ConvexHull(points)
    except (QhullError, ValueError):
        return None
    low = points.min(axis=0).astype(int)
    high = points.max(axis=0).astype(int) + 1
    rows, cols = np.mgrid[low[0] : high[0], low[1] : high[1]]
    grid = np.stack([rows.ravel(), cols.ravel()], axis=1).astype(float)
    # A point is inside when it is on the inner side of every facet (plus half a pixel).
    inside = (grid @ hull.equations[:, :2].T + hull.equations[:, 2] <= 0.5).all(axis=1)
    region = np.zeros(shape, dtype=bool)
    region[low[0] : high[0], low[1] : high[1]] = inside.reshape(rows.shape)
    return region


def _row_ends(points: np.ndarray) -> np.ndarray:
    """The first and last point of each row: the only ones that can be hull vertices."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    rows = points[order, 0]
    first = np.concatenate([[True], rows[1:] != rows[:-1]])
    last = np.concatenate([rows[1:] != rows[:-1], [True]])
    return np.concatenate([points[order][first], points[order][last]])


def _angular_coverage(points: np.ndarray, centre: np.ndarray, block_mm: tuple[float, float]) -> float:
    """The fraction of 10-degree sectors around ``centre`` that hold a point."""
    offsets = (points - centre) * np.asarray(block_mm)
    angles = np.arctan2(offsets[:, 0], offsets[:, 1])
    bins = np.floor((angles + np.pi) / (2 * np.pi) * _ANGLE_BINS).astype(int) % _ANGLE_BINS
    return np.unique(bins).size / _ANGLE_BINS


def _hull_fallback(coarse: CoarseSlices, k: int, parameters: AnatomyParameters) -> np.ndarray | None:
    """The inside of slice ``k``'s dominant bone arc when the ring is open too wide to close (a craniectomy).

    Cheap tests first: a dominant arc, head-sized, spanning enough of the turn
    around the centre of its bounding box; the hull only then.
    """
    bone = coarse.bone[k]
    total = int(bone.sum())
    if total * coarse.block_area_mm2 < parameters.ring_min_area_mm2 / 10:
        return None
    labels, n = label_components(bone)
    sizes = np.bincount(labels.ravel())[1:]
    if sizes.max() < 0.6 * total:
        return None  # no dominant arc: face, jaw and skull base bones, not a skull with a flap missing
    points = np.argwhere(labels == int(np.argmax(sizes)) + 1).astype(float)
    low, high = points.min(axis=0), points.max(axis=0)
    extent = (high - low + 1) * np.asarray(coarse.block_mm)
    if extent.max() > parameters.ring_max_extent_mm + 20 or extent.min() * extent.max() < parameters.ring_min_area_mm2:
        return None
    if points.shape[0] > 0.5 * np.prod(high - low + 1):
        return None  # a plate or a cap of bone (skull base floor, vertex), not an arc around something
    if _angular_coverage(points, (low + high) / 2, coarse.block_mm) < parameters.hull_min_coverage:
        return None
    hull = _hull_region(_row_ends(points), bone.shape)
    if hull is None:
        return None
    inside = hull & ~bone
    if inside.sum() * coarse.block_area_mm2 < parameters.ring_min_area_mm2:
        return None
    return inside


def _inferior_first(volume: CTVolume) -> bool:
    """Is slice 0 the most inferior? True unless the affine says the slices run downwards."""
    affine = volume.affine
    return affine is None or float(affine[2, 0]) >= 0


@dataclass(frozen=True, eq=False)
class IntracranialSpace:
    """The space inside the skull, on the coarse grid, and the way back to the source grid.

    ``hull_slices`` are the slices whose space came from the convex-hull
    fallback (an open ring); ``ring_slices`` those with a closed skull ring.
    """

    coarse_mask: np.ndarray
    factors: tuple[int, int]
    block_mm: tuple[float, float]
    source_shape: tuple[int, int, int]
    ring_slices: np.ndarray
    hull_slices: np.ndarray

    def mask(self, *, margin_mm: float = 0.0, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """The space on the source grid (bool), grown in-plane by ``margin_mm``.

        ``box`` (slices of the source grid with steps of 1, e.g. a prediction's
        bounding box) limits the result to that part of the volume, so that a
        1000-slice study does not need a full-size mask to check a few lesions.
        """
        if margin_mm < 0:
            raise ValueError("margin_mm must not be negative")
        slices, rows, cols = self.source_shape
        box = box or (slice(0, slices), slice(0, rows), slice(0, cols))
        (z0, z1, _), (r0, r1, _), (c0, c1, _) = (b.indices(n) for b, n in zip(box, self.source_shape, strict=True))
        fy, fx = self.factors
        coarse = self.coarse_mask[z0:z1]
        if margin_mm > 0:
            coarse = dilate_in_plane(coarse, margin_mm / self.block_mm[0], margin_mm / self.block_mm[1])
        coarse = coarse[:, r0 // fy : -(-r1 // fy), c0 // fx : -(-c1 // fx)]
        fine = np.repeat(np.repeat(coarse, fy, axis=1), fx, axis=2)
        return fine[:, r0 % fy : r0 % fy + (r1 - r0), c0 % fx : c0 % fx + (c1 - c0)]

    def volume_ml(self, slice_spacing_mm: float) -> float:
        """The space's volume; ``slice_spacing_mm`` is the distance between slice planes."""
        return float(self.coarse_mask.sum()) * self.block_mm[0] * self.block_mm[1] * slice_spacing_mm / 1000.0


def _candidates(coarse: CoarseSlices, parameters: AnatomyParameters) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: soft tissue inside the ring (or inside the hull where the ring is open); the hull slices."""
    candidate = coarse.enclosed & ~coarse.mostly_bone & coarse.soft
    area_mm2 = coarse.enclosed.sum(axis=(1, 2)) * coarse.block_area_mm2
    hull_slices = np.zeros(candidate.shape[0], dtype=bool)
    for k in np.flatnonzero(area_mm2 < parameters.ring_min_area_mm2):
        inside = _hull_fallback(coarse, k, parameters)
        if inside is not None:
            candidate[k] = inside & ~coarse.mostly_bone[k] & coarse.soft[k]
            hull_slices[k] = True
    return candidate, hull_slices


def _bridge_empty_slices(candidate: np.ndarray, allowed: np.ndarray, max_gap: int) -> np.ndarray:
    """Fill short runs of empty slices between non-empty ones with what their neighbours share.

    A ring open too wide on a slice or two (where a craniectomy begins, a
    missing or corrupt slice) would otherwise split the space in two, and the
    largest component would keep only one part. The filled region is the
    intersection of the nearest slices with space above and below, restricted
    to soft tissue: the brain does not move much over ``max_gap`` slices.
    """
    present = candidate.any(axis=(1, 2))
    filled = np.flatnonzero(present)
    if filled.size < 2:
        return candidate
    out = candidate.copy()
    for below, above in zip(filled[:-1], filled[1:], strict=True):
        if 1 < above - below <= max_gap + 1:
            shared = candidate[below] & candidate[above]
            out[below + 1 : above] = shared & allowed[below + 1 : above]
    return out


def intracranial_space(volume: CTVolume, parameters: AnatomyParameters | None = None) -> IntracranialSpace:
    """The intracranial space of ``volume`` (steps 1-5 of the module docstring)."""
    parameters = parameters or AnatomyParameters()
    coarse = summarise_slices(volume, parameters)
    candidate, hull_slices = _candidates(coarse, parameters)
    bridge = max(1, round(parameters.bridge_mm / float(volume.spacing_mm[0])))
    candidate = _bridge_empty_slices(candidate, coarse.soft & ~coarse.mostly_bone, bridge)
    break_rows = parameters.break_mm / coarse.block_mm[0]
    break_cols = parameters.break_mm / coarse.block_mm[1]
    core = largest_component(erode_in_plane(candidate, break_rows, break_cols))
    space = dilate_in_plane(core, break_rows + 1, break_cols + 1) & candidate
    space = _cut_below_foramen_magnum(space, coarse.block_area_mm2, parameters, _inferior_first(volume))
    space = fill_holes_2d(space)
    return IntracranialSpace(
        coarse_mask=space,
        factors=coarse.factors,
        block_mm=coarse.block_mm,
        source_shape=coarse.source_shape,
        ring_slices=ring_slices(coarse, parameters),
        hull_slices=hull_slices,
    )


def _cut_below_foramen_magnum(
    space: np.ndarray, block_area_mm2: float, parameters: AnatomyParameters, inferior_first: bool
) -> np.ndarray:
    """Step 5: from the widest slice down, cut at the first slice smaller than the minimum area."""
    area = space.sum(axis=(1, 2)) * block_area_mm2
    if not area.any():
        return space
    widest = int(np.argmax(area))
    below = range(widest, -1, -1) if inferior_first else range(widest, space.shape[0])
    for k in below:
        if area[k] < parameters.min_slice_area_mm2:
            space = space.copy()
            if inferior_first:
                space[: k + 1] = False
            else:
                space[k:] = False
            break
    return space


@dataclass(frozen=True)
class HeadEvidence:
    """What the image says about being a head: the decision and the figures behind it."""

    is_head: bool
    ring_slices: int
    n_slices: int
    field_of_view_mm: float
    z_coverage_mm: float

    def describe(self) -> str:
        """The figures as a reason, e.g. 'skull ring on 212/238 slices, 230 mm FOV, 150 mm z'."""
        return (
            f"skull ring on {self.ring_slices}/{self.n_slices} slices, "
            f"{self.field_of_view_mm:.0f} mm FOV, {self.z_coverage_mm:.0f} mm z"
        )


@dataclass(frozen=True)
class HeadRule:
    """When the figures of :class:`HeadEvidence` make a head.

    The field of view is reported but not a criterion: head protocols are
    reconstructed from 180 to 500 mm, while the ring's own size (at most
    ``ring_max_extent_mm`` inside) already tells a skull from a thorax or a pelvis.
    """

    min_ring_fraction: float = 0.25
    max_z_coverage_mm: float = 400.0


def head_from_image(
    volume: CTVolume,
    parameters: AnatomyParameters | None = None,
    rule: HeadRule | None = None,
) -> HeadEvidence:
    """Decide from the pixels whether ``volume`` is a head: a skull ring on enough slices, a head's z extent.

    A head CT shows a closed ring around brain on most slices from the skull
    base to near the vertex (a skull with a flap missing counts where the hull
    rule of :func:`intracranial_space` accepts its arc); a chest shows a rib cage around lungs, an abdomen
    or a neck no ring at all. A series reaching further in z than a head, neck
    included, is not a head series even if it starts at one.
    """
    parameters = parameters or AnatomyParameters()
    rule = rule or HeadRule()
    coarse = summarise_slices(volume, parameters)
    _, hull_slices = _candidates(coarse, parameters)
    rings = int((ring_slices(coarse, parameters) | hull_slices).sum())
    n_slices, rows, cols = volume.hu.shape
    dz, dy, dx = (float(s) for s in volume.spacing_mm)
    z_coverage = n_slices * dz
    is_head = rings >= max(1, rule.min_ring_fraction * n_slices) and z_coverage <= rule.max_z_coverage_mm
    return HeadEvidence(
        is_head=bool(is_head),
        ring_slices=rings,
        n_slices=n_slices,
        field_of_view_mm=max(rows * dy, cols * dx),
        z_coverage_mm=z_coverage,
    )
