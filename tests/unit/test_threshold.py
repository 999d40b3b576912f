"""The HU threshold baseline on the synthetic phantom."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dicom_node.imaging.volume import CTVolume, assemble_volume
from dicom_node.models.result import ModelKind
from dicom_node.models.threshold import (
    ThresholdModel,
    ThresholdParameters,
    intracranial_mask,
    probability_from_volume,
)
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume, lesion_volume_ml, series_datasets

LESION = Lesion(center_mm=(20.0, 10.0, 5.0), radius_mm=10.0, hu=65.0)


def phantom(**overrides) -> tuple[SeriesSpec, CTVolume]:
    values = dict(n_slices=24, rows=256, columns=256, pixel_spacing_mm=(0.9, 0.9), lesions=[LESION])
    values.update(overrides)
    spec = SeriesSpec(**values)
    return spec, assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)


def test_finds_a_planted_65_hu_lesion_within_10_percent():
    spec, volume = phantom()
    _, mask = head_volume(spec)
    planted_ml = lesion_volume_ml(spec, mask)

    result = ThresholdModel().predict(volume)

    assert result.model_kind is ModelKind.THRESHOLD
    assert len(result.findings) == 1
    (finding,) = result.findings
    assert finding.volume_ml == pytest.approx(planted_ml, rel=0.10)
    np.testing.assert_allclose(finding.centroid_patient_mm, LESION.center_mm, atol=1.0)
    assert finding.mean_hu == pytest.approx(65.0, abs=3.0)
    overlap = np.logical_and(result.label_map > 0, mask).sum() / np.logical_or(result.label_map > 0, mask).sum()
    assert overlap > 0.85
    assert result.study_probability == pytest.approx(finding.volume_ml / (finding.volume_ml + 0.5))
    assert finding.confidence == result.study_probability
    assert result.positive
    assert result.label_map.shape == volume.shape
    assert result.slice_probabilities.argmax() in np.unique(np.nonzero(mask)[0])


def test_finds_nothing_in_a_lesion_free_phantom():
    _, volume = phantom(lesions=[])
    result = ThresholdModel().predict(volume)
    assert result.findings == ()
    assert not result.label_map.any()
    assert result.study_probability == 0.0
    assert not result.positive


def test_partial_volume_next_to_the_skull_is_not_blood():
    spec, volume = phantom(lesions=[])
    hu = volume.hu.copy()
    # A 2-pixel rim of 70 HU along the inner table, as partial volume and beam
    # hardening produce: inside the cavity, touching bone.
    cavity = intracranial_mask(volume, parameters=ThresholdParameters(margin_mm=0.0))
    eroded = cavity.copy()
    for _ in range(2):
        eroded[:, 1:-1, 1:-1] &= eroded[:, :-2, 1:-1] & eroded[:, 2:, 1:-1] & eroded[:, 1:-1, :-2] & eroded[:, 1:-1, 2:]
    hu[cavity & ~eroded] = 70
    rimmed = dataclasses.replace(volume, hu=hu)

    assert ThresholdModel().predict(rimmed).findings == ()
    no_margin = ThresholdModel(parameters=ThresholdParameters(margin_mm=0.0)).predict(rimmed)
    assert no_margin.findings  # the margin is what keeps the rim out


def test_blood_outside_the_skull_is_ignored():
    _, volume = phantom(lesions=[])
    hu = volume.hu.copy()
    hu[8:14, 120:136, 39:43] = 65  # a scalp haematoma against the outer table (x -80..-76 mm)
    result = ThresholdModel().predict(dataclasses.replace(volume, hu=hu))
    assert result.findings == ()


def test_works_on_a_tilted_acquisition():
    spec, volume = phantom(gantry_tilt_deg=15.0)
    _, mask = head_volume(spec)
    result = ThresholdModel().predict(volume)
    assert len(result.findings) == 1
    assert result.findings[0].volume_ml == pytest.approx(lesion_volume_ml(spec, mask), rel=0.10)
    np.testing.assert_allclose(result.findings[0].centroid_patient_mm, LESION.center_mm, atol=1.0)


def test_probability_is_a_transparent_function_of_volume():
    assert probability_from_volume(0.0, half_probability_ml=0.5) == 0.0
    assert probability_from_volume(0.5, half_probability_ml=0.5) == 0.5
    assert probability_from_volume(9.5, half_probability_ml=0.5) == pytest.approx(0.95)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"blood_hu": (90.0, 50.0)}, "low < high"),
        ({"bone_hu": 80.0}, "above the blood range"),
        ({"margin_mm": -1.0}, "must not be negative"),
        ({"half_probability_ml": 0.0}, "must be positive"),
    ],
)
def test_parameters_are_checked(overrides, message):
    with pytest.raises(ValueError, match=message):
        ThresholdParameters(**overrides)
