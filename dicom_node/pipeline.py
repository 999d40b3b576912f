"""One job, end to end: the only module that composes the stages.

load (DB rows -> headers -> series selection -> HU volume) -> infer (model) -> build
(SEG, SR, key images) -> write (durable files) -> record (output rows and outbox rows,
in the same transaction that marks the job done).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node import __version__
from dicom_node.config import Settings
from dicom_node.db.models import Instance, Job, JobState, OutputObject, Series, Study
from dicom_node.dicom.storage import InstanceStore, result_path
from dicom_node.errors import AnalysisError, NotApplicableError, SourceDataError, StorageError
from dicom_node.imaging.anatomy import HeadEvidence, head_from_image
from dicom_node.imaging.headers import check_headers
from dicom_node.imaging.selection import SeriesCandidate, select_series
from dicom_node.imaging.volume import AssemblyWarning, AssemblyWarningKind, CTVolume, assemble_volume
from dicom_node.jobs.queue import ClaimedJob
from dicom_node.models.result import ModelKind, ModelResult
from dicom_node.outputs import (
    AlgorithmInfo,
    Equipment,
    JobUids,
    LesionMeasurement,
    SegmentSpec,
    StudyAssessment,
    build_key_images,
    build_report,
    build_segmentation,
    device_observer_uid,
)
from dicom_node.outputs import codes
from dicom_node.outputs.revision import EarlierReport, replacing_description
from dicom_node.outputs.sources import prepare_sources
from dicom_node.send.outbox import WrittenObject

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: What pydicom and numpy raise on header values that are not numbers or have the wrong count
#: (SeriesNumber "abc", a 2-value ImagePositionPatient, RescaleSlope 1e400): the study cannot
#: be analysed as sent, and retrying will not change that.
UNUSABLE_HEADER = (ValueError, TypeError, OverflowError, IndexError, AttributeError, KeyError)


class Model(Protocol):
    """What the pipeline needs of a model kind."""

    name: str
    version: str

    def predict(self, volume: CTVolume) -> ModelResult: ...


def model_key(model: Model) -> str:
    """The job key part naming the model version: a new version gets new jobs."""
    return f"{model.name}@{model.version}"


@dataclass
class JobOutput:
    """What a job produced, and a summary for ``jobs show``."""

    objects: list[WrittenObject]
    summary: dict[str, Any]
    timings_s: dict[str, float] = field(default_factory=dict)
    #: What the results lack and why (an object that could not be built); shown by ``jobs show``.
    warnings: list[str] = field(default_factory=list)


@dataclass
class BuiltObjects:
    """The objects a job could build, in delivery order, and a line for each one it could not."""

    objects: list[tuple[str, Dataset]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.objects]

    def add(self, segmentation: Dataset | None, report: Dataset | None, key_images: list[Dataset] | None) -> None:
        """The objects that could be built, in delivery order: SEG, SR (which references it), key images."""
        if segmentation is not None:
            self.objects.append(("seg", segmentation))
        if report is not None:
            self.objects.append(("sr", report))
        self.objects.extend(("key_images", image) for image in key_images or [])


@dataclass(frozen=True)
class StudyInput:
    """The received instances of a study, per series, as stored."""

    study_instance_uid: str
    paths_by_series: dict[str, list[Path]]


def load_study_input(session: Session, store: InstanceStore, job: ClaimedJob) -> StudyInput:
    """The stored files of every series of the job's study (all generations up to the job's)."""
    rows = session.execute(
        select(Series.series_instance_uid, Instance.path)
        .join(Instance, Instance.series_id == Series.id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.id == job.study_id, Instance.study_generation <= job.study_generation)
        .order_by(Series.id, Instance.id)
    ).all()
    paths: dict[str, list[Path]] = defaultdict(list)
    for series_uid, path in rows:
        paths[series_uid].append(store.absolute(path))
    if not paths:
        raise AnalysisError("the study has no stored instances")
    return StudyInput(job.study_instance_uid, dict(paths))


def find_earlier_report(session: Session, store: InstanceStore, job: ClaimedJob) -> EarlierReport | None:
    """The SR of the newest earlier generation of the job's study that succeeded, if any.

    Its Series Instance UID is read from the stored file (the row holds the instance's
    UIDs only); when retention has deleted the file there is nothing left to reference.
    """
    row = session.execute(
        select(OutputObject.sop_class_uid, OutputObject.sop_instance_uid, OutputObject.path, OutputObject.created_at)
        .join(Job, Job.id == OutputObject.job_id)
        .where(
            Job.study_id == job.study_id,
            Job.study_generation < job.study_generation,
            Job.state == JobState.SUCCEEDED,
            OutputObject.kind == "sr",
        )
        .order_by(Job.study_generation.desc(), OutputObject.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    try:
        header = dcmread(store.absolute(row.path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
    except (OSError, StorageError) as exc:
        logger.warning(f"earlier report not referenced: {exc.__class__.__name__}", extra={"job_id": job.id})
        return None
    return EarlierReport(
        job.study_instance_uid, str(header.SeriesInstanceUID), row.sop_class_uid, row.sop_instance_uid, row.created_at
    )


@contextmanager
def _stage(timings: dict[str, float], name: str, context: dict[str, Any]) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 3)
        logger.info(f"stage {name} done", extra={**context, "stage": name, "duration_s": timings[name]})


@dataclass(frozen=True)
class _BuildInputs:
    """What every object builder of one job takes: aligned arrays, sources, who made it."""

    uids: JobUids
    sources: list[Dataset]
    label_map: np.ndarray
    hu: np.ndarray
    algorithm: AlgorithmInfo
    equipment: Equipment
    assessment: StudyAssessment
    lesions: list[LesionMeasurement]
    algorithm_text: str
    replaces: EarlierReport | None = None

    def description(self, configured: str) -> str:
        """The configured series description, saying "replaces" when this is a later generation."""
        if self.replaces is None:
            return configured
        return replacing_description(configured, self.replaces.created_at)


def _lesions_without_seg(lesions: list[LesionMeasurement]) -> str:
    """The SR's lesion groups reference SEG segments (TID 1411): without the SEG they cannot
    be encoded, so their figures are stated in words instead of being lost."""
    figures = ", ".join(
        f"lesion {lesion.segment_number} {lesion.volume_ml:.1f} mL, {lesion.longest_axial_diameter_mm:.1f} mm"
        for lesion in lesions
    )
    return f"lesion measurement groups omitted (they reference the SEG): {figures}"


def job_warnings(missing: Sequence[str], assembly: Sequence[AssemblyWarning]) -> list[str]:
    """What a succeeded job warns of: the objects not built, and instances dropped for
    repeating a slice position (the study was analysed, but not on every instance the PACS
    sent). The other assembly warnings (gantry tilt, a filled gap, ...) are in the log only:
    the results are whole."""
    repeated = [w.text for w in assembly if w.kind is AssemblyWarningKind.REPEATED_POSITION]
    return [*missing, *repeated]


class Pipeline:
    """Runs one claimed job with a model, building and writing the result objects."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], store: InstanceStore, model: Model) -> None:
        self.settings = settings
        self.sessions = sessions
        self.store = store
        self.model = model

    def select_and_load(self, study: StudyInput) -> tuple[CTVolume, list[Dataset]]:
        """Choose the series to analyse and assemble its HU volume; headers in volume order."""
        volume, ordered, _ = self.select_load_and_explain(study)
        return volume, ordered

    def select_load_and_explain(self, study: StudyInput) -> tuple[CTVolume, list[Dataset], str]:
        """As :meth:`select_and_load`, with why the chosen series is a head (``jobs show`` says it)."""
        headers = {
            uid: [dcmread(path, stop_before_pixels=True) for path in paths]
            for uid, paths in study.paths_by_series.items()
        }
        unusable = {}
        for uid, datasets in headers.items():
            try:
                check_headers(datasets)
            except ValueError as exc:
                unusable[uid] = str(exc)
                logger.info(f"series skipped: {exc}", extra={"series_instance_uid": uid, "stage": "select"})
        if len(unusable) == len(headers):
            reasons = "; ".join(f"{uid}: {why}" for uid, why in unusable.items())
            raise SourceDataError(f"no series qualifies for analysis (a header value is not usable: {reasons})")
        headers = {uid: datasets for uid, datasets in headers.items() if uid not in unusable}
        volumes: dict[str, CTVolume] = {}

        def assemble(uid: str) -> CTVolume:
            if uid not in volumes:
                try:
                    volumes[uid] = assemble_volume(study.paths_by_series[uid], series_instance_uid=uid)
                except UNUSABLE_HEADER as exc:
                    raise SourceDataError(f"series {uid} cannot be assembled into a volume: {exc}") from exc
            return volumes[uid]

        def image_check(candidate: SeriesCandidate) -> HeadEvidence:
            # A header naming no body part: the image decides (the volume is kept for the analysis).
            return head_from_image(assemble(candidate.series_instance_uid))

        try:
            candidates = [SeriesCandidate.from_datasets(uid, datasets) for uid, datasets in headers.items()]
            selection = select_series(candidates, self.settings.selection, image_check=image_check)
        except UNUSABLE_HEADER as exc:
            raise SourceDataError(f"a header value is not usable: {exc}") from exc
        for decision in selection.decisions:
            logger.info(
                f"series selection: {'; '.join(decision.reasons)}",  # each reason says chosen or skipped
                extra={"series_instance_uid": decision.series_instance_uid, "stage": "select"},
            )
        if selection.chosen is None:
            reasons = "; ".join(f"{d.series_instance_uid}: {', '.join(d.reasons)}" for d in selection.decisions)
            reasons += "".join(f"; {uid}: skipped: {why}" for uid, why in unusable.items())
            raise NotApplicableError(f"no series qualifies for analysis ({reasons})")
        chosen = selection.chosen.series_instance_uid
        volume = assemble(chosen)
        self._check_coverage(volume)
        by_uid = {str(ds.SOPInstanceUID): ds for ds in headers[chosen]}
        ordered = [by_uid[uid] for uid in volume.source_sop_instance_uids if uid is not None]
        decision = next(d for d in selection.decisions if d.selected)
        return volume, ordered, decision.reasons[-1]

    def _check_coverage(self, volume: CTVolume) -> None:
        """A series too short to hold a head (a stray slice, a partial scan) is not analysed:
        a model would see a fragment, and a result on it would mislead more than none."""
        needed = self.settings.selection.min_coverage_mm
        slices = sum(uid is not None for uid in volume.source_sop_instance_uids)
        covered = volume.hu.shape[0] * volume.spacing_mm[0]  # each slice stands for one spacing
        if covered < needed:
            raise NotApplicableError(
                f"{slices} slice{'s' if slices != 1 else ''} covering {covered:.4g} mm; "
                f"at least {needed:g} mm needed (selection.min_coverage_mm)"
            )

    def run(self, job: ClaimedJob) -> JobOutput:
        """load -> infer -> build -> write; raises AnalysisError for studies we cannot analyse."""
        timings: dict[str, float] = {}
        context = {"job_id": job.id, "study_instance_uid": job.study_instance_uid}
        with _stage(timings, "load", context):
            with self.sessions() as session:
                study = load_study_input(session, self.store, job)
                earlier = find_earlier_report(session, self.store, job) if job.study_generation > 1 else None
            volume, headers, head_reason = self.select_load_and_explain(study)
        with _stage(timings, "infer", context):
            result = self.model.predict(volume)
        with _stage(timings, "build", context):
            built = self.build(job, volume, headers, result, replaces=earlier)
        with _stage(timings, "write", context):
            objects = [self._write(kind, ds) for kind, ds in built.objects]
        summary = {
            "hemorrhage": result.positive,
            "probability": round(float(result.study_probability), 4),
            "lesions": len(result.findings),
            "total_volume_ml": round(sum(f.volume_ml for f in result.findings), 2),
            "findings_outside_skull_dropped": result.gate.dropped if result.gate else None,
            "findings_denser_than_blood_dropped": result.gate.dense if result.gate else None,
            "series_instance_uid": volume.series_instance_uid,
            "selection": head_reason,
            "slices": int(volume.hu.shape[0]),
            "model": model_key(self.model),
            "timings_s": timings,
        }
        if built.missing:
            summary["missing"] = built.missing
        return JobOutput(objects=objects, summary=summary, timings_s=timings, warnings=job_warnings(built.missing, volume.warnings))

    def _write(self, kind: str, dataset: Dataset) -> WrittenObject:
        relative = result_path(
            str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
        )
        self.store.write_dataset(dataset, relative)
        return WrittenObject(kind, str(dataset.SOPClassUID), str(dataset.SOPInstanceUID), str(relative))

    def job_key(self, job: ClaimedJob) -> str:
        """What the result's UIDs derive from: the study's row and generation, the model, and
        everything else that shapes the objects (dicom-node's version and the analysis/output
        settings).

        A retry with the same inputs rebuilds identical objects with identical UIDs, so the
        PACS replaces them; a changed setting or version yields new UIDs instead of different
        content under old ones. The row id matters after retention: a study deleted and sent
        again starts at generation 1 in a new row, and must not reuse the old result's UIDs.
        """
        shaping = json.dumps(
            [__version__, self.settings.analysis.model_dump(mode="json"), self.settings.outputs.model_dump(mode="json"),
             self.settings.selection.model_dump(mode="json")],
            sort_keys=True,
        )
        digest = hashlib.sha256(shaping.encode()).hexdigest()[:16]
        return f"{job.study_instance_uid}|{job.study_id}|{job.study_generation}|{job.model_key}|{digest}"

    def build(
        self,
        job: ClaimedJob,
        volume: CTVolume,
        headers: list[Dataset],
        result: ModelResult,
        *,
        replaces: EarlierReport | None = None,
    ) -> BuiltObjects:
        """The SEG, SR and key images for ``result``, every UID derived from the job.

        Slices the volume interpolated (a missing source slice) have no source image,
        so they are dropped here: the SEG stays frame-aligned with real images only.

        Each object is built on its own: when the source data makes one impossible (a
        builder's ValueError), the others still go, and the SR says what is missing and
        why. When none can be built the job fails with :class:`SourceDataError`
        (permanent: the same data fails the same way again).

        ``replaces`` is the earlier generation's report, when late images reopened the
        study: the new SR names it as predecessor and every series description says so.
        """
        inputs = self._build_inputs(job, volume, headers, result, replaces)
        built = BuiltObjects()
        context = {"job_id": job.id, "study_instance_uid": job.study_instance_uid, "stage": "build"}
        segmentation = None
        if inputs.lesions or self.settings.outputs.send_empty_seg:
            segmentation = self._attempt(built, "seg", "segmentation (SEG)", context, lambda: self._seg(inputs, result))
        key_images = self._attempt(built, "key_images", "key images", context, lambda: self._key_images(inputs))
        if segmentation is None and inputs.lesions:
            built.missing.append(_lesions_without_seg(inputs.lesions))
        report = self._attempt(
            built, "sr", "report (SR)", context, lambda: self._report(inputs, segmentation, built.missing)
        )
        built.add(segmentation, report, key_images)
        if not built.objects:
            raise SourceDataError("no result object could be built: " + "; ".join(built.missing))
        return built

    @staticmethod
    def _attempt(built: BuiltObjects, kind: str, name: str, context: dict[str, Any], make: Callable[[], T]) -> T | None:
        """``make()``, or None with a line in ``built.missing`` when the source data refuses it."""
        try:
            return make()
        except UNUSABLE_HEADER as exc:
            logger.warning(f"{name} not created: {exc}", extra={**context, "object": kind}, exc_info=True)
            built.missing.append(f"{name} not created: {exc}")
            return None

    def _build_inputs(
        self, job: ClaimedJob, volume: CTVolume, headers: list[Dataset], result: ModelResult,
        replaces: EarlierReport | None,
    ) -> _BuildInputs:
        """What every builder takes, on the slices that have a source image (``keep``)."""
        keep = [k for k, uid in enumerate(volume.source_sop_instance_uids) if uid is not None]
        label_map = result.label_map[keep]
        try:
            sources = self._sources(job, headers)
        except UNUSABLE_HEADER as exc:
            raise SourceDataError(f"the source headers cannot be copied into our objects: {exc}") from exc
        return _BuildInputs(
            uids=JobUids(self.settings.identity.uid_root, self.job_key(job)),
            sources=sources,
            label_map=label_map,
            hu=volume.hu[keep],
            algorithm=_algorithm(result),
            equipment=Equipment.from_identity(
                self.settings.identity, software_versions=f"dicom-node {__version__}; {model_key(self.model)}"
            ),
            assessment=StudyAssessment(result.positive, float(result.study_probability)),
            lesions=_lesion_measurements(result, label_map, keep),
            algorithm_text=f"{result.model_name} {result.model_version}",
            replaces=replaces,
        )

    def _seg(self, inputs: _BuildInputs, result: ModelResult) -> Dataset:
        out, uids = self.settings.outputs, inputs.uids
        segments = [SegmentSpec(f.label, f"ICH lesion {f.label}", uids.tracking(f.label)) for f in result.findings]
        if not segments:  # a negative study, by request: one empty segment, no broken SEG
            segments = [SegmentSpec(1, "ICH", uids.tracking(1))]
        return build_segmentation(
            source_images=inputs.sources,
            label_map=inputs.label_map,
            segments=segments,
            algorithm=inputs.algorithm,
            equipment=inputs.equipment,
            series_instance_uid=uids.series("seg"),
            series_number=out.seg_series_number,
            series_description=inputs.description(out.seg_series_description),
            sop_instance_uid=uids.instance("seg"),
            dimension_organization_uid=uids.dimension_organization("seg"),
        )

    def _report(self, inputs: _BuildInputs, segmentation: Dataset | None, missing: list[str]) -> Dataset:
        out, uids = self.settings.outputs, inputs.uids
        return build_report(
            source_images=inputs.sources,
            assessment=inputs.assessment,
            lesions=inputs.lesions if segmentation is not None else [],
            segmentation=segmentation,
            algorithm=inputs.algorithm,
            equipment=inputs.equipment,
            device_observer_uid=device_observer_uid(self.settings.identity.uid_root),
            series_instance_uid=uids.series("sr"),
            series_number=out.sr_series_number,
            series_description=inputs.description(out.sr_series_description),
            sop_instance_uid=uids.instance("sr"),
            missing=missing,
            previous_versions=[inputs.replaces.as_previous_version()] if inputs.replaces else [],
        )

    def _key_images(self, inputs: _BuildInputs) -> list[Dataset]:
        out, uids = self.settings.outputs, inputs.uids
        return build_key_images(
            source_images=inputs.sources,
            hu_volume=inputs.hu,
            label_map=inputs.label_map,
            lesions=inputs.lesions,
            assessment=inputs.assessment,
            equipment=inputs.equipment,
            algorithm_text=inputs.algorithm_text,
            series_instance_uid=uids.series("key_images"),
            series_number=out.key_images_series_number,
            series_description=inputs.description(out.key_images_series_description),
            sop_instance_uids=[uids.instance("key_images", n) for n in range(1, len(inputs.lesions) + 2)],
        )

    def _sources(self, job: ClaimedJob, headers: list[Dataset]) -> list[Dataset]:
        """The headers made fit to copy (see :mod:`dicom_node.outputs.sources`); logs what changed."""
        prepared = prepare_sources(headers, uid_root=self.settings.identity.uid_root)
        context = {"job_id": job.id, "study_instance_uid": job.study_instance_uid, "stage": "build"}
        if prepared.frame_of_reference_derived:
            logger.info("source series has no FrameOfReferenceUID: using one derived from its series UID", extra=context)
        for verb, keywords in (("normalised", prepared.normalised), ("emptied", prepared.emptied)):
            if keywords:  # keywords only: the values are patient data
                logger.info(f"source values {verb} in our objects: {', '.join(sorted(keywords))}", extra=context)
        return prepared.images


