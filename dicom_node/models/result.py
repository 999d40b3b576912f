"""What every model returns, and how lesion findings are measured from a label map.

Every model kind (classifier, U-Net, Mask R-CNN, the HU threshold baseline)
returns a :class:`ModelResult`: a label map on the *source* grid (so that the SEG
can be written frame for frame), one :class:`LesionFinding` per lesion, a
study-level probability and the positive/negative call derived from it. The SEG,
the SR and the key images are all built from this one type.

:func:`findings_from_labels` turns any raw prediction (a binary mask, an
instance label map, a thresholded probability map) into findings with the same
post-processing for every model: in-plane hole filling, 3D connected components,
removal of components below a minimum volume, and the measurements.

Connected components are computed here in numpy rather than with
``scipy.ndimage.label`` because scipy is not a dependency of the node. The
labelling works on runs (maximal stretches of foreground along the last axis):
a head CT has a few runs per image row, so the union-find runs over tens of
thousands of runs instead of millions of voxels, and every step is vectorised.

The volume is described by the :class:`VolumeLike` protocol because two kinds
of volume are measured: :class:`dicom_node.imaging.volume.CTVolume` (DICOM) and
the training readers' pseudo-volumes of PNG and NIfTI data, which have no
DICOM provenance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

import numpy as np

#: Fill holes a chunk of this many slices at a time, to bound temporary memory.
_SLICES_PER_CHUNK = 32


class VolumeLike(Protocol):
    """What the measurements need from a volume (``CTVolume`` has all of it)."""

    @property
    def hu(self) -> np.ndarray: ...  # (slices, rows, columns)

    @property
    def spacing_mm(self) -> tuple[float, float, float]: ...  # (z, y, x); z along the slice normal

    @property
    def affine(self) -> np.ndarray | None: ...  # (k, i, j, 1) -> patient mm, or None


class ModelKind(Enum):
    """The families of models the node runs."""

    CLASSIFIER = "classifier"  # study/slice probabilities only; an empty label map
    UNET = "unet"  # semantic segmentation: a probability map
    MASKRCNN = "maskrcnn"  # instance segmentation: masks with scores
    THRESHOLD = "threshold"  # the classical HU baseline, no weights


@dataclass(frozen=True)
class LesionFinding:
    """One lesion, measured on the source grid with the real voxel spacing.

    ``label`` is the lesion number and its value in the label map (1 = largest).
    ``longest_axial_diameter_mm`` is the largest distance between any two points
    of the lesion's pixel squares on one slice (the in-plane Feret diameter),
    maximised over slices; ``diameter_slice_index`` is that slice.
    ``centroid_index`` is (slice, row, column) in voxel units; the patient
    position is given when the volume has an affine.
    """

    label: int
    voxel_count: int
    volume_ml: float
    longest_axial_diameter_mm: float
    diameter_slice_index: int
    centroid_index: tuple[float, float, float]
    centroid_patient_mm: tuple[float, float, float] | None
    mean_hu: float
    confidence: float | None


class LabelledFindings(NamedTuple):
    """The cleaned label map (uint8, or uint16 beyond 255 lesions) and its findings."""

    label_map: np.ndarray
    findings: tuple[LesionFinding, ...]


@dataclass(frozen=True, eq=False)
class ModelResult:
    """The common output of every model; ``positive`` follows from the probability."""

    model_kind: ModelKind
    model_name: str
    model_version: str
    label_map: np.ndarray
    findings: tuple[LesionFinding, ...]
    study_probability: float
    decision_threshold: float
    slice_probabilities: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.label_map.ndim != 3:
            raise ValueError("label_map must be 3D (slices, rows, columns), on the source grid")
        if self.label_map.dtype not in (np.uint8, np.uint16):
            raise ValueError("label_map must be uint8 or uint16")
        if not 0.0 <= self.study_probability <= 1.0 or math.isnan(self.study_probability):
            raise ValueError("study_probability must be in [0, 1]")
        if not 0.0 < self.decision_threshold <= 1.0:
            raise ValueError("decision_threshold must be in (0, 1]")
        labels = [f.label for f in self.findings]
        if labels != list(range(1, len(labels) + 1)):
            raise ValueError("findings must be numbered 1..n in order, as in the label map")
        if self.label_map.size and int(self.label_map.max()) > len(labels):
            raise ValueError("the label map has labels without a finding")
        if self.slice_probabilities is not None and self.slice_probabilities.shape != (
            self.label_map.shape[0],
        ):
            raise ValueError("slice_probabilities needs one value per slice")

    @property
    def positive(self) -> bool:
        """The study-level call: probability at or above the model's decision threshold."""
        return self.study_probability >= self.decision_threshold


