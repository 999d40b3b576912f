"""Which series of a study go to the models, and why each other one does not.

A study usually holds several CT series: a scout, thin and thick reconstructions,
soft-tissue and bone kernels, sometimes reformats or a dose report. The models
were trained on axial soft-tissue reconstructions, so the node picks one series
by the rules in :class:`dicom_node.config.SelectionSettings` and records, for
every series, the reasons it was chosen or skipped. Those reasons end up in the
database and in the SR, so that a surprising pick can be explained later.

Selection reads headers only (``dcmread(..., stop_before_pixels=True)``), never
pixel data.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config import SelectionSettings

#: |normal . z| above this counts as axial: about 25 degrees, which admits any
#: real gantry tilt but rejects coronal and sagittal reformats.
_AXIAL_MIN_COSINE = 0.9


class KernelClass(Enum):
    """What the convolution kernel says about the reconstruction, best first."""

    SOFT_TISSUE = 0  # matches soft_tissue_kernel_regex (and not bone_kernel_regex)
    UNKNOWN = 1  # matches neither regex, or the kernel is absent
    BONE = 2  # matches bone_kernel_regex; preferred least


def _text(ds: Dataset, keyword: str) -> str:
    """A header value as one string; multi-valued elements joined with a backslash."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _float(ds: Dataset, keyword: str) -> float | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else float(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SeriesCandidate:
    """A light description of one series, built from its instances' headers.

    ``image_type_common`` holds the ImageType values that every instance has (what
    a *required* value must be in); ``image_type_any`` those that at least one
    instance has (what a *rejected* value must not be in), so that one localizer
    hidden in a series is enough to reject it.
    """

    series_instance_uid: str
    modality: str
    n_instances: int
    image_type_common: frozenset[str]
    image_type_any: frozenset[str]
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    convolution_kernel: str
    body_part_examined: str
    study_description: str
    series_description: str
    series_number: int | None
    slice_normal_z_cosine: float | None

    @classmethod
    def from_datasets(cls, series_instance_uid: str, datasets: Sequence[Dataset]) -> SeriesCandidate:
        """Summarise the instances of one series (headers only).

        Instances whose SeriesInstanceUID differs from ``series_instance_uid`` are a
        caller's bug, not data to average over, hence the ``ValueError``.
        """
        if not datasets:
            raise ValueError("a series candidate needs at least one instance")
        foreign = [ds for ds in datasets if ds.get("SeriesInstanceUID") != series_instance_uid]
        if foreign:
            raise ValueError(
                f"{len(foreign)} instance(s) do not belong to series {series_instance_uid}; "
                "group instances by SeriesInstanceUID before building a candidate"
            )
        first = datasets[0]
        image_types = [frozenset(str(v).upper() for v in (ds.get("ImageType") or [])) for ds in datasets]
        thicknesses = [t for ds in datasets if (t := _float(ds, "SliceThickness")) is not None]
        series_number = first.get("SeriesNumber")
        return cls(
            series_instance_uid=series_instance_uid,
            modality=_text(first, "Modality"),
            n_instances=len(datasets),
            image_type_common=frozenset.intersection(*image_types),
            image_type_any=frozenset.union(*image_types),
            slice_thickness_mm=statistics.median(thicknesses) if thicknesses else None,
            slice_spacing_mm=_slice_spacing(datasets),
            convolution_kernel=_text(first, "ConvolutionKernel"),
            body_part_examined=_text(first, "BodyPartExamined"),
            study_description=_text(first, "StudyDescription"),
            series_description=_text(first, "SeriesDescription"),
            series_number=int(series_number) if series_number not in (None, "") else None,
            slice_normal_z_cosine=_normal_z_cosine(first),
        )

    @property
    def effective_thickness_mm(self) -> float | None:
        """SliceThickness, or the spacing between positions when the header lacks it."""
        return self.slice_thickness_mm if self.slice_thickness_mm is not None else self.slice_spacing_mm