def _algorithm(result: ModelResult) -> AlgorithmInfo:
    """The model as the objects name it; the HU threshold baseline is a morphological operation."""
    family = codes.MORPHOLOGICAL_OPERATIONS if result.model_kind is ModelKind.THRESHOLD else codes.ARTIFICIAL_INTELLIGENCE
    return AlgorithmInfo(result.model_name, result.model_version, family)


def _lesion_measurements(result: ModelResult, label_map: np.ndarray, keep: list[int]) -> list[LesionMeasurement]:
    """The SR's and key images' figures for each finding, its key slice among the kept slices."""
    return [
        LesionMeasurement(
            segment_number=f.label,
            volume_ml=f.volume_ml,
            longest_axial_diameter_mm=f.longest_axial_diameter_mm,
            mean_hu=f.mean_hu,
            confidence=f.confidence,
            key_slice_index=_key_slice(label_map, f.label, keep, f.diameter_slice_index),
        )
        for f in result.findings
    ]


def _key_slice(label_map: np.ndarray, label: int, keep: list[int], diameter_slice: int) -> int:
    """The kept slice to show for a lesion: its largest-diameter slice, or the nearest kept
    slice that contains it when that one was interpolated."""
    if diameter_slice in keep:
        return keep.index(diameter_slice)
    containing = [k for k in range(label_map.shape[0]) if np.any(label_map[k] == label)]
    candidates = containing or list(range(len(keep)))
    return min(candidates, key=lambda k: abs(keep[k] - diameter_slice))
