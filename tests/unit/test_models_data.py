"""Data readers: the Kaggle PNG + VIA layout, NIfTI pairs, DICOM + SEG; splits by case."""

from __future__ import annotations

import json

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from highdicom.sr.coding import CodedConcept
from pydicom.sr.codedict import codes

from dicom_node.models.inputs import InputSpec
from dicom_node.training.data import case_names, detect_layout, evaluation_cases, load_training_data
from dicom_node.training.dicom_seg import dicom_cases_in, read_dicom_case
from dicom_node.training.kaggle import KaggleHeadCT, rasterize_polygons, read_via
from dicom_node.training.nifti import looks_like_hu, nifti_pairs, read_nifti_case
from dicom_node.training.splits import split_groups
from tests.support.models import write_tiny_kaggle
from tests.support.synthetic_ct import TEST_UID_PREFIX, Lesion, SeriesSpec, head_volume, write_series

SPEC = InputSpec(size=(64, 64))


@pytest.fixture(scope="module")
def tiny_kaggle(tmp_path_factory):
    return write_tiny_kaggle(tmp_path_factory.mktemp("kaggle") / "headct")


def test_kaggle_splits_are_fixed_by_image_number(tiny_kaggle):
    dataset = KaggleHeadCT.open(tiny_kaggle)
    assert dataset.ids("train") == ["000", "001", "002", "003", "100", "101", "102", "103"]
    assert dataset.ids("val") == ["070", "071", "170", "171"]
    assert dataset.ids("test") == ["090", "091", "190", "191"]
    with pytest.raises(ValueError, match="unknown split"):
        dataset.ids("holdout")


def test_kaggle_training_slices_carry_polygons_through_the_crop(tiny_kaggle):
    data = load_training_data(tiny_kaggle, SPEC, seed=0)
    assert data.train.images.shape == (8, 1, 64, 64) and data.train.images.dtype == np.float16
    positives = data.train.labels == 1
    assert (data.train.instances[positives].reshape(4, -1).max(axis=1) == 1).all()
    assert (data.train.instances[~positives] == 0).all()
    assert data.train.annotated.all()
    assert data.description["val_slices"] == 4


def test_a_positive_image_without_polygons_is_not_pixel_annotated(tiny_kaggle, tmp_path):
    via = json.loads((tiny_kaggle / "via" / "train.json").read_text())
    via["000.png"]["regions"] = []
    copy = tmp_path / "headct"
    copy.mkdir()
    for part in ("images", "labels.csv"):
        (copy / part).symlink_to(tiny_kaggle / part)
    (copy / "via").mkdir()
    (copy / "via" / "train.json").write_text(json.dumps(via))
    (copy / "via" / "val.json").symlink_to(tiny_kaggle / "via" / "val.json")
    data = load_training_data(copy, SPEC, seed=0)
    assert not data.train.annotated[data.train.keys.index("000")]
    assert data.train.annotated.sum() == 7


def test_evaluation_cases_stay_on_the_source_grid(tiny_kaggle):
    cases = list(evaluation_cases(tiny_kaggle, SPEC, split="val"))
    assert [c.key for c in cases] == ["070", "071", "170", "171"]
    for case in cases:
        assert case.truth.shape == case.volume.hu.shape == case.windowed.shape
        assert bool(case.truth.any()) == bool(case.label)
        assert 0.5 < case.volume.spacing_mm[1] < 3.0
    test_cases = list(evaluation_cases(tiny_kaggle, SPEC, split="test"))
    assert all(c.truth is None for c in test_cases)


def test_via_regions_other_than_polygons_are_refused(tmp_path):
    path = tmp_path / "via.json"
    region = {"shape_attributes": {"name": "rect", "x": 1, "y": 1, "width": 3, "height": 3}}
    path.write_text(json.dumps({"a.png1": {"filename": "a.png", "regions": [region]}}))
    with pytest.raises(ValueError, match="only polygons"):
        read_via(path)


def test_polygons_rasterise_as_numbered_instances():
    square = [(2.0, 2.0), (6.0, 2.0), (6.0, 6.0), (2.0, 6.0)]
    other = [(10.0, 10.0), (12.0, 10.0), (12.0, 12.0)]
    instances = rasterize_polygons([square, other], (16, 16))
    assert set(np.unique(instances)) == {0, 1, 2}
    assert instances[4, 4] == 1 and instances[0, 0] == 0


def test_missing_kaggle_parts_are_named(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("id, hemorrhage\n")
    with pytest.raises(FileNotFoundError, match="via/train.json is missing"):
        KaggleHeadCT.open(tmp_path)


def _write_nifti(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))


