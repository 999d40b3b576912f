"""The PHE-SICH reader: window from the grey levels, hematoma from box and ring, orientation, splits.

Synthetic stacks in the PHE-SICH layout are written at test time; one test reads
the real folder (../shared/data) and checks the derivation against its boxes
and rings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dicom_node.models.inputs import InputSpec
from dicom_node.training.data import case_names, detect_layout, evaluation_cases, load_training_data
from dicom_node.training.phe_sich import (
    AIR_HU,
    BONE_HU,
    PheSich,
    derive_hematoma,
    grey_to_hu,
    measure_window,
)

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "phe-sich-ct-ids"
SIZE = 128


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(y - centre[0], x - centre[1]) <= radius


def _to_grey(hu: np.ndarray, lower: float, width: float) -> np.ndarray:
    """Render integer HU through a linear window, as the source did."""
    return np.clip(np.round((np.round(hu) - lower) * 255.0 / width), 0, 255).astype(np.uint8)


def _head_hu(rng: np.random.Generator, *, clot: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stored-layout (face-left) slice in HU, its edema ring and clot masks."""
    shape = (SIZE, SIZE)
    hu = np.full(shape, -1000.0)
    hu[_disc(shape, (64, 64), 58)] = 1000.0  # skull
    brain = _disc(shape, (64, 64), 52)
    hu[brain] = 30.0 + rng.normal(0.0, 4.0, shape)[brain]
    hu[_disc(shape, (64, 64), 8) & brain] = 5.0  # a ventricle of CSF
    ring = np.zeros(shape, dtype=bool)
    blood = np.zeros(shape, dtype=bool)
    if clot:
        blood = _disc(shape, (40, 80), 9)
        ring = _disc(shape, (40, 80), 13) & ~blood
        hu[ring] = 18.0
        hu[blood] = 65.0
    return hu, ring, blood


def _write_stack(
    root: Path, patient: str, *, slices: int, boxed: set[int], rng: np.random.Generator, outside: bool = False
) -> None:
    for k in range(slices):
        hu, ring, _ = _head_hu(rng, clot=k in boxed)
        if outside and k == 0:  # a hyperdense blob in the soft tissue outside the skull, as at the skull base
            hu[2:8, 2:12] = 65.0
        stem = f"{patient}_{k:02d}"
        Image.fromarray(_to_grey(hu, -20.0, 120.0)).save(root / "images" / f"{stem}.png")
        Image.fromarray((ring * 255).astype(np.uint8)).save(root / "phe_masks" / f"{stem}.png")
        body = ""
        if k in boxed:  # VOC: x = column, y = row of the stored (face-left) image
            body = "<object><name>a</name><bndbox><xmin>64</xmin><ymin>24</ymin><xmax>97</xmax><ymax>57</ymax></bndbox></object>"
        (root / "boxes" / f"{stem}.xml").write_text(f"<annotation><filename>{stem}.jpg</filename>{body}</annotation>")


@pytest.fixture
def tiny_phe(tmp_path: Path) -> Path:
    for part in ("images", "phe_masks", "boxes"):
        (tmp_path / part).mkdir()
    rng = np.random.default_rng(0)
    for number in range(1, 6):
        _write_stack(tmp_path, f"{number:04d}", slices=6, boxed={2, 3}, rng=rng)
    return tmp_path


def test_the_window_is_measured_from_the_comb_and_the_parenchyma_peak():
    rng = np.random.default_rng(1)
    # Tissue of every density from fat to bone, most of it parenchyma at 30 HU.
    hu = np.concatenate([rng.normal(30.0, 6.0, 200_000), rng.uniform(-100.0, 300.0, 100_000)])
    for lower, width in ((-20.0, 120.0), (0.0, 80.0)):
        measured = measure_window(_to_grey(hu, lower, width))
        assert measured[1] - measured[0] == width
        assert abs(measured[0] - lower) <= 2.0  # parenchyma put at 30 HU, as rendered


