"""Thin HU slices averaged into the slab thickness a network learned on (imaging.slabs), and the
runner feeding a card's network those slabs while it measures on the volume's own slices."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dicom_node.imaging.slabs import SlabStack, slab_slices, thick_slabs
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.card import ModelCard
from dicom_node.models.inputs import InputSpec, context_indices
from dicom_node.models.registry import SHIPPED_WEIGHTS, LoadedModel
from dicom_node.models.runner import Runner
from tests.support.models import one_torch_thread, tiny_card  # noqa: F401


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [(0.5, 11), (0.625, 9), (1.0, 5), (1.25, 5), (1.25 + 1e-12, 5), (2.0, 3), (2.08, 3), (2.1, 1), (2.5, 1), (5.0, 1), (None, 1), (0.0, 1)],
)
def test_a_slab_is_the_odd_number_of_slices_nearest_5_mm_and_at_most_a_quarter_over(spacing, expected):
    assert slab_slices(spacing, 5.0) == expected


def _materialised(stack) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert isinstance(stack, SlabStack)
    return np.stack([stack[k] for k in range(len(stack))])


def test_no_slab_asked_or_thick_slices_return_the_stack_itself():
    hu = np.zeros((6, 4, 4), dtype=np.int16)
    assert thick_slabs(hu, spacing_z=1.0, slab_mm=0.0) is hu
    assert thick_slabs(hu, spacing_z=5.0, slab_mm=5.0) is hu
    assert thick_slabs(hu, spacing_z=None, slab_mm=5.0) is hu


def test_each_slice_becomes_the_mean_of_its_slab_cut_short_at_the_ends():
    # HU equal to 10 x the slice index: 2 mm slices average 3 at a time (6 mm).
    hu = (10 * np.arange(6, dtype=np.int16))[:, None, None] * np.ones((1, 2, 2), dtype=np.int16)
    out = _materialised(thick_slabs(hu, spacing_z=2.0, slab_mm=5.0))
    assert out.dtype == np.int16 and out.shape == hu.shape
    assert out[:, 0, 0].tolist() == [5, 10, 20, 30, 40, 45]  # (0+10)/2 ... (40+50)/2


def test_a_filled_in_slice_is_left_out_of_every_mean_and_kept_as_it_was():
    hu = (10 * np.arange(5, dtype=np.float32))[:, None, None] * np.ones((1, 2, 2), dtype=np.float32)
    hu[2] = 999.0  # what the volume put where an instance was missing
    out = _materialised(thick_slabs(hu, spacing_z=2.0, slab_mm=5.0, measured=[True, True, False, True, True]))
    assert out[:, 0, 0].tolist() == [5.0, 5.0, 999.0, 35.0, 35.0]


@pytest.mark.parametrize(("spacing", "slices"), [(0.625, 9), (0.5, 11), (1.0, 5), (0.3, 19)])
def test_a_25d_read_averages_each_slab_once_and_nobody_can_change_one(monkeypatch, spacing, slices):
    """Each slice and its context a slab thickness away, as the 2.5D networks read them: one
    average per slab, not three."""
    spec = InputSpec(context_slices=1, context_spacing_mm=5.0, slab_mm=5.0)
    count = 80
    hu = np.arange(count * 4 * 4, dtype=np.int16).reshape(count, 4, 4)
    assert slab_slices(spacing, 5.0) == slices
    expected = [SlabStack(hu, slices)._slab(k) for k in range(count)]
    averaged: list[int] = []
    slab = SlabStack._slab
    monkeypatch.setattr(SlabStack, "_slab", lambda self, k: averaged.append(k) or slab(self, k))
    stack = thick_slabs(hu, spacing_z=spacing, slab_mm=5.0)
    for k in range(count):
        for j in context_indices(count, k, spec=spec, spacing_z=spacing):
            np.testing.assert_array_equal(stack[j], expected[j])
    assert sorted(averaged) == list(range(count))
    with pytest.raises(ValueError, match="read-only"):
        stack[count - 1][0, 0] = 1


def test_averaging_brings_thin_slice_noise_down_to_a_thick_slices():
    rng = np.random.default_rng(0)
    hu = rng.normal(35.0, 20.0, size=(60, 64, 64)).astype(np.float32)
    out = _materialised(thick_slabs(hu, spacing_z=0.625, slab_mm=5.0))  # 9 slices: sd / 3
    assert float(out[10:-10].std()) == pytest.approx(20.0 / 3, rel=0.1)
    assert float(out.mean()) == pytest.approx(35.0, abs=0.5)


def test_the_runner_feeds_the_network_slabs_and_measures_on_the_volume():
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(images.clone())
            return torch.full((images.shape[0], 1, *images.shape[2:]), 20.0)  # every pixel a finding

    # 1 mm slices alternating 20 and 60 HU inside a disc: a slab of 5 reads 36-44 HU, a slice 20 or 60.
    count, size = 9, 64
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size / 3) ** 2
    hu = np.full((count, size, size), -1000.0, dtype=np.float32)
    for k in range(count):
        hu[k][disc] = 20.0 if k % 2 else 60.0
    volume = CTVolume.from_array(hu, spacing_mm=(1.0, 0.8, 0.8))
    measured_hu = []
    for slab_mm, expected_centre in ((0.0, 60.0), (5.0, 44.0)):
        seen.clear()
        card = dataclasses.replace(tiny_card("unet"), input=InputSpec(size=(64, 64), slab_mm=slab_mm))
        result = Runner(LoadedModel(card=card, network=Recorder(), directory=SHIPPED_WEIGHTS), device="cpu").predict(volume)
        centre_slice = torch.cat(seen).numpy()[4, 0]
        assert centre_slice[32, 32] * 80.0 == pytest.approx(expected_centre, abs=0.5)  # brain window 0-80 HU
        assert result.label_map.shape == hu.shape
        measured_hu.append([finding.mean_hu for finding in result.findings])
    assert measured_hu[0] and measured_hu[0] == measured_hu[1]  # the finding's HU: the volume's, slab or not


def test_a_card_round_trips_its_slab_and_older_cards_have_none():
    card = dataclasses.replace(tiny_card("unet"), input=InputSpec(slab_mm=5.0))
    again = ModelCard.from_json(card.to_json())
    assert again.input.slab_mm == 5.0
    assert "slab_mm" not in InputSpec().to_json()
    assert InputSpec.from_json({"size": [64, 64], "windows": ["brain"]}).slab_mm == 0.0
    with pytest.raises(ValueError, match="slab_mm"):
        InputSpec(slab_mm=-1.0)
