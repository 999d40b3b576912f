"""Findings only inside the skull and no denser than blood: every model kind's lesions gated.

The networks have no notion of where the brain is: on real studies their false
findings lie in the pharynx, around the foramen magnum, along the petrous bone
and in the scalp. Blood that matters here is inside the skull. So every model's
result passes through one gate, whatever its kind:

* the intracranial space (:func:`dicom_node.imaging.anatomy.intracranial_space`)
  is grown by ``margin_mm`` in-plane, so that an extra-axial bleed (epidural,
  subdural) lying on the inner table, and the partial-volume rim along it, stay in;
* a finding with less than ``min_inside_fraction`` of its voxels inside is
  dropped: it is mostly outside the skull;
* a kept finding loses its voxels outside (clipped);
* then a kept finding denser than blood is dropped: the median HU of its
  remaining voxels above ``max_blood_hu`` (see :class:`GateParameters`). The
  networks read a brain window (40/80: everything above about 80 HU is white), so
  a 70 HU clot, a 200 HU enhanced venous sinus and a 400 HU calcification look
  alike to them; the HU volume tells them apart. The median, not the mean or the
  maximum, so that a clot's partial-volume rim of bone along the inner table (an
  epidural's) cannot lift it, nor a thin sinus's 60-100 HU partial-volume rim
  lower it. The rule runs only on measured HU (``volume.real_hu``): on pseudo-HU
  read back from 8-bit PNGs every saturated pixel is a placeholder, not a density;
* every kept finding is measured again, so volumes and diameters describe what
  is reported.

The study probability of a segmenting kind follows its lesions: with none left
it becomes 0 (each kind's own rule for "no lesion"); otherwise the Mask R-CNN
and threshold kinds take the best remaining confidence, as they do without the
gate, and the U-Net keeps its own (the highest pixel probability in a lesion,
which the result no longer holds). A classifier's result has no findings and
passes unchanged: the study-level decision is :mod:`dicom_node.models.combine`'s.

When the image has no intracranial space at all (no skull found: a phantom, a
skull-less series let through by configuration), the gate cannot tell inside
from outside and clips or drops nothing as outside, saying so in its report;
the density rule still applies, since it needs no skull.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import numpy as np

from dicom_node.imaging.anatomy import AnatomyParameters, IntracranialSpace, intracranial_space
from dicom_node.imaging.morphology import bounding_box
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.result import GateReport, LesionFinding, ModelKind, ModelResult, findings_from_labels

logger = logging.getLogger(__name__)

#: Kinds whose findings are gated; a classifier has none.
_SEGMENTING = (ModelKind.UNET, ModelKind.MASKRCNN, ModelKind.THRESHOLD)


@dataclass(frozen=True)
class GateParameters:
    """How far outside the space a finding may reach, how much of it must be inside, and how dense it may be.

    ``max_blood_hu``: the highest median HU of a finding that can still be blood.
    Acute and subacute blood (intraparenchymal, subarachnoid, subdural, epidural)
    measures about 40-90 HU, up to about 100 HU with a high haematocrit; an
    enhanced dural venous sinus on a contrast-enhanced CT measures about
    120-250 HU and a calcification (pineal, choroid plexus, falx) about
    150-1000 HU. 100 HU sits at the top of blood and below both mimics, keeping
    every bleed. None turns the rule off.
    """

    margin_mm: float = 4.0
    min_inside_fraction: float = 0.5
    max_blood_hu: float | None = 100.0
    anatomy: AnatomyParameters = AnatomyParameters()

    def __post_init__(self) -> None:
        if self.margin_mm < 0:
            raise ValueError("margin_mm must not be negative")
        if not 0.0 < self.min_inside_fraction <= 1.0:
            raise ValueError("min_inside_fraction must be in (0, 1]")
        if self.max_blood_hu is not None and not math.isfinite(self.max_blood_hu):
            raise ValueError("max_blood_hu must be a finite HU value, or None to turn the density rule off")


def gate_result(
    result: ModelResult,
    volume: CTVolume,
    space: IntracranialSpace,
    parameters: GateParameters | None = None,
) -> ModelResult:
    """``result`` with its findings restricted to ``space`` and to blood's density (see the module docstring)."""
    parameters = parameters or GateParameters()
    if result.model_kind not in _SEGMENTING or not result.findings:
        return _unchanged(result)
    skull_found = bool(space.coarse_mask.any())
    box = bounding_box(result.label_map != 0)
    if box is None:  # findings without voxels: nothing to place
        return _unchanged(result, skull_found=skull_found)
    n = len(result.findings)
    labels = result.label_map[box]
    totals = np.bincount(labels.ravel(), minlength=n + 1)
    if skull_found:
        inside = space.mask(margin_mm=parameters.margin_mm, box=box)
        keep, inside_counts, spatial = _inside(labels, totals, inside, parameters)
    else:
        keep, inside_counts, spatial = np.arange(n + 1) > 0, totals, labels
    dense = _denser_than_blood(spatial, volume, box, keep, parameters.max_blood_hu)
    if not skull_found and not dense.any():
        return _unchanged(result, skull_found=False)
    kept = keep & ~dense
    kept_map = np.zeros_like(result.label_map)
    kept_map[box] = np.where(kept[spatial], spatial, 0)
    confidences = {f.label: f.confidence for f in result.findings if f.confidence is not None}
    measured = findings_from_labels(
        kept_map,
        volume,
        confidences=confidences if len(confidences) == n else None,
        fill_holes=False,
    )
    report = GateReport(
        kept=len(measured.findings),
        dropped=int(n - keep[1:].sum()),
        clipped_voxels=int(totals[kept].sum() - inside_counts[kept].sum()),
        dense=int(dense.sum()),
        skull_found=skull_found,
    )
    return replace(
        result,
        label_map=measured.label_map,
        findings=measured.findings,
        study_probability=_study_probability(result, measured.findings),
        gate=report,
    )