def test_grey_to_hu_inverts_the_window_and_saturates_to_air_and_bone():
    grey = np.array([0, 1, 128, 254, 255], dtype=np.uint8)
    hu = grey_to_hu(grey, (-20.0, 100.0))
    assert hu[0] == AIR_HU and hu[-1] == BONE_HU
    assert np.allclose(hu[1:4], -20.0 + grey[1:4] * 120.0 / 255.0)


def test_the_clot_is_the_hyperdense_inside_of_the_ring_and_not_the_ring_or_the_skull():
    rng = np.random.default_rng(2)
    hu, ring, blood = _head_hu(rng, clot=True)
    box = (20, 60, 61, 101)  # reaches the skull on purpose
    clot = derive_hematoma(hu, ring, [box])
    dice = 2 * (clot & blood).sum() / (clot.sum() + blood.sum())
    assert dice > 0.9
    assert not (clot & ring).any()
    assert not (clot & (hu >= BONE_HU)).any()


def test_a_partial_ring_still_finds_the_clot_beside_it():
    rng = np.random.default_rng(3)
    hu, ring, blood = _head_hu(rng, clot=True)
    partial = ring.copy()
    partial[:, :80] = False  # only half the ring was drawn
    clot = derive_hematoma(hu, partial, [(20, 60, 61, 101)])
    assert 2 * (clot & blood).sum() / (clot.sum() + blood.sum()) > 0.8


def test_no_box_means_no_clot():
    hu, ring, _ = _head_hu(np.random.default_rng(4), clot=True)
    assert not derive_hematoma(hu, ring, []).any()


def test_a_stack_is_turned_anterior_up_with_its_boxes(tiny_phe: Path):
    stack = PheSich.open(tiny_phe).stack("0001")
    assert stack.hu.shape == (6, SIZE, SIZE)
    assert stack.labels.tolist() == [0, 0, 1, 1, 0, 0]
    # Stored clot centre (row 40, col 80) turns clockwise to (row 80, col 127 - 40).
    rows, cols = np.nonzero(stack.hematoma[2])
    assert abs(rows.mean() - 80) < 2 and abs(cols.mean() - 87) < 2
    (r0, c0, r1, c1), = stack.boxes[2]
    assert r0 <= rows.min() and rows.max() < r1 and c0 <= cols.min() and cols.max() < c1


def test_the_folder_is_read_as_its_own_layout_and_split_by_patient(tiny_phe: Path):
    assert detect_layout(tiny_phe) == "phe-sich"
    assert case_names(tiny_phe, "phe-sich") == ["0001", "0002", "0003", "0004", "0005"]
    data = load_training_data(tiny_phe, InputSpec(size=(64, 64)), seed=0, val_fraction=0.2)
    assert not set(data.train.groups) & set(data.val.groups)
    assert len(data.train) + len(data.val) == 30
    assert data.train.annotated.all()  # unboxed slices are true negatives, boxed ones have a clot
    assert (data.train.instances[data.train.labels == 1] > 0).any(axis=(1, 2)).all()
    cases = list(evaluation_cases(tiny_phe, InputSpec(size=(64, 64)), split="val", seed=0))
    assert [c.key for c in cases] == data.description["val_cases"]
    assert cases[0].truth.shape == (6, SIZE, SIZE) and cases[0].label == 1


def test_on_the_real_folder_the_derivation_agrees_with_boxes_and_rings():
    assert (REAL / "images").is_dir(), f"PHE-SICH data missing at {REAL}; see ../shared/data/README.md"
    dataset = PheSich.open(REAL)
    boxed = found = 0
    for patient in dataset.patients()[:6]:
        stack = dataset.stack(patient)
        for k, boxes in enumerate(stack.boxes):
            clot = stack.hematoma[k]
            if not boxes:
                assert not clot.any()
                continue
            boxed += 1
            found += int(clot.any())
            assert not (clot & stack.edema[k]).any()
            inside = np.zeros_like(clot)
            for r0, c0, r1, c1 in boxes:
                inside[r0:r1, c0:c1] = True
            assert not (clot & ~inside).any()
            if clot.any():  # hyperdense (parenchyma reads 30 HU), up to filled holes
                assert np.median(stack.hu[k][clot]) > 38 and (stack.hu[k][clot] > 38).mean() > 0.9
    assert boxed > 20 and found / boxed >= 0.9


