"""2.5D input: neighbouring slices as channels, in training and inference alike.

Synthetic stacks whose slices differ only in the HU of one disk, so that each
channel can be traced back to the slice it came from.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dicom_node.imaging.geometry import prepare_hu
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.card import CARD_FILE, ModelCard
from dicom_node.models.inputs import (
    InputSpec,
    context_indices,
    mask_outside_head,
    slice_from_hu,
    slice_from_hu_stack,
    slice_from_windowed,
    slice_from_windowed_stack,
)
from dicom_node.models.registry import SHIPPED_WEIGHTS, LoadedModel, build_network
from dicom_node.models.runner import Runner, measured_slices
from dicom_node.training.augment import Augmentation, augment_batch
from dicom_node.training.data import load_training_sets
from dicom_node.training.train import expand_input_channels
from tests.support.models import one_torch_thread, tiny_card  # noqa: F401

SPEC_2D = InputSpec(size=(64, 64))
SPEC_25D = dataclasses.replace(SPEC_2D, context_slices=1)


def disk_stack(n: int = 7, rows: int = 96) -> np.ndarray:
    """``n`` slices of a head-like disk in air; slice k's disk reads 22 + 6 k HU (brain window 0..80)."""
    yy, xx = np.mgrid[:rows, :rows]
    disk = (yy - rows / 2) ** 2 + (xx - rows / 2) ** 2 < (rows * 0.35) ** 2
    hu = np.full((n, rows, rows), -1000.0, dtype=np.float32)
    for k in range(n):
        hu[k][disk] = 22.0 + 6.0 * k
    return hu


def centre_value(image: np.ndarray) -> np.ndarray:
    """Each channel's value at the middle of the model image (inside the disk)."""
    return image[:, image.shape[1] // 2, image.shape[2] // 2]


def test_context_zero_is_exactly_the_2d_input():
    hu = disk_stack()
    # The 2D road as it was before 2.5D existed: prepare, then blank outside the head.
    before = prepare_hu(hu[3], windows=["brain"], output_shape=(64, 64), pixel_spacing=(0.8, 0.8))
    expected = np.array(before.image, dtype=np.float32)
    mask_outside_head(expected, brain_channel=0)

    now = slice_from_hu_stack(hu, 3, spec=SPEC_2D, pixel_spacing=(0.8, 0.8), spacing_z=5.0)
    assert now.image.shape == (1, 64, 64)
    assert now.image.dtype == expected.dtype
    assert np.array_equal(now.image, expected)
    assert now.transform == before.transform
    assert np.array_equal(slice_from_hu(hu[3], spec=SPEC_2D, pixel_spacing=(0.8, 0.8)).image, expected)


def test_neighbours_are_channels_in_position_order_lowest_first():
    hu = disk_stack()
    image = slice_from_hu_stack(hu, 3, spec=SPEC_25D, pixel_spacing=(0.8, 0.8), spacing_z=5.0).image
    assert image.shape == (3, 64, 64)
    # Brain window 40/80: HU v reads v / 80. Slices 2, 3, 4 read 34, 40, 46 HU.
    assert np.allclose(centre_value(image), np.array([34.0, 40.0, 46.0]) / 80.0, atol=1e-5)
    # The centre channel is the 2D input itself.
    two_d = slice_from_hu_stack(hu, 3, spec=SPEC_2D, pixel_spacing=(0.8, 0.8), spacing_z=5.0).image
    assert np.array_equal(image[1:2], two_d)


def test_edge_slices_repeat_themselves_for_the_missing_neighbour():
    hu = disk_stack()
    first = slice_from_hu_stack(hu, 0, spec=SPEC_25D, pixel_spacing=None, spacing_z=5.0).image
    last = slice_from_hu_stack(hu, 6, spec=SPEC_25D, pixel_spacing=None, spacing_z=5.0).image
    assert np.array_equal(first[0], first[1]) and not np.array_equal(first[1], first[2])
    assert np.array_equal(last[2], last[1]) and not np.array_equal(last[0], last[1])
    assert context_indices(7, 0, spec=SPEC_25D, spacing_z=5.0) == (0, 0, 1)
    assert context_indices(7, 6, spec=SPEC_25D, spacing_z=5.0) == (5, 6, 6)


def test_neighbours_are_taken_the_context_spacing_apart():
    # 1.25 mm slices: the neighbours 5 mm away are 4 slices away.
    assert context_indices(20, 10, spec=SPEC_25D, spacing_z=1.25) == (6, 10, 14)
    assert context_indices(20, 2, spec=SPEC_25D, spacing_z=1.25) == (2, 2, 6)
    # 7 mm still counts as a neighbour of a 5 mm context; 10 mm slices are a gap: the centre repeats.
    assert context_indices(20, 10, spec=SPEC_25D, spacing_z=7.0) == (9, 10, 11)
    assert context_indices(20, 10, spec=SPEC_25D, spacing_z=10.0) == (10, 10, 10)
    # Unknown spacing: no neighbour can be trusted.
    assert context_indices(20, 10, spec=SPEC_25D, spacing_z=None) == (10, 10, 10)
    two = dataclasses.replace(SPEC_25D, context_slices=2)
    assert context_indices(20, 10, spec=two, spacing_z=5.0) == (8, 9, 10, 11, 12)


def test_a_filled_in_slice_is_not_a_neighbour():
    measured = [True, True, False, True, True]
    assert context_indices(5, 1, spec=SPEC_25D, spacing_z=5.0, measured=measured) == (0, 1, 1)
    assert context_indices(5, 3, spec=SPEC_25D, spacing_z=5.0, measured=measured) == (3, 3, 4)
    volume = CTVolume(
        hu=disk_stack(3),
        spacing_mm=(5.0, 1.0, 1.0),
        affine=None,
        source_sop_instance_uids=("1.2.3", None, "1.2.4"),
    )
    assert measured_slices(volume) == (True, False, True)
    assert measured_slices(CTVolume.from_array(disk_stack(3), spacing_mm=(5.0, 1.0, 1.0))) is None


def test_neighbours_use_the_centre_slices_crop():
    hu = disk_stack()
    hu[2] = -1000.0  # the slice below holds a much smaller head: its own crop would differ
    yy, xx = np.mgrid[:96, :96]
    hu[2][(yy - 48) ** 2 + (xx - 48) ** 2 < 10**2] = 34.0
    image = slice_from_hu_stack(hu, 3, spec=SPEC_25D, pixel_spacing=None, spacing_z=5.0).image
    centre = image[1] > 0
    below = image[0] > 0
    # The small disk is small in the centre slice's frame, and centred where the big one is.
    assert below.sum() < 0.2 * centre.sum()
    rows, cols = np.nonzero(below)
    assert abs(rows.mean() - 31.5) < 1.5 and abs(cols.mean() - 31.5) < 1.5


def test_an_isolated_windowed_image_repeats_itself_in_every_channel():
    brain = np.clip(disk_stack(1)[0] / 80.0, 0.0, 1.0)
    two_d = slice_from_windowed(brain, spec=SPEC_2D).image
    image = slice_from_windowed(brain, spec=SPEC_25D).image
    assert image.shape == (3, 64, 64)
    for channel in image:
        assert np.array_equal(channel, two_d[0])
    stacked = slice_from_windowed_stack(np.stack([brain] * 3), 1, spec=SPEC_25D, spacing_z=5.0).image
    assert np.array_equal(stacked, image)


def test_augmentation_moves_every_channel_alike():
    # Three identical channels stay identical (noise off) only if each gets the same geometry and contrast.
    hu = disk_stack()
    hu[:, 30:40, 50:60] = 70.0  # an off-centre block: rotation, flip and shift all move it
    one = slice_from_hu_stack(hu, 3, spec=SPEC_2D, pixel_spacing=None, spacing_z=5.0).image
    images = torch.from_numpy(np.stack([np.concatenate([one] * 3)] * 4))
    labels = torch.zeros(4, 64, 64, dtype=torch.int64)
    out, _ = augment_batch(images, labels, torch.Generator().manual_seed(3), Augmentation(noise_sigma=0.0))
    assert not torch.equal(out, images)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])