def _inside(
    labels: np.ndarray, totals: np.ndarray, inside: np.ndarray, parameters: GateParameters
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which labels are mostly inside (index 0 False), each label's voxel count inside, and the clipped labels."""
    inside_counts = np.bincount(labels[inside], minlength=totals.size)
    keep = np.zeros(totals.size, dtype=bool)
    keep[1:] = inside_counts[1:] >= parameters.min_inside_fraction * totals[1:]
    return keep, inside_counts, np.where(keep[labels] & inside, labels, 0)


def _denser_than_blood(
    labels: np.ndarray,
    volume: CTVolume,
    box: tuple[slice, ...],
    candidates: np.ndarray,
    max_blood_hu: float | None,
) -> np.ndarray:
    """Per label (index 0 unused), whether it is a candidate whose median HU in ``labels`` exceeds ``max_blood_hu``.

    All False when the rule is off or the volume's values are not measured HU
    (pseudo-HU of 8-bit PNGs: saturated pixels are placeholders, not densities).
    """
    dense = np.zeros(candidates.shape, dtype=bool)
    if max_blood_hu is None or not volume.real_hu:
        return dense
    selected = labels > 0
    dense[candidates] = _medians(volume.hu[box][selected], labels[selected], candidates.size)[candidates] > max_blood_hu
    return dense


def _medians(values: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """The median of ``values`` per label (``size`` entries, NaN where a label has no value).

    One sort by (label, value) of the findings' voxels only: scipy's ``ndimage.median``
    sorts the whole box, seconds on a study where the findings lie far apart.
    """
    counts = np.bincount(labels, minlength=size)
    ordered = values[np.lexsort((values, labels))].astype(np.float64)
    starts = np.cumsum(counts) - counts
    present = counts > 0
    medians = np.full(size, np.nan)
    low = starts[present] + (counts[present] - 1) // 2
    high = starts[present] + counts[present] // 2
    medians[present] = (ordered[low] + ordered[high]) / 2.0
    return medians


def _unchanged(result: ModelResult, *, skull_found: bool = True) -> ModelResult:
    report = GateReport(kept=len(result.findings), dropped=0, clipped_voxels=0, skull_found=skull_found)
    return replace(result, gate=report)


def _study_probability(result: ModelResult, kept: tuple[LesionFinding, ...]) -> float:
    if not kept:
        return 0.0
    if result.model_kind in (ModelKind.MASKRCNN, ModelKind.THRESHOLD):
        return min(result.study_probability, max((f.confidence or 0.0) for f in kept))
    return result.study_probability


class GatedModel:
    """Any model (``predict(volume) -> ModelResult``) with its findings gated by the intracranial space and density."""

    def __init__(self, model: object, parameters: GateParameters | None = None) -> None:
        self.model = model
        self.parameters = parameters or GateParameters()
        self.name: str = model.name  # type: ignore[attr-defined]
        self.version: str = model.version  # type: ignore[attr-defined]

    def predict(self, volume: CTVolume) -> ModelResult:
        """Run the model, then the gate; the report is on the result and in the log."""
        result = self.model.predict(volume)  # type: ignore[attr-defined]
        if result.model_kind not in _SEGMENTING or not result.findings:
            return _unchanged(result)  # nothing to gate: no need to find the skull
        gated = gate_result(result, volume, intracranial_space(volume, self.parameters.anatomy), self.parameters)
        report = gated.gate
        if report is not None:
            logger.info(
                "intracranial gate: %d finding(s) kept, %d dropped as outside the skull, "
                "%d dropped as denser than blood, %d voxel(s) clipped%s",
                report.kept,
                report.dropped,
                report.dense,
                report.clipped_voxels,
                "" if report.skull_found else " (no skull found: nothing dropped or clipped as outside)",
                extra={"stage": "infer", "model": self.name},
            )
        return gated
