"""Findings only inside the skull: every model kind's lesions restricted to the intracranial space.

The networks have no notion of where the brain is: on real studies their false
findings lie in the pharynx, around the foramen magnum, along the petrous bone
and in the scalp. Blood that matters here is inside the skull. So every model's
result passes through one gate, whatever its kind:

* the intracranial space (:func:`dicom_node.imaging.anatomy.intracranial_space`)
  is grown by ``margin_mm`` in-plane, so that an extra-axial bleed (epidural,
  subdural) lying on the inner table, and the partial-volume rim along it, stay in;
* a finding with less than ``min_inside_fraction`` of its voxels inside is
  dropped: it is mostly outside the skull;
* a kept finding loses its voxels outside (clipped), and every kept finding is
  measured again, so volumes and diameters describe what is reported.

The study probability of a segmenting kind follows its lesions: with none left
it becomes 0 (each kind's own rule for "no lesion"); otherwise the Mask R-CNN
and threshold kinds take the best remaining confidence, as they do without the
gate, and the U-Net keeps its own (the highest pixel probability in a lesion,
which the result no longer holds). A classifier's result has no findings and
passes unchanged: the study-level decision is :mod:`dicom_node.models.combine`'s.

When the image has no intracranial space at all (no skull found: a phantom, a
skull-less series let through by configuration), the gate cannot tell inside
from outside and passes the result unchanged, saying so in its report.
"""

from __future__ import annotations

import logging
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
    """How far outside the space a finding may reach, and how much of it must be inside."""

    margin_mm: float = 4.0
    min_inside_fraction: float = 0.5
    anatomy: AnatomyParameters = AnatomyParameters()

    def __post_init__(self) -> None:
        if self.margin_mm < 0:
            raise ValueError("margin_mm must not be negative")
        if not 0.0 < self.min_inside_fraction <= 1.0:
            raise ValueError("min_inside_fraction must be in (0, 1]")


def gate_result(
    result: ModelResult,
    volume: CTVolume,
    space: IntracranialSpace,
    parameters: GateParameters | None = None,
) -> ModelResult:
    """``result`` with its findings restricted to ``space`` (see the module docstring)."""
    parameters = parameters or GateParameters()
    if result.model_kind not in _SEGMENTING or not result.findings:
        return _unchanged(result)
    if not space.coarse_mask.any():
        return _unchanged(result, skull_found=False)
    n = len(result.findings)
    box = bounding_box(result.label_map != 0)
    if box is None:  # findings without voxels: nothing to place
        return _unchanged(result)
    labels = result.label_map[box]
    inside = space.mask(margin_mm=parameters.margin_mm, box=box)
    totals = np.bincount(labels.ravel(), minlength=n + 1)
    inside_counts = np.bincount(labels[inside], minlength=n + 1)
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = inside_counts[1:] >= parameters.min_inside_fraction * totals[1:]
    kept_map = np.zeros_like(result.label_map)
    kept_map[box] = np.where(keep[labels] & inside, labels, 0)
    clipped = int(totals[1:][keep[1:]].sum() - inside_counts[1:][keep[1:]].sum())
    dropped = int(n - keep[1:].sum())
    confidences = {f.label: f.confidence for f in result.findings if f.confidence is not None}
    measured = findings_from_labels(
        kept_map,
        volume,
        confidences=confidences if len(confidences) == n else None,
        fill_holes=False,
    )
    report = GateReport(kept=len(measured.findings), dropped=dropped, clipped_voxels=clipped)
    return replace(
        result,
        label_map=measured.label_map,
        findings=measured.findings,
        study_probability=_study_probability(result, measured.findings),
        gate=report,
    )


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
    """Any model (``predict(volume) -> ModelResult``) with its findings gated by the intracranial space."""

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
                "intracranial gate: %d finding(s) kept, %d dropped as outside the skull, %d voxel(s) clipped%s",
                report.kept,
                report.dropped,
                report.clipped_voxels,
                "" if report.skull_found else " (no skull found: nothing gated)",
                extra={"stage": "infer", "model": self.name},
            )
        return gated
