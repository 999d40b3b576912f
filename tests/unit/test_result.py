"""The common result type, connected components, hole filling and lesion measurements."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from dicom_node.imaging.volume import CTVolume, assemble_volume
from dicom_node.models.result import (
    ModelKind,
    ModelResult,
    fill_holes_2d,
    findings_from_labels,
    label_components,
    largest_component,
)
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, series_datasets


def reference_labels(mask: np.ndarray) -> np.ndarray:
    """Breadth-first face-connected labelling, voxel by voxel: slow but obviously right."""
    labels = np.zeros(mask.shape, dtype=int)
    current = 0
    for start in zip(*np.nonzero(mask)):
        if labels[start]:
            continue
        current += 1
        labels[start] = current
        queue = deque([start])
        while queue:
            voxel = queue.popleft()
            for axis in range(mask.ndim):
                for step in (-1, 1):
                    neighbour = list(voxel)
                    neighbour[axis] += step
                    neighbour = tuple(neighbour)
                    if 0 <= neighbour[axis] < mask.shape[axis] and mask[neighbour] and not labels[neighbour]:
                        labels[neighbour] = current
                        queue.append(neighbour)
    return labels


@pytest.mark.parametrize("shape", [(40,), (17, 23), (6, 9, 11), (3, 4, 5, 6)])
@pytest.mark.parametrize("density", [0.3, 0.55])
def test_labelling_matches_a_breadth_first_reference(shape, density):
    mask = np.random.default_rng(sum(shape)).random(shape) < density
    labels, n = label_components(mask)
    expected = reference_labels(mask)
    assert n == expected.max()
    # Same numbering: both count components in raster order of their first voxel.
    np.testing.assert_array_equal(labels, expected)


def test_labelling_empty_and_full():
    labels, n = label_components(np.zeros((3, 4, 5), dtype=bool))
    assert n == 0 and not labels.any()
    labels, n = label_components(np.ones((3, 4, 5), dtype=bool))
    assert n == 1 and (labels == 1).all()


def test_labelling_slice_by_slice():
    mask = np.ones((3, 4, 4), dtype=bool)
    labels, n = label_components(mask, connect_axes=(1,))
    assert n == 3
    assert [set(np.unique(s)) for s in labels] == [{1}, {2}, {3}]


def test_fill_holes_fills_enclosed_background_only():
    ring = np.zeros((9, 9), dtype=bool)
    ring[2:7, 2:7] = True
    ring[3:6, 3:6] = False
    filled = fill_holes_2d(ring)
    assert filled[2:7, 2:7].all() and filled.sum() == 25

    open_ring = ring.copy()
    open_ring[4, 6] = False  # a gap to the outside
    assert fill_holes_2d(open_ring).sum() == open_ring.sum()

    at_border = np.zeros((5, 5), dtype=bool)
    at_border[:, 1] = at_border[:, 3] = True
    at_border[0, 2] = True  # column 2 is open to the bottom border
    assert fill_holes_2d(at_border).sum() == at_border.sum()


def test_fill_holes_works_per_slice():
    stack = np.zeros((3, 7, 7), dtype=bool)
    stack[1, 1:6, 1:6] = True
    stack[1, 3, 3] = False
    stack[0, 3, 3] = True
    filled = fill_holes_2d(stack)
    assert filled[1, 3, 3]
    assert filled[0].sum() == 1 and filled[2].sum() == 0


def test_largest_component():
    mask = np.zeros((4, 10, 10), dtype=bool)
    mask[0, 0:2, 0:2] = True
    mask[2:4, 5:9, 5:9] = True
    np.testing.assert_array_equal(largest_component(mask), np.pad(np.ones((2, 4, 4), bool), ((2, 0), (5, 1), (5, 1))))
    assert not largest_component(np.zeros((2, 2), dtype=bool)).any()


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
    with pytest.raises(ValueError, match="labels without a finding"):
        ModelResult(
            model_kind=ModelKind.UNET,
            model_name="unet-test",
            model_version="0",
            label_map=labelled.label_map,
            findings=labelled.findings[:1],
            study_probability=0.7,
            decision_threshold=0.5,
        )
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ModelResult(
            model_kind=ModelKind.UNET,
            model_name="unet-test",
            model_version="0",
            label_map=labelled.label_map.astype(np.int32),
            findings=labelled.findings,
            study_probability=0.7,
            decision_threshold=0.5,
        )
    with pytest.raises(ValueError, match=r"study_probability must be in \[0, 1\]"):
        ModelResult(
            model_kind=ModelKind.UNET,
            model_name="unet-test",
            model_version="0",
            label_map=labelled.label_map,
            findings=labelled.findings,
            study_probability=1.5,
            decision_threshold=0.5,
        )