def test_two_folders_train_together_each_split_by_its_own_rule(tiny_phe: Path, tmp_path_factory):
    from dicom_node.training.data import load_training_sets
    from tests.support.models import write_tiny_kaggle

    kaggle = write_tiny_kaggle(tmp_path_factory.mktemp("kaggle") / "headct")
    spec = InputSpec(size=(64, 64))
    joined = load_training_sets([kaggle, tiny_phe], spec, seed=0)
    alone = [load_training_data(p, spec, seed=0) for p in (kaggle, tiny_phe)]
    assert len(joined.train) == sum(len(a.train) for a in alone)
    assert joined.train.keys == alone[0].train.keys + alone[1].train.keys
    assert [f["layout"] for f in joined.description["folders"]] == ["kaggle", "phe-sich"]
    assert not set(joined.train.groups) & set(joined.val.groups)


class _EverythingHyperdense:
    """Marks every 50-90 HU voxel, inside the skull or not, as a finding (confidence 0.9)."""

    class parameters:  # noqa: N801 - the attribute the evaluation reads
        decision_threshold = 0.5

    def predict(self, volume):  # type: ignore[no-untyped-def]
        from dicom_node.models.result import ModelKind, ModelResult, findings_from_labels

        labelled = findings_from_labels((volume.hu >= 50) & (volume.hu <= 90), volume, confidences=0.9)
        return ModelResult(
            model_kind=ModelKind.THRESHOLD,
            model_name="naive",
            model_version="0",
            label_map=labelled.label_map,
            findings=labelled.findings,
            study_probability=0.9 if labelled.findings else 0.0,
            decision_threshold=0.5,
        )


def test_whole_study_evaluation_counts_a_finding_outside_the_skull_and_the_gate_removes_it(tmp_path: Path):
    from dicom_node.training.evaluate import evaluate_threshold, format_table

    for part in ("images", "phe_masks", "boxes"):
        (tmp_path / part).mkdir()
    rng = np.random.default_rng(5)
    for number in (1, 2):
        _write_stack(tmp_path, f"{number:04d}", slices=6, boxed={2, 3}, rng=rng, outside=True)
    naive = _EverythingHyperdense()  # a model with no notion of the skull, as the networks are
    plain = evaluate_threshold(tmp_path, splits=["all"], resamples=10, model=naive)  # type: ignore[arg-type]
    gated = evaluate_threshold(tmp_path, splits=["all"], resamples=10, model=naive, gate=True)  # type: ignore[arg-type]
    before = plain.splits[0].metrics["whole_study"]
    after = gated.splits[0].metrics["whole_study"]
    assert before["patients"] == 2 and before["false_positive_findings_per_patient"] >= 1.0
    assert before["negative_slice_specificity"]["lower"] < 1.0
    assert after["false_positive_findings_per_patient"] < before["false_positive_findings_per_patient"]
    assert after["lesion_sensitivity"] == before["lesion_sensitivity"] == 1.0
    assert plain.splits[0].false_positives and "whole stacks" in format_table(plain, gated)


def test_clot_free_evaluation_turns_each_stack_s_bleed_free_runs_into_negative_studies(tmp_path: Path):
    from dicom_node.training.evaluate import evaluate_threshold, format_table

    for part in ("images", "phe_masks", "boxes"):
        (tmp_path / part).mkdir()
    rng = np.random.default_rng(6)
    for number in (1, 2):
        _write_stack(tmp_path, f"{number:04d}", slices=20, boxed={9, 10}, rng=rng)
    whole = evaluate_threshold(tmp_path, splits=["all"], resamples=10)
    cut = evaluate_threshold(tmp_path, splits=["all"], resamples=10, clot_free=True)
    assert whole.splits[0].truth.tolist() == [1, 1]
    # Below and above the clot of each patient, one slice of margin either side: 4 negative studies.
    assert cut.splits[0].truth.tolist() == [0, 0, 0, 0]
    assert cut.splits[0].metrics["whole_study"]["patients"] == 4
    assert cut.model == "threshold (clot-free)" and "(clot-free)" in format_table(cut)