@pytest.mark.parametrize("stored_as", ["RAS", "LPS"])
def test_nifti_slices_are_shown_anterior_up_and_patient_right_on_the_left(tmp_path, stored_as):
    """A marker at the patient's right, anterior, inferior corner lands at slice 0, row 0, column 0."""
    (tmp_path / "ct_scans").mkdir()
    (tmp_path / "masks").mkdir()
    ras = np.full((20, 24, 5), -1000, dtype=np.int16)
    ras[19, 23, 0] = 70  # i max = right, j max = anterior, k 0 = inferior
    mask = (ras == 70).astype(np.uint8)
    affine = np.diag([0.5, 0.6, 5.0, 1.0])
    if stored_as == "LPS":  # the same image stored with flipped x and y axes
        ras, mask = ras[::-1, ::-1].copy(), mask[::-1, ::-1].copy()
        affine = np.diag([-0.5, -0.6, 5.0, 1.0])
        affine[:3, 3] = [9.5, 13.8, 0.0]
    _write_nifti(tmp_path / "ct_scans" / "049.nii", ras, affine)
    _write_nifti(tmp_path / "masks" / "049.nii", mask, affine)

    [(name, scan, mask_path)] = nifti_pairs(tmp_path)
    hu, truth, spacing = read_nifti_case(scan, mask_path)

    assert name == "049"
    assert hu.shape == truth.shape == (5, 24, 20)
    assert hu[0, 0, 0] == 70 and truth[0, 0, 0] and truth.sum() == 1
    assert spacing == pytest.approx((5.0, 0.6, 0.5))


def test_nifti_training_data_are_split_by_scan(tmp_path):
    (tmp_path / "ct_scans").mkdir()
    (tmp_path / "masks").mkdir()
    for number in range(5):
        spec = SeriesSpec(n_slices=3, rows=64, columns=64, pixel_spacing_mm=(3.0, 3.0), seed=number,
                          lesions=[Lesion(center_mm=(10.0, 5.0, 0.0), radius_mm=12.0)] if number % 2 else [])
        hu, truth = head_volume(spec)
        # head_volume is (slices, rows, cols) in display layout; store as RAS (i, j, k).
        to_ras = lambda a: np.ascontiguousarray(a.transpose(2, 1, 0)[::-1, ::-1])  # noqa: E731
        affine = np.diag([3.0, 3.0, 5.0, 1.0])
        _write_nifti(tmp_path / "ct_scans" / f"{number:03d}.nii.gz", to_ras(hu).astype(np.int16), affine)
        _write_nifti(tmp_path / "masks" / f"{number:03d}.nii.gz", to_ras(truth).astype(np.uint8), affine)
    data = load_training_data(tmp_path, SPEC, seed=1, val_fraction=0.4)
    train_scans = {g for g in data.train.groups}
    val_scans = {g for g in data.val.groups}
    assert not train_scans & val_scans and len(val_scans) == 2
    assert len(data.train) + len(data.val) == 15
    assert data.train.labels.sum() + data.val.labels.sum() > 0
    assert detect_layout(tmp_path) == "nifti"
    assert case_names(tmp_path, "nifti") == ["000", "001", "002", "003", "004"]


def test_group_split_is_seeded_and_never_empty():
    groups = [f"p{k}" for k in range(10)]
    assert split_groups(groups, val_fraction=0.2, seed=3) == split_groups(groups, val_fraction=0.2, seed=3)
    train, val = split_groups(groups, val_fraction=0.2, seed=3)
    assert len(val) == 2 and sorted(train + val) == sorted(groups)
    assert split_groups(["a", "b"], val_fraction=0.9, seed=0)[0]
    with pytest.raises(ValueError, match="at least two"):
        split_groups(["a"], val_fraction=0.5, seed=0)


def test_dicom_series_with_a_seg_reads_back_frame_for_frame(tmp_path):
    spec = SeriesSpec(n_slices=6, rows=64, columns=64, pixel_spacing_mm=(3.0, 3.0),
                      lesions=[Lesion(center_mm=(10.0, 5.0, 0.0), radius_mm=10.0)])
    case_dir = tmp_path / "case1"
    paths = write_series(spec, case_dir)
    _, truth = head_volume(spec)
    sources = [pydicom.dcmread(p) for p in paths]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=truth,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="ICH",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=CodedConcept("1386000", "SCT", "Intracranial hemorrhage"),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(TEST_UID_PREFIX.rstrip(".") + ".1"),
        series_number=99,
        sop_instance_uid=hd.UID(TEST_UID_PREFIX.rstrip(".") + ".2"),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    seg.save_as(case_dir / "seg.dcm")

    [case] = dicom_cases_in(tmp_path)
    volume, read_truth = read_dicom_case(case)

    assert case.name == "case1" and read_truth.shape == volume.hu.shape
    np.testing.assert_array_equal(read_truth, truth)


def test_a_nifti_scan_counts_as_measured_hu_only_when_it_holds_air():
    """The density rule needs measured HU: a windowed export (0-255) would put blood above it."""
    head_in_hu = np.full((2, 8, 8), -1000.0)
    head_in_hu[:, 2:6, 2:6] = 40.0
    assert looks_like_hu(head_in_hu)
    assert not looks_like_hu(np.clip((head_in_hu + 40) * 255 / 80, 0, 255))
    assert not looks_like_hu(np.zeros((0, 8, 8)))