def _normal_z_cosine(ds: Dataset) -> float | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    norm = float(np.linalg.norm(normal))
    return abs(float(normal[2])) / norm if norm > 0 else None


def _slice_spacing(datasets: Sequence[Dataset]) -> float | None:
    """Median distance between consecutive slice planes, from the headers' geometry."""
    iop = datasets[0].get("ImageOrientationPatient")
    positions = [ds.get("ImagePositionPatient") for ds in datasets]
    if iop is None or len(iop) != 6 or len(datasets) < 2 or any(p is None for p in positions):
        return None
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    along = np.sort(np.asarray(positions, dtype=float) @ normal)
    steps = np.diff(along)
    steps = steps[steps > 1e-3]
    return float(np.median(steps)) if steps.size else None


@dataclass(frozen=True)
class SeriesDecision:
    """The verdict on one series: chosen or not, and every reason that led there."""

    series_instance_uid: str
    selected: bool
    eligible: bool
    reasons: tuple[str, ...]
    rank: int | None = None  # 1 = best among the eligible series; None when skipped by a rule


@dataclass(frozen=True)
class SelectionResult:
    """The chosen series (None when no series passes the rules) and one decision per series."""

    chosen: SeriesCandidate | None
    decisions: tuple[SeriesDecision, ...]

    def decision_for(self, series_instance_uid: str) -> SeriesDecision:
        """The decision on one series; ``KeyError`` if it was not a candidate."""
        for decision in self.decisions:
            if decision.series_instance_uid == series_instance_uid:
                return decision
        raise KeyError(series_instance_uid)


def classify_kernel(candidate: SeriesCandidate, rules: SelectionSettings) -> KernelClass:
    """Soft tissue, bone or unknown, from ConvolutionKernel (SeriesDescription if absent).

    When both regexes match (the default ones overlap for Toshiba ``FC3x``/``FC4x``),
    bone wins: a sharp kernel mistaken for soft tissue would feed the models noisy
    images, while the opposite mistake merely ranks a series lower.
    """
    text = candidate.convolution_kernel or candidate.series_description
    if not text:
        return KernelClass.UNKNOWN
    if re.search(rules.bone_kernel_regex, text):
        return KernelClass.BONE
    if re.search(rules.soft_tissue_kernel_regex, text):
        return KernelClass.SOFT_TISSUE
    return KernelClass.UNKNOWN


def rule_violations(candidate: SeriesCandidate, rules: SelectionSettings) -> list[str]:
    """Every rule the series breaks, one sentence each; empty when it is eligible.

    All rules are checked (not just the first that fails) so the recorded reasons
    tell the whole story. Besides the configured rules there is one fixed rule:
    the slices must be axial, because every model is trained on axial slices.
    """
    problems: list[str] = []
    if candidate.modality.upper() not in {m.upper() for m in rules.modalities}:
        problems.append(
            f"modality {candidate.modality or '(absent)'} is not one of {', '.join(rules.modalities)}"
        )
    missing = [v for v in rules.required_image_type if v.upper() not in candidate.image_type_common]
    if missing:
        problems.append(f"ImageType lacks required value(s) {', '.join(missing)} in some instances")
    rejected = [v for v in rules.rejected_image_type if v.upper() in candidate.image_type_any]
    if rejected:
        problems.append(f"ImageType has rejected value(s) {', '.join(rejected)}")
    thickness = candidate.effective_thickness_mm
    if thickness is None:
        problems.append("slice thickness unknown: no SliceThickness and no spacing between positions")
    elif thickness < rules.min_slice_thickness_mm:
        problems.append(
            f"slice thickness {thickness:g} mm is below the minimum {rules.min_slice_thickness_mm:g} mm"
        )
    elif thickness > rules.max_slice_thickness_mm:
        problems.append(
            f"slice thickness {thickness:g} mm is above the maximum {rules.max_slice_thickness_mm:g} mm"
        )
    if candidate.n_instances < rules.min_slices:
        problems.append(f"{candidate.n_instances} slice(s), fewer than the minimum {rules.min_slices}")
    texts = (candidate.body_part_examined, candidate.study_description, candidate.series_description)
    if not any(text and re.search(rules.head_regex, text) for text in texts):
        problems.append("neither BodyPartExamined, StudyDescription nor SeriesDescription names the head")
    if candidate.slice_normal_z_cosine is None:
        problems.append("ImageOrientationPatient absent: orientation unknown")
    elif candidate.slice_normal_z_cosine < _AXIAL_MIN_COSINE:
        problems.append("slices are not axial (models are trained on axial slices)")
    return problems


