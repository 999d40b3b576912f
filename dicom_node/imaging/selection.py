"""Which series of a study go to the models, and why each other one does not.

A study usually holds several CT series: a scout, thin and thick reconstructions,
soft-tissue and bone kernels, sometimes reformats or a dose report. The models
were trained on axial soft-tissue reconstructions, so the node picks one series
by the rules in :class:`dicom_node.config.SelectionSettings` and records, for
every series, the reasons it was chosen or skipped. Those reasons end up in the
database and in the SR, so that a surprising pick can be explained later.

Selection reads headers (``dcmread(..., stop_before_pixels=True)``), and pixels in
one case only: whether a series shows a head. Anonymisers blank BodyPartExamined
and the descriptions, so with ``head_check = "header-or-image"`` (the default) a
series whose header names no body part is checked from its image
(:func:`dicom_node.imaging.anatomy.head_from_image`), through a callable the
caller passes, which assembles the volume. That check runs lazily, in rank
order, until one series proves to be a head, so a study pays for it at most
once when its best series is a head. A header that names the head, or another
body part, still decides on its own.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from dicom_node.config import SelectionSettings

if TYPE_CHECKING:
    from dicom_node.imaging.anatomy import HeadEvidence

#: Decides from a series' pixels whether it shows a head (the caller assembles the volume).
ImageHeadCheck = Callable[["SeriesCandidate"], "HeadEvidence"]

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


@dataclass(frozen=True)
class HeaderHead:
    """What the header says about the body part: head (True), another part (False) or nothing (None)."""

    is_head: bool | None
    reason: str


def head_from_header(candidate: SeriesCandidate, rules: SelectionSettings) -> HeaderHead:
    """The head named in BodyPartExamined, StudyDescription or SeriesDescription; else another body part; else silence.

    The head wins over another part anywhere ("CTA HEAD NECK" is a head); a
    field is read in that order and the first that decides is quoted.
    """
    fields = (
        ("BodyPartExamined", candidate.body_part_examined),
        ("StudyDescription", candidate.study_description),
        ("SeriesDescription", candidate.series_description),
    )
    for keyword, text in fields:
        if text and re.search(rules.head_regex, text):
            return HeaderHead(True, f"head: header {keyword}={text}")
    for keyword, text in fields:
        if text and re.search(rules.not_head_regex, text):
            return HeaderHead(False, f"not head: header says {text} ({keyword})")
    return HeaderHead(None, "the header names no body part")


def _needs_image(header: HeaderHead, rules: SelectionSettings) -> bool:
    return rules.head_check == "image" or (rules.head_check == "header-or-image" and header.is_head is None)


def rule_violations(candidate: SeriesCandidate, rules: SelectionSettings) -> list[str]:
    """Every rule the series breaks, one sentence each; empty when it is eligible.

    All rules are checked (not just the first that fails) so the recorded reasons
    tell the whole story. Besides the configured rules there is one fixed rule:
    the slices must be axial, because every model is trained on axial slices.
    The head rule here is the header's part of ``head_check``; a series the
    header is silent about (or every series, with ``"image"``) is left to the
    image check in :func:`select_series`.
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
    header = head_from_header(candidate, rules)
    if rules.head_check == "header" and header.is_head is None:
        problems.append("neither BodyPartExamined, StudyDescription nor SeriesDescription names the head")
    elif rules.head_check != "image" and header.is_head is False:
        problems.append(header.reason)
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


def select_series(
    candidates: Iterable[SeriesCandidate],
    rules: SelectionSettings,
    image_check: ImageHeadCheck | None = None,
) -> SelectionResult:
    """Choose the one series to analyse; record why each series was chosen or skipped.

    A series is eligible when it breaks none of :func:`rule_violations`. Among
    eligible series the ranking is, in order:

    1. kernel class: soft tissue, then unknown, then bone (:func:`classify_kernel`);
    2. thinner slices first (SliceThickness, else the spacing between positions);
    3. more slices first (more coverage at equal thickness);
    4. lower SeriesNumber first (the scanner's primary reconstruction usually comes first);
    5. SeriesInstanceUID, only to make the choice deterministic.

    The chosen series is the best-ranked one that is a head: by its header, or,
    where ``head_check`` leaves it to the image, by ``image_check``, called in
    rank order until a head is found. Without ``image_check`` such a series
    cannot be chosen (its reason says so). Every decision records which rule
    decided the head ("head: header ...", "head: image (...)", "not head: ...").
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

    ranked = sorted(eligible, key=_rank_key)
    decisions: list[SeriesDecision] = []
    chosen: tuple[SeriesCandidate, KernelClass] | None = None
    for rank, (candidate, kernel) in enumerate(ranked, start=1):
        description = _describe(candidate, kernel)
        where = f"ranked {rank} of {len(ranked)} eligible ({description})"
        if chosen is not None:
            best, best_kernel = chosen
            reasons = (
                f"skipped: passes every rule but {where}; series {best.series_instance_uid} "
                f"ranks higher ({_describe(best, best_kernel)})",
            )
            decisions.append(SeriesDecision(candidate.series_instance_uid, False, True, reasons, rank))
            continue
        is_head, head_reason = _head_decision(candidate, rules, image_check)
        if not is_head:
            decisions.append(SeriesDecision(candidate.series_instance_uid, False, False, (f"skipped: {head_reason}",)))
            continue
        chosen = (candidate, kernel)
        reasons = (f"chosen: passes every rule; {where}", head_reason)
        decisions.append(SeriesDecision(candidate.series_instance_uid, True, True, reasons, rank))
    decisions.extend(skipped)
    return SelectionResult(chosen=chosen[0] if chosen else None, decisions=tuple(decisions))


def _rank_key(item: tuple[SeriesCandidate, KernelClass]) -> tuple:
    candidate, kernel = item
    thickness = candidate.effective_thickness_mm
    return (
        kernel.value,
        thickness if thickness is not None else float("inf"),
        -candidate.n_instances,
        candidate.series_number if candidate.series_number is not None else float("inf"),
        candidate.series_instance_uid,
    )


def _head_decision(
    candidate: SeriesCandidate, rules: SelectionSettings, image_check: ImageHeadCheck | None
) -> tuple[bool, str]:
    """Is this eligible series a head, and the reason that says which rule decided."""
    header = head_from_header(candidate, rules)
    if not _needs_image(header, rules):
        return bool(header.is_head), header.reason
    if image_check is None:
        return False, f"body part unknown: {header.reason} and no image check was available"
    evidence = image_check(candidate)
    verdict = "head" if evidence.is_head else "not head"
    return evidence.is_head, f"{verdict}: image ({evidence.describe()})"