#: Find runs this many voxels at a time, to bound the temporary int8 copies.
_VOXELS_PER_RUN_CHUNK = 1 << 22


@dataclass(frozen=True)
class _Runs:
    """The foreground runs of an array along its last axis, in raster order."""

    leading: tuple[int, ...]  # the shape without the last axis
    width: int  # the length of the last axis
    line: np.ndarray  # flat index of the run's line in the leading shape
    start: np.ndarray  # first voxel of the run
    end: np.ndarray  # one past its last voxel

    @classmethod
    def of(cls, mask: np.ndarray) -> _Runs:
        width = mask.shape[-1]
        lines = mask.reshape(-1, width)
        per_chunk = max(1, _VOXELS_PER_RUN_CHUNK // (width + 2))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for first in range(0, lines.shape[0], per_chunk):
            chunk = lines[first : first + per_chunk]
            padded = np.zeros((chunk.shape[0], width + 2), dtype=np.int8)
            padded[:, 1:-1] = chunk
            edges = np.diff(padded, axis=1)
            start_line, start = np.nonzero(edges == 1)
            _, end = np.nonzero(edges == -1)
            parts.append((start_line + first, start, end))
        line, start, end = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return cls(leading=tuple(mask.shape[:-1]), width=width, line=line, start=start, end=end)

    @property
    def n_lines(self) -> int:
        return int(np.prod(self.leading, dtype=np.int64))

    def components(self, connect_axes: Sequence[int] | None) -> tuple[np.ndarray, int]:
        """A component number (1..n, raster order of first run) for every run, and n."""
        n_runs = self.line.size
        if n_runs == 0:
            return np.zeros(0, dtype=np.int32), 0
        leading, width = self.leading, self.width
        axes = range(len(leading)) if connect_axes is None else connect_axes
        if any(not 0 <= a < len(leading) for a in axes):
            raise ValueError("connect_axes must name axes other than the last one")
        # One global ordering of runs by (line, position), for searchsorted.
        key_stride = width + 2
        start_key = self.line * key_stride + self.start
        end_key = self.line * key_stride + self.end
        line_strides = np.cumprod((1,) + leading[::-1])[:-1][::-1]
        line_coords = np.unravel_index(self.line, leading)

        sources: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for axis in axes:
            runs = np.flatnonzero(line_coords[axis] < leading[axis] - 1)
            target_line = self.line[runs] + line_strides[axis]
            # The runs of the next line along ``axis`` that overlap [start, end)
            # form a contiguous range of the ordering: [lo, hi).
            lo = np.searchsorted(end_key, target_line * key_stride + self.start[runs], side="right")
            hi = np.searchsorted(start_key, target_line * key_stride + self.end[runs], side="left")
            counts = np.maximum(hi - lo, 0)
            total = int(counts.sum())
            if total == 0:
                continue
            sources.append(np.repeat(runs, counts))
            offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            targets.append(np.arange(total) + offsets)

        parent = np.arange(n_runs)
        if sources:
            a = np.concatenate(sources)
            b = np.concatenate(targets)
            # Union-find, vectorised: hook every root to the smallest root it
            # touches, then compress paths fully, until every edge joins equal roots.
            while True:
                root_a, root_b = parent[a], parent[b]
                differ = root_a != root_b
                if not differ.any():
                    break
                low = np.minimum(root_a[differ], root_b[differ])
                np.minimum.at(parent, root_a[differ], low)
                np.minimum.at(parent, root_b[differ], low)
                while True:
                    grand = parent[parent]
                    if np.array_equal(grand, parent):
                        break
                    parent = grand
        roots, run_labels = np.unique(parent, return_inverse=True)
        return run_labels.astype(np.int32) + 1, int(roots.size)

    def paint(self, values: np.ndarray, dtype: type, where: np.ndarray | None = None) -> np.ndarray:
        """An array of the mask's shape holding ``values[r]`` on run ``r`` (0 elsewhere).

        Differences at run starts and ends, then one cumulative sum per line:
        no per-voxel index arrays, which would cost 8 bytes per voxel.
        """
        line, start, end = self.line, self.start, self.end
        if where is not None:
            line, start, end, values = line[where], start[where], end[where], values[where]
        painted = np.zeros((self.n_lines, self.width), dtype=dtype)
        painted[line, start] = values
        inside = end < self.width  # a run reaching the line's end needs no closing step
        painted[line[inside], end[inside]] -= values[inside]
        np.cumsum(painted, axis=1, out=painted)
        return painted.reshape(self.leading + (self.width,))


def label_components(
    mask: np.ndarray, *, connect_axes: Sequence[int] | None = None
) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean array: (int32 labels 1..n, n).

    Labels are numbered in raster order of each component's first voxel.
    ``connect_axes`` lists the axes, other than the last one, along which
    neighbours connect (default: all, i.e. 6-connectivity in 3D). Pass ``(1,)``
    for a ``(slices, rows, cols)`` stack to label each slice on its own.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim < 1:
        raise ValueError("mask must have at least one dimension")
    if mask.ndim == 1:
        mask2 = mask[None]
        labels, n = label_components(mask2, connect_axes=())
        return labels[0], n
    runs = _Runs.of(mask)
    run_labels, n = runs.components(connect_axes)
    return runs.paint(run_labels, np.int32), n


def _bounding_slices(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, widened by ``pad``; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return None
        box.append(slice(max(0, present[0] - pad), min(mask.shape[axis], present[-1] + 1 + pad)))
    return tuple(box)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice of a ``(slices, rows, cols)`` mask (or one 2D mask).

    A hole is background that cannot reach the slice's border through
    background (4-connectivity). Done per slice because what matters is what
    the reader sees enclosed on an axial image, and because a head's openings
    (foramen magnum) would make 3D filling leak.
    """
    squeeze = mask.ndim == 2
    mask3 = np.asarray(mask, dtype=bool)[None] if squeeze else np.asarray(mask, dtype=bool)
    if mask3.ndim != 3:
        raise ValueError("fill_holes_2d takes (rows, cols) or (slices, rows, cols)")
    filled = mask3.copy()
    box = _bounding_slices(mask3.any(axis=0), pad=1)
    if box is not None:
        rows, cols = box
        for first in range(0, mask3.shape[0], _SLICES_PER_CHUNK):
            chunk = slice(first, first + _SLICES_PER_CHUNK)
            background = _Runs.of(~mask3[chunk, rows, cols])
            run_labels, n = background.components(connect_axes=(1,))
            # Background touching the box's border is outside (the box is padded
            # by one pixel, or is the image border itself).
            row = np.unravel_index(background.line, background.leading)[1]
            touches = (row == 0) | (row == background.leading[1] - 1)
            touches |= (background.start == 0) | (background.end == background.width)
            outside = np.zeros(n + 1, dtype=bool)
            outside[run_labels[touches]] = True
            holes = ~outside[run_labels]
            if holes.any():
                ones = np.ones(run_labels.size, dtype=np.int8)
                filled[chunk, rows, cols] |= background.paint(ones, np.int8, where=holes).view(bool)
    return filled[0] if squeeze else filled


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean array (all False if empty).

    Chosen from the runs' lengths and painted as booleans, so that no int32
    label image of the whole (possibly 1000-slice) mask is ever made.
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = _bounding_slices(np.asarray(mask, dtype=bool))
    if box is None:
        return out
    runs = _Runs.of(np.asarray(mask[box], dtype=bool))
    run_labels, n = runs.components(connect_axes=None)
    sizes = np.bincount(run_labels, weights=runs.end - runs.start, minlength=n + 1)
    largest = int(np.argmax(sizes[1:])) + 1
    ones = np.ones(run_labels.size, dtype=np.int8)
    out[box] = runs.paint(ones, np.int8, where=run_labels == largest).view(bool)
    return out


def _feret_diameter_mm(rows: np.ndarray, cols: np.ndarray, dy: float, dx: float) -> float:
    """Largest distance between two points of the pixel squares at (rows, cols), in mm.

    Only each row's leftmost and rightmost pixel can lie on the convex hull, so
    only their corners are compared: a few hundred points, all pairs.
    """
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    first = np.concatenate([[True], rows[1:] != rows[:-1]])
    last = np.concatenate([rows[1:] != rows[:-1], [True]])
    extreme_rows = np.concatenate([rows[first], rows[last]]).astype(float)
    extreme_cols = np.concatenate([cols[first] - 0.5, cols[last] + 0.5]).astype(float)
    y = np.concatenate([extreme_rows - 0.5, extreme_rows + 0.5]) * dy
    x = np.concatenate([extreme_cols, extreme_cols]) * dx
    points = np.stack([y, x], axis=1)
    distances = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1))
    return float(distances.max())


def _component_confidences(
    confidences: np.ndarray | Mapping[int, float] | float | None,
    labels: np.ndarray,
    original: np.ndarray,
    voxel_labels: np.ndarray,
    voxel_index: tuple[np.ndarray, ...],
    n: int,
) -> list[float | None]:
    if confidences is None:
        return [None] * n
    if isinstance(confidences, (int, float)):
        if not 0.0 <= float(confidences) <= 1.0:
            raise ValueError("a confidence must be in [0, 1]")
        return [float(confidences)] * n
    if isinstance(confidences, np.ndarray):
        if confidences.shape != labels.shape:
            raise ValueError("a probability map must have the label map's shape")
        sums = np.bincount(voxel_labels, weights=confidences[voxel_index], minlength=n + 1)
        counts = np.bincount(voxel_labels, minlength=n + 1)
        return [float(sums[k] / counts[k]) for k in range(1, n + 1)]
    # Instance scores: a component is as confident as the best instance in it.
    # Voxels added by hole filling belong to no instance and score 0.
    instances = original[voxel_index].astype(np.int64)
    values = np.unique(instances)
    table = np.array([float(confidences.get(int(v), 0.0)) if v else 0.0 for v in values])
    best = np.zeros(n + 1)
    np.maximum.at(best, voxel_labels, table[np.searchsorted(values, instances)])
    return [float(b) for b in best[1:]]


def findings_from_labels(
    label_map: np.ndarray,
    volume: VolumeLike,
    *,
    confidences: np.ndarray | Mapping[int, float] | float | None = None,
    min_volume_ml: float = 0.0,
    fill_holes: bool = True,
) -> LabelledFindings:
    """Clean a raw prediction on the source grid and measure each lesion.

    Parameters
    ----------
    label_map:
        Nonzero where a model predicts haemorrhage: a boolean mask or an instance
        label map, shape ``(slices, rows, columns)`` like ``volume.hu``.
    volume:
        The volume the prediction is on; its spacing gives mL and mm.
    confidences:
        A probability map (component confidence = its mean probability), a
        mapping from the input's instance labels to scores (confidence = the best
        instance in the component), one number for all, or None (unknown).
    min_volume_ml:
        Components smaller than this are dropped (noise, partial volume).
    fill_holes:
        Fill in-plane holes of the mask first (a clot's darker core is still clot).

    Lesions are 6-connected 3D components, numbered by decreasing volume
    (ties: raster order); the returned label map uses those numbers.
    """
    if label_map.shape != volume.hu.shape:
        raise ValueError(
            f"label map shape {label_map.shape} differs from the volume's {volume.hu.shape}: "
            "predictions must be mapped back to the source grid first"
        )
    if min_volume_ml < 0:
        raise ValueError("min_volume_ml must not be negative")
    dz, dy, dx = (float(s) for s in volume.spacing_mm)
    voxel_ml = dz * dy * dx / 1000.0
    mask = label_map != 0
    if fill_holes:
        mask = fill_holes_2d(mask)
    out = np.zeros(label_map.shape, dtype=np.uint8)
    box = _bounding_slices(mask)
    if box is None:
        return LabelledFindings(label_map=out, findings=())

    labels, n = label_components(mask[box])
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(counts[1:] * voxel_ml >= min_volume_ml) + 1
    # Largest first; a stable sort keeps raster order among equals.
    keep = keep[np.argsort(-counts[keep], kind="stable")]
    if keep.size > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 lesions: the prediction is noise, not findings")
    renumber = np.zeros(n + 1, dtype=np.uint16)
    renumber[keep] = np.arange(1, keep.size + 1)
    relabelled = renumber[labels]
    if keep.size > np.iinfo(np.uint8).max:
        out = np.zeros(label_map.shape, dtype=np.uint16)
    out[box] = relabelled
    n_kept = int(keep.size)
    if n_kept == 0:
        return LabelledFindings(label_map=out, findings=())

    local_index = np.nonzero(relabelled)
    voxel_labels = relabelled[local_index].astype(np.intp)
    offsets = [s.start for s in box]
    voxel_index = tuple(ix + off for ix, off in zip(local_index, offsets))
    hu_values = volume.hu[voxel_index].astype(np.float64)
    sizes = np.bincount(voxel_labels, minlength=n_kept + 1)
    hu_sums = np.bincount(voxel_labels, weights=hu_values, minlength=n_kept + 1)
    centroid_sums = [np.bincount(voxel_labels, weights=ix, minlength=n_kept + 1) for ix in voxel_index]
    scores = _component_confidences(
        confidences, out, label_map, voxel_labels, voxel_index, n_kept
    )

    # Voxels grouped by lesion, each group still in raster order (stable sort).
    by_lesion = np.argsort(voxel_labels, kind="stable")
    bounds = np.searchsorted(voxel_labels[by_lesion], np.arange(1, n_kept + 2))
    findings = []
    for label in range(1, n_kept + 1):
        members = by_lesion[bounds[label - 1] : bounds[label]]
        k, i, j = (ix[members] for ix in voxel_index)
        best_diameter, best_slice = -1.0, int(k[0])
        slice_bounds = np.flatnonzero(np.diff(k)) + 1
        for part in np.split(np.arange(k.size), slice_bounds):
            diameter = _feret_diameter_mm(i[part], j[part], dy, dx)
            if diameter > best_diameter:
                best_diameter, best_slice = diameter, int(k[part[0]])
        size = int(sizes[label])
        centroid = tuple(float(c[label] / size) for c in centroid_sums)
        patient = None
        if volume.affine is not None:
            patient = tuple(float(v) for v in volume.affine[:3, :3] @ np.array(centroid) + volume.affine[:3, 3])
        findings.append(
            LesionFinding(
                label=label,
                voxel_count=size,
                volume_ml=size * voxel_ml,
                longest_axial_diameter_mm=best_diameter,
                diameter_slice_index=best_slice,
                centroid_index=centroid,  # type: ignore[arg-type]
                centroid_patient_mm=patient,  # type: ignore[arg-type]
                mean_hu=float(hu_sums[label] / size),
                confidence=scores[label - 1],
            )
        )
    return LabelledFindings(label_map=out, findings=tuple(findings))