def _describe(candidate: SeriesCandidate, kernel: KernelClass) -> str:
    kernel_text = candidate.convolution_kernel or "(no kernel)"
    thickness = candidate.effective_thickness_mm
    thickness_text = f"{thickness:g} mm" if thickness is not None else "unknown thickness"
    return (
        f"{kernel.name.lower().replace('_', '-')} kernel {kernel_text}, {thickness_text}, "
        f"{candidate.n_instances} slice(s)"
    )


def select_series(candidates: Iterable[SeriesCandidate], rules: SelectionSettings) -> SelectionResult:
    """Choose the one series to analyse; record why each series was chosen or skipped.

    A series is eligible when it breaks none of :func:`rule_violations`. Among
    eligible series the ranking is, in order:

    1. kernel class: soft tissue, then unknown, then bone (:func:`classify_kernel`);
    2. thinner slices first (SliceThickness, else the spacing between positions);
    3. more slices first (more coverage at equal thickness);
    4. lower SeriesNumber first (the scanner's primary reconstruction usually comes first);
    5. SeriesInstanceUID, only to make the choice deterministic.
    """
    candidates = list(candidates)
    uids = [c.series_instance_uid for c in candidates]
    if len(set(uids)) != len(uids):
        raise ValueError("each series may appear only once among the candidates")

    skipped: list[SeriesDecision] = []
    eligible: list[tuple[SeriesCandidate, KernelClass]] = []
    for candidate in candidates:
        problems = rule_violations(candidate, rules)
        if problems:
            skipped.append(
                SeriesDecision(
                    series_instance_uid=candidate.series_instance_uid,
                    selected=False,
                    eligible=False,
                    reasons=tuple(f"skipped: {p}" for p in problems),
                )
            )
        else:
            eligible.append((candidate, classify_kernel(candidate, rules)))

    def sort_key(item: tuple[SeriesCandidate, KernelClass]) -> tuple:
        candidate, kernel = item
        thickness = candidate.effective_thickness_mm
        return (
            kernel.value,
            thickness if thickness is not None else float("inf"),
            -candidate.n_instances,
            candidate.series_number if candidate.series_number is not None else float("inf"),
            candidate.series_instance_uid,
        )

    ranked = sorted(eligible, key=sort_key)
    decisions: list[SeriesDecision] = []
    for rank, (candidate, kernel) in enumerate(ranked, start=1):
        description = _describe(candidate, kernel)
        if rank == 1:
            reason = f"chosen: passes every rule; ranked first of {len(ranked)} eligible ({description})"
        else:
            best_candidate, best_kernel = ranked[0]
            reason = (
                f"skipped: passes every rule but ranked {rank} of {len(ranked)} ({description}); "
                f"series {best_candidate.series_instance_uid} ranks higher "
                f"({_describe(best_candidate, best_kernel)})"
            )
        decisions.append(
            SeriesDecision(
                series_instance_uid=candidate.series_instance_uid,
                selected=rank == 1,
                eligible=True,
                reasons=(reason,),
                rank=rank,
            )
        )
    decisions.extend(skipped)
    return SelectionResult(chosen=ranked[0][0] if ranked else None, decisions=tuple(decisions))