def test_2d_weights_start_a_25d_network_that_computes_the_same():
    card_2d = dataclasses.replace(tiny_card("unet"), input=SPEC_2D)
    card_25d = dataclasses.replace(card_2d, input=SPEC_25D)
    torch.manual_seed(0)
    net_2d, net_25d = build_network(card_2d).eval(), build_network(card_25d).eval()
    state = expand_input_channels(net_2d.state_dict(), net_25d.state_dict(), SPEC_25D)
    net_25d.load_state_dict(state)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert torch.equal(net_2d(x), net_25d(torch.cat([torch.rand_like(x), x, torch.rand_like(x)], dim=1)))
    assert expand_input_channels(net_2d.state_dict(), net_2d.state_dict(), SPEC_2D) is not None


def test_the_runner_feeds_a_25d_model_its_neighbours():
    card = dataclasses.replace(tiny_card("unet"), input=SPEC_25D)
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            seen.append(images.clone())
            return torch.full((images.shape[0], 1, *images.shape[2:]), -20.0)

    loaded = LoadedModel(card=card, network=Recorder(), directory=SHIPPED_WEIGHTS)
    volume = CTVolume.from_array(disk_stack(5), spacing_mm=(5.0, 0.8, 0.8))
    Runner(loaded, device="cpu", batch_size=2).predict(volume)
    batch = torch.cat(seen).numpy()
    assert batch.shape == (5, 3, 64, 64)
    values = np.stack([centre_value(image) for image in batch]) * 80.0
    expected = [[22, 22, 28], [22, 28, 34], [28, 34, 40], [34, 40, 46], [40, 46, 46]]
    assert np.allclose(values, expected, atol=1e-3)


def test_a_2d_cards_input_section_is_written_back_unchanged():
    for folder in sorted(p for p in SHIPPED_WEIGHTS.iterdir() if (p / CARD_FILE).is_file()):
        written = json.loads((folder / CARD_FILE).read_text())["input"]
        card = ModelCard.load(folder)
        if card.input.context_slices == 0:
            assert "context_slices" not in written
            assert json.dumps(card.input.to_json(), indent=2) == json.dumps(written, indent=2), folder.name


def test_a_25d_card_round_trips_its_context():
    card = dataclasses.replace(tiny_card("unet"), input=dataclasses.replace(SPEC_25D, context_spacing_mm=3.0))
    again = ModelCard.from_json(json.loads(json.dumps(card.to_json())))
    assert again.input == card.input
    assert again.input.channels == 3
    with pytest.raises(ValueError, match="context_slices"):
        InputSpec(context_slices=-1)
    with pytest.raises(ValueError, match="context_spacing_mm"):
        InputSpec(context_slices=1, context_spacing_mm=0.0)


def test_oversampling_names_one_of_the_data_folders(tmp_path):
    with pytest.raises(ValueError, match="not among the data folders"):
        load_training_sets([tmp_path / "a"], SPEC_2D, seed=0, oversample={"b": 2})
