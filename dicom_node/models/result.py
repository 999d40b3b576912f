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

Connected components and hole filling come from
:mod:`dicom_node.imaging.morphology`, the one module for region operations.
The volume is described by the :class:`VolumeLike` protocol, which
:class:`dicom_node.imaging.volume.CTVolume` and the training readers'
pseudo-volumes of PNG and NIfTI data satisfy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple, Protocol

import numpy as np

from dicom_node.imaging.morphology import bounding_box, fill_holes_2d, label_components


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


@dataclass(frozen=True)
class GateReport:
    """What the intracranial gate (:mod:`dicom_node.models.gating`) did to a result's findings."""

    kept: int
    dropped: int  # mostly outside the skull
    clipped_voxels: int  # voxels of kept findings that lay outside
    dense: int = 0  # denser than blood (median HU over the ceiling): contrast, calcification, bone
    skull_found: bool = True  # False: no intracranial space found, nothing was clipped or dropped as outside


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
    gate: GateReport | None = None  # None: the result did not pass the intracranial gate

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
    (ties: raster order); the returned label map uses those numbers. The steps:
    check, clean (fill holes), number the lesions, score them, measure them.
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
    numbered, voxels = _number_lesions(mask, voxel_ml, min_volume_ml)
    if voxels is None:
        return LabelledFindings(label_map=numbered, findings=())
    scores = _component_confidences(confidences, numbered, label_map, voxels.labels, voxels.index, voxels.count)
    return LabelledFindings(label_map=numbered, findings=_measure(voxels, volume, scores, voxel_ml))


@dataclass(frozen=True)
class _LesionVoxels:
    """Every voxel of the kept lesions: its lesion number and its ``(k, i, j)`` index in the volume.

    Per-lesion sums are one ``bincount`` over all voxels, not one pass per lesion.
    """

    labels: np.ndarray
    index: tuple[np.ndarray, ...]
    count: int

    def sums(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Per lesion (index = lesion number; 0 unused): voxel counts, or sums of ``weights``."""
        return np.bincount(self.labels, weights=weights, minlength=self.count + 1)

    def groups(self) -> Iterator[tuple[int, np.ndarray]]:
        """(lesion number, positions of its voxels), each group still in raster order."""
        by_lesion = np.argsort(self.labels, kind="stable")
        bounds = np.searchsorted(self.labels[by_lesion], np.arange(1, self.count + 2))
        for label in range(1, self.count + 1):
            yield label, by_lesion[bounds[label - 1] : bounds[label]]


def _number_lesions(
    mask: np.ndarray, voxel_ml: float, min_volume_ml: float
) -> tuple[np.ndarray, _LesionVoxels | None]:
    """The label map of the components kept (largest first), and their voxels (None when none).

    Components are labelled inside the mask's bounding box only: a small lesion in a
    large volume then costs the box, not the volume.
    """
    out = np.zeros(mask.shape, dtype=np.uint8)
    box = bounding_box(mask)
    if box is None:
        return out, None
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
        out = np.zeros(mask.shape, dtype=np.uint16)
    out[box] = relabelled
    if keep.size == 0:
        return out, None
    local_index = np.nonzero(relabelled)
    offsets = [s.start for s in box]
    index = tuple(ix + off for ix, off in zip(local_index, offsets))
    return out, _LesionVoxels(relabelled[local_index].astype(np.intp), index, int(keep.size))


def _measure(
    voxels: _LesionVoxels, volume: VolumeLike, scores: list[float | None], voxel_ml: float
) -> tuple[LesionFinding, ...]:
    """Volume, longest axial diameter, centroid and mean HU of each lesion."""
    dy, dx = float(volume.spacing_mm[1]), float(volume.spacing_mm[2])
    sizes = voxels.sums()
    hu_sums = voxels.sums(volume.hu[voxels.index].astype(np.float64))
    centroid_sums = [voxels.sums(ix) for ix in voxels.index]
    findings = []
    for label, members in voxels.groups():
        k, i, j = (ix[members] for ix in voxels.index)
        diameter, diameter_slice = _longest_axial_diameter(k, i, j, dy, dx)
        size = int(sizes[label])
        centroid = tuple(float(c[label] / size) for c in centroid_sums)
        findings.append(
            LesionFinding(
                label=label,
                voxel_count=size,
                volume_ml=size * voxel_ml,
                longest_axial_diameter_mm=diameter,
                diameter_slice_index=diameter_slice,
                centroid_index=centroid,  # type: ignore[arg-type]
                centroid_patient_mm=_to_patient(volume, centroid),
                mean_hu=float(hu_sums[label] / size),
                confidence=scores[label - 1],
            )
        )
    return tuple(findings)


def _longest_axial_diameter(
    k: np.ndarray, i: np.ndarray, j: np.ndarray, dy: float, dx: float
) -> tuple[float, int]:
    """The longest in-plane diameter (mm) over a lesion's slices, and the slice it is on.

    The voxels come in raster order, so each slice's voxels are one run of ``k``.
    """
    best_diameter, best_slice = -1.0, int(k[0])
    slice_bounds = np.flatnonzero(np.diff(k)) + 1
    for part in np.split(np.arange(k.size), slice_bounds):
        diameter = _feret_diameter_mm(i[part], j[part], dy, dx)
        if diameter > best_diameter:
            best_diameter, best_slice = diameter, int(k[part[0]])
    return best_diameter, best_slice


def _to_patient(volume: VolumeLike, index: tuple[float, ...]) -> tuple[float, float, float] | None:
    """Patient coordinates (mm) of a voxel index, when the volume has an affine."""
    if volume.affine is None:
        return None
    return tuple(float(v) for v in volume.affine[:3, :3] @ np.array(index) + volume.affine[:3, 3])  # type: ignore[return-value]
