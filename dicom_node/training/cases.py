"""The in-memory forms every training-data reader produces.

Two views exist because training and evaluation need different things.
Training reads :class:`SliceSet`: every slice already made into model input by
the shared preprocessing (:mod:`dicom_node.models.inputs`) with its instance
label map carried through the same crop (nearest neighbour), stored as float16
to halve memory. Evaluation reads :class:`Case`: the source-grid image, truth
and a volume to measure on, so that metrics are computed where the SEG will
live, after the runner has mapped predictions back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dicom_node.models.inputs import InputSpec, ModelSlice, network_hu, slice_from_hu_stack
from dicom_node.imaging.morphology import label_components

#: One training slice: (model slice, model-size instance map, label, annotated, key, group).
SliceItem = tuple[ModelSlice, np.ndarray, int, bool, str, str]


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Model-size training slices.

    ``images`` float16 ``(n, channels, rows, cols)`` in [0, 1]; ``instances`` uint8
    ``(n, rows, cols)``, 0 background and 1..k one per annotated region;
    ``labels`` the image label (1 = hemorrhage); ``annotated`` whether the
    pixel truth is known (a positive image without polygons is not, and must not
    teach a segmenter that its bleed is background); ``keys`` name each slice and
    ``groups`` the patient or scan it belongs to (splits never cut a group).
    """

    images: np.ndarray
    instances: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    keys: tuple[str, ...]
    groups: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.instances.shape != (n,) + self.images.shape[2:]:
            raise ValueError("images must be (n, C, H, W) and instances (n, H, W)")
        if self.labels.shape != (n,) or self.annotated.shape != (n,) or len(self.keys) != n or len(self.groups) != n:
            raise ValueError("labels, annotated, keys and groups need one entry per slice")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> SliceSet:
        """The slices at ``index``, in that order."""
        idx = np.asarray(index, dtype=np.intp)
        return SliceSet(
            images=self.images[idx],
            instances=self.instances[idx],
            labels=self.labels[idx],
            annotated=self.annotated[idx],
            keys=tuple(self.keys[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
        )

    @classmethod
    def concat(cls, sets: Sequence[SliceSet]) -> SliceSet:
        """The slices of several sets, in order (e.g. two data folders trained together)."""
        if not sets:
            raise ValueError("nothing to concatenate")
        return cls(
            images=np.concatenate([s.images for s in sets]),
            instances=np.concatenate([s.instances for s in sets]),
            labels=np.concatenate([s.labels for s in sets]),
            annotated=np.concatenate([s.annotated for s in sets]),
            keys=tuple(k for s in sets for k in s.keys),
            groups=tuple(g for s in sets for g in s.groups),
        )

    @classmethod
    def build(cls, items: Sequence[SliceItem]) -> SliceSet:
        """From ``(model slice, model-size instance map, label, annotated, key, group)`` items."""
        if not items:
            raise ValueError("a SliceSet needs at least one slice")
        return cls(
            images=np.stack([item[0].image for item in items]).astype(np.float16),
            instances=np.stack([item[1] for item in items]).astype(np.uint8),
            labels=np.array([item[2] for item in items], dtype=np.uint8),
            annotated=np.array([item[3] for item in items], dtype=bool),
            keys=tuple(item[4] for item in items),
            groups=tuple(item[5] for item in items),
        )


@dataclass(frozen=True, eq=False)
class PseudoVolume:
    """A volume without DICOM provenance (PNG or NIfTI data), enough to measure lesions on.

    ``real_hu``: True only for measured HU (NIfTI CT). PNG data hold pseudo-HU read
    back from an 8-bit window, saturated pixels set to a placeholder, so no rule that
    judges a density may run on them (see :class:`~dicom_node.imaging.volume.CTVolume`);
    False by default, the safe side.
    """

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray | None = None
    real_hu: bool = False


@dataclass(frozen=True, eq=False)
class Case:
    """One evaluation case on its source grid.

    ``truth`` is the boolean hemorrhage mask ``(slices, rows, cols)``, or None
    when only the label is known. ``windowed`` holds brain-windowed [0, 1]
    slices for data that only exist as such (PNGs: the runner then takes the
    windowed road); for HU data it is None and the runner windows ``volume.hu``.
    """

    key: str
    volume: PseudoVolume | Any
    label: int
    truth: np.ndarray | None
    windowed: np.ndarray | None = None



@dataclass(frozen=True)
class TrainingData:
    """Training and validation slices, and a description of the split for the model card."""

    train: SliceSet
    val: SliceSet
    description: dict[str, Any]


def volume_slices(
    key: str,
    hu: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    spec: InputSpec,
    *,
    measured: Sequence[bool] | None = None,
    slabs: bool = True,
) -> list[SliceItem]:
    """Training items of every slice of an HU volume with a voxel truth mask (NIfTI, DICOM, PHE-SICH).

    A 2.5D spec gives each slice its real neighbours from the same volume, and thin
    slices are averaged to the spec's slab leaving out the ``measured`` False ones (filled
    in for a missing instance), as the runner does at inference. ``slabs`` False: HU read
    back from 8-bit renderings (PHE-SICH), which inference reads windowed, without slabs.
    """
    items = []
    seen = network_hu(hu, spec=spec, spacing_z=spacing[0], measured=measured) if slabs else hu
    for k in range(hu.shape[0]):
        prepared = slice_from_hu_stack(
            seen, k, spec=spec, pixel_spacing=spacing[1:], spacing_z=spacing[0], measured=measured
        )
        instances, n = label_components(truth[k])
        if n > 255:
            raise ValueError(f"{key} slice {k} has more than 255 separate lesion regions")
        model_instances = prepared.transform.to_model(instances.astype(np.uint8), order="nearest", fill=0)
        items.append((prepared, model_instances, int(truth[k].any()), True, f"{key}:{k}", key))
    return items
