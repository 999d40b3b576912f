"""The common result type and the lesion measurements."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from dicom_node.imaging.volume import CTVolume, assemble_volume
from dicom_node.models.result import ModelKind, ModelResult, findings_from_labels
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, series_datasets


@pytest.fixture(scope="module")
def two_lesions() -> tuple[SeriesSpec, CTVolume, np.ndarray]:
    spec = SeriesSpec(
        n_slices=24,
        rows=160,
        columns=160,
        pixel_spacing_mm=(1.2, 1.0),
        slice_thickness_mm=2.5,
        lesions=[
            Lesion(center_mm=(25.0, 10.0, 5.0), radius_mm=12.0),
            Lesion(center_mm=(-30.0, -20.0, -5.0), radius_mm=6.0, hu=75.0),
        ],
    )
    volume = assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)
    _, mask = head_volume(spec)
    return spec, volume, mask


def test_planted_lesions_are_measured(two_lesions):
    spec, volume, mask = two_lesions
    result = findings_from_labels(mask, volume, confidences=0.9)
    assert [f.label for f in result.findings] == [1, 2]
    big, small = result.findings
    assert result.label_map.dtype == np.uint8
    assert set(np.unique(result.label_map)) == {0, 1, 2}

    single = SeriesSpec(**{**spec.__dict__, "lesions": spec.lesions[:1]})
    _, big_mask = head_volume(single)
    assert big.volume_ml == pytest.approx(lesion_volume_ml(spec, big_mask))
    assert big.volume_ml + small.volume_ml == pytest.approx(lesion_volume_ml(spec, mask))
    np.testing.assert_allclose(big.centroid_patient_mm, (25.0, 10.0, 5.0), atol=0.3)
    np.testing.assert_allclose(small.centroid_patient_mm, (-30.0, -20.0, -5.0), atol=0.3)
    # The in-plane diameter through the centre, edge to edge: 2r within a pixel diagonal.
    assert big.longest_axial_diameter_mm == pytest.approx(24.0, abs=1.6)
    assert small.longest_axial_diameter_mm == pytest.approx(12.0, abs=1.6)
    assert big.mean_hu == pytest.approx(65.0, abs=0.5)
    assert small.mean_hu == pytest.approx(75.0, abs=0.5)
    assert big.confidence == small.confidence == 0.9
    k, i, j = big.centroid_index
    np.testing.assert_allclose(volume.index_to_patient([k, i, j]), big.centroid_patient_mm)


def test_small_components_are_removed(two_lesions):
    _, volume, mask = two_lesions
    result = findings_from_labels(mask, volume, min_volume_ml=1.0)
    assert len(result.findings) == 1
    assert set(np.unique(result.label_map)) == {0, 1}


def test_holes_are_filled_before_measuring(two_lesions):
    _, volume, mask = two_lesions
    holed = mask.copy()
    k, i, j = np.argwhere(mask).mean(axis=0).round().astype(int)
    holed[k, i - 1 : i + 2, j - 1 : j + 2] = False
    filled = findings_from_labels(holed, volume)
    assert sum(f.voxel_count for f in filled.findings) == mask.sum()
    kept = findings_from_labels(holed, volume, fill_holes=False)
    assert sum(f.voxel_count for f in kept.findings) == mask.sum() - 9


def test_diameter_uses_real_non_square_spacing():
    hu = np.zeros((2, 20, 20), dtype=np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[1, 2:12, 3:7] = 1  # 10 rows x 4 columns
    volume = CTVolume.from_array(hu, spacing_mm=(3.0, 0.5, 0.8))
    (finding,) = findings_from_labels(labels, volume).findings
    assert finding.longest_axial_diameter_mm == pytest.approx(np.hypot(10 * 0.5, 4 * 0.8))
    assert finding.diameter_slice_index == 1
    assert finding.volume_ml == pytest.approx(40 * 3.0 * 0.5 * 0.8 / 1000)
    assert finding.centroid_index == pytest.approx((1.0, 6.5, 4.5))
    assert finding.centroid_patient_mm is None  # no affine


def test_confidence_from_a_probability_map_and_from_instance_scores():
    hu = np.zeros((1, 12, 12), dtype=np.int16)
    volume = CTVolume.from_array(hu, spacing_mm=(1.0, 1.0, 1.0))
    instances = np.zeros(hu.shape, dtype=np.uint16)
    instances[0, 1:4, 1:4] = 7
    instances[0, 1:4, 4:6] = 9  # touches instance 7: one component
    instances[0, 8:10, 8:10] = 3
    probability = np.where(instances > 0, 0.8, 0.0)
    probability[0, 1, 1] = 0.35

    by_probability = findings_from_labels(instances, volume, confidences=probability).findings
    assert by_probability[0].confidence == pytest.approx((14 * 0.8 + 0.35) / 15)
    by_score = findings_from_labels(instances, volume, confidences={7: 0.6, 9: 0.95, 3: 0.4}).findings
    assert [f.confidence for f in by_score] == [0.95, 0.4]
    assert findings_from_labels(instances, volume).findings[0].confidence is None


def test_many_lesions_need_uint16():
    hu = np.zeros((1, 40, 40), dtype=np.int16)
    mask = np.zeros(hu.shape, dtype=bool)
    mask[0, ::2, ::2] = True  # 400 isolated voxels
    result = findings_from_labels(mask, CTVolume.from_array(hu, spacing_mm=(1.0, 1.0, 1.0)))
    assert len(result.findings) == 400
    assert result.label_map.dtype == np.uint16


def test_prediction_must_be_on_the_source_grid():
    volume = CTVolume.from_array(np.zeros((2, 4, 4), dtype=np.int16), spacing_mm=(1, 1, 1))
    with pytest.raises(ValueError, match="mapped back to the source grid"):
        findings_from_labels(np.zeros((2, 8, 8), dtype=bool), volume)


def test_model_result_derives_the_call_and_checks_consistency(two_lesions):
    _, volume, mask = two_lesions
    labelled = findings_from_labels(mask, volume)
    result = ModelResult(
        model_kind=ModelKind.UNET,
        model_name="unet-test",
        model_version="0",
        label_map=labelled.label_map,
        findings=labelled.findings,
        study_probability=0.7,
        decision_threshold=0.5,
    )
    assert result.positive
    negative = ModelResult(
        model_kind=ModelKind.CLASSIFIER,
        model_name="classifier-test",
        model_version="0",
        label_map=np.zeros(volume.shape, dtype=np.uint8),
        findings=(),
        study_probability=0.2,
        decision_threshold=0.5,
        slice_probabilities=np.zeros(volume.shape[0]),
    )
    assert not negative.positive
    # replace() builds a new result, so each changed field is checked as in the constructor.
    with pytest.raises(ValueError, match="labels without a finding"):
        replace(result, findings=labelled.findings[:1])
    with pytest.raises(ValueError, match="uint8 or uint16"):
        replace(result, label_map=labelled.label_map.astype(np.int32))
    with pytest.raises(ValueError, match=r"study_probability must be in \[0, 1\]"):
        replace(result, study_probability=1.5)
