"""The classical baseline: acute blood is 50-90 HU inside the skull. No weights, no torch.

It exists so that the whole chain (selection, volume, SEG, SR, sending) can run
and be tested before any network is trained, and as a floor that trained
models must beat. It is deliberately simple and every step is stated:

1. bone: HU at or above ``bone_hu``;
2. intracranial space: what bone encloses on each axial slice (in-plane hole
   filling), minus the bone, keeping the largest 3D region (the cranial cavity,
   not an orbit or a sinus);
3. a margin: voxels closer than ``margin_mm`` (in-plane, Euclidean) to the edge of
   that space are dropped, because partial volume of the skull and beam
   hardening make the brain next to bone read 50-90 HU;
4. candidates: HU averaged over 3x3 pixels in-plane (which suppresses noise while
   keeping the 50 HU edge of a 65 HU clot in place) within ``blood_hu``;
5. :func:`~dicom_node.models.result.findings_from_labels` with hole filling and
   ``min_lesion_ml``.

The study probability is ``V / (V + half_probability_ml)`` with ``V`` the
volume in mL of the largest lesion: 0 without lesions, 0.5 at
``half_probability_ml``, tending to 1 for large bleeds. With the default
``decision_threshold`` of 0.5 the study is positive exactly when the largest
lesion reaches ``half_probability_ml``. Each lesion's confidence, and each
slice's probability (used to pick key images), is the same function of the
lesion volume it holds.

Known limits, by design: extra-axial blood within ``margin_mm`` of the skull
(thin subdural or epidural haematomas) is missed; slices where the skull ring is
open (skull base, foramen magnum) have no intracranial space; calcifications and
contrast are excluded only when they exceed ``bone_hu``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from dicom_node.imaging.morphology import farther_than, fill_holes_2d, largest_component
from dicom_node.models.result import ModelKind, ModelResult, VolumeLike, findings_from_labels

#: Work this many slices at a time in the slice-wise steps, to bound temporary memory.
_SLICES_PER_CHUNK = 16


@dataclass(frozen=True)
class ThresholdParameters:
    """The baseline's knobs; the defaults are the values the tests hold it to."""

    blood_hu: tuple[float, float] = (50.0, 90.0)
    bone_hu: float = 300.0
    margin_mm: float = 4.0
    min_lesion_ml: float = 0.1
    half_probability_ml: float = 0.5
    decision_threshold: float = 0.5

    def __post_init__(self) -> None:
        low, high = self.blood_hu
        if not low < high:
            raise ValueError("blood_hu must be (low, high) with low < high")
        if not self.bone_hu > high:
            raise ValueError("bone_hu must be above the blood range")
        if self.margin_mm < 0 or self.min_lesion_ml < 0:
            raise ValueError("margin_mm and min_lesion_ml must not be negative")
        if self.half_probability_ml <= 0:
            raise ValueError("half_probability_ml must be positive")
        if not 0 < self.decision_threshold <= 1:
            raise ValueError("decision_threshold must be in (0, 1]")


def _smooth_in_plane(hu: np.ndarray) -> np.ndarray:
    """3x3 in-plane mean (edges repeated), float32."""
    padded = np.pad(hu.astype(np.float32), ((0, 0), (1, 1), (1, 1)), mode="edge")
    rows = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:]
    return (rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]) / np.float32(9.0)


def intracranial_mask(volume: VolumeLike, *, parameters: ThresholdParameters) -> np.ndarray:
    """The intracranial space away from bone: steps 1-3 of the module docstring."""
    hu = volume.hu
    _, dy, dx = (float(s) for s in volume.spacing_mm)
    enclosed = np.zeros(hu.shape, dtype=bool)
    for first in range(0, hu.shape[0], _SLICES_PER_CHUNK):
        bone = hu[first : first + _SLICES_PER_CHUNK] >= parameters.bone_hu
        enclosed[first : first + _SLICES_PER_CHUNK] = fill_holes_2d(bone) & ~bone
    cavity = largest_component(enclosed)
    del enclosed
    if parameters.margin_mm == 0:
        return cavity
    for first in range(0, hu.shape[0], _SLICES_PER_CHUNK):
        part = cavity[first : first + _SLICES_PER_CHUNK]
        part[...] = farther_than(part, dy, dx, parameters.margin_mm)
    return cavity


def probability_from_volume(volume_ml: float, *, half_probability_ml: float) -> float:
    """``V / (V + half)``: 0 for no lesion, 0.5 at ``half``, towards 1 for large ones."""
    if volume_ml < 0 or half_probability_ml <= 0:
        raise ValueError("volume_ml must not be negative and half_probability_ml must be positive")
    return volume_ml / (volume_ml + half_probability_ml)


@dataclass(frozen=True)
class ThresholdModel:
    """The HU threshold baseline as a model: ``predict(volume) -> ModelResult``."""

    parameters: ThresholdParameters = ThresholdParameters()
    name: str = "hu-threshold"
    version: str = "1"

    def predict(self, volume: VolumeLike) -> ModelResult:
        """Segment candidate acute blood on the source grid and measure it."""
        p = self.parameters
        low, high = p.blood_hu
        region = intracranial_mask(volume, parameters=p)
        candidates = np.zeros(volume.hu.shape, dtype=bool)
        for first in range(0, volume.hu.shape[0], _SLICES_PER_CHUNK):
            chunk = slice(first, first + _SLICES_PER_CHUNK)
            smoothed = _smooth_in_plane(volume.hu[chunk])
            candidates[chunk] = region[chunk] & (smoothed >= low) & (smoothed <= high)
        del region
        labelled = findings_from_labels(candidates, volume, min_volume_ml=p.min_lesion_ml, fill_holes=True)
        findings = tuple(
            replace(f, confidence=probability_from_volume(f.volume_ml, half_probability_ml=p.half_probability_ml))
            for f in labelled.findings
        )
        largest_ml = max((f.volume_ml for f in findings), default=0.0)
        probability = probability_from_volume(largest_ml, half_probability_ml=p.half_probability_ml)
        # Per slice, the same function of the lesion volume on that slice (for key images).
        voxels = np.count_nonzero(labelled.label_map.reshape(volume.hu.shape[0], -1), axis=1)
        slice_ml = voxels * math.prod(float(s) for s in volume.spacing_mm) / 1000.0
        slice_probabilities = slice_ml / (slice_ml + p.half_probability_ml)
        return ModelResult(
            model_kind=ModelKind.THRESHOLD,
            model_name=self.name,
            model_version=self.version,
            label_map=labelled.label_map,
            findings=findings,
            study_probability=probability,
            decision_threshold=p.decision_threshold,
            slice_probabilities=slice_probabilities,
        )

