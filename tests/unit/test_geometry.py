"""Head crop and resize, the way back to the source grid, and PNG/DICOM equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.imaging.geometry import (
    CropResize,
    find_head,
    plan_crop,
    prepare_hu,
    prepare_windowed,
)
from dicom_node.imaging.windows import BONE, BRAIN, SUBDURAL, from_uint8, stack_windows, to_uint8
from tests.support.synthetic_ct import Lesion, SeriesSpec, head_volume

SPEC = SeriesSpec(
    n_slices=3,
    rows=256,
    columns=256,
    pixel_spacing_mm=(0.9, 0.9),
    lesions=[Lesion(center_mm=(20.0, 10.0, 0.0), radius_mm=12.0)],
)


@pytest.fixture(scope="module")
def phantom() -> tuple[np.ndarray, np.ndarray]:
    volume, mask = head_volume(SPEC)
    return volume[1], mask[1]


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(cols[0]), int(rows[-1] + 1), int(cols[-1] + 1)


def test_head_box_ignores_the_table_and_small_objects(phantom):
    hu, _ = phantom
    head_box = bbox(hu >= 20)
    cluttered = hu.copy()
    cluttered[240:244, 10:246] = 150  # the table: wide, thin, apart from the head
    cluttered[5:9, 5:9] = 300  # a cable clip
    assert find_head(BRAIN.apply(cluttered)) == head_box


def test_head_box_of_a_stack_covers_every_slice():
    volume, _ = head_volume(SPEC)
    stack_box = find_head(BRAIN.apply(volume))
    for hu in volume:
        r0, c0, r1, c1 = find_head(BRAIN.apply(hu))
        assert stack_box[0] <= r0 and stack_box[1] <= c0 and stack_box[2] >= r1 and stack_box[3] >= c1


def test_crop_is_square_in_mm_and_contains_the_head(phantom):
    hu, _ = phantom
    transform = plan_crop(BRAIN.apply(hu), output_shape=(224, 224), pixel_spacing=(0.9, 0.6))
    row0, col0, height, width = transform.box
    assert height * 0.9 == pytest.approx(width * 0.6)
    r0, c0, r1, c1 = find_head(BRAIN.apply(hu))
    assert row0 - 0.5 <= r0 - 0.5 and row0 + height - 0.5 >= r1 - 0.5
    assert col0 - 0.5 <= c0 - 0.5 and col0 + width - 0.5 >= c1 - 0.5
    assert transform.head_found


def test_no_head_uses_the_whole_image():
    transform = plan_crop(np.zeros((100, 80), dtype=np.float32), output_shape=(64, 64))
    assert not transform.head_found
    assert transform.box == pytest.approx((0.0, -10.0, 100.0, 100.0))  # square, centred


def test_coordinates_round_trip():
    transform = CropResize(source_shape=(512, 400), box=(30.5, -20.0, 380.0, 420.0), output_shape=(256, 224))
    rows = np.array([0.0, 17.3, 255.0])
    cols = np.array([0.0, 100.0, 223.0])
    back = transform.source_to_model(*transform.model_to_source(rows, cols))
    np.testing.assert_allclose(back, (rows, cols))


def test_mask_round_trip_through_model_size(phantom):
    hu, lesion = phantom
    transform = plan_crop(BRAIN.apply(hu), output_shape=(128, 128))
    small = transform.to_model(lesion.astype(np.uint8), order="nearest")
    assert small.shape == (128, 128)
    assert small.dtype == np.uint8
    back = transform.to_source(small, order="nearest")
    assert back.shape == hu.shape
    intersection = np.logical_and(back, lesion).sum()
    union = np.logical_or(back, lesion).sum()
    assert intersection / union > 0.9
    # A probability map goes back with linear interpolation, thresholded after.
    probability = transform.to_model(lesion.astype(np.float32), order="linear")
    back_probability = transform.to_source(probability, order="linear") >= 0.5
    assert np.logical_and(back_probability, lesion).sum() / np.logical_or(back_probability, lesion).sum() > 0.9
    # Nothing lands outside the crop.
    assert not back[:, : int(transform.box[1])].any()


def test_to_model_handles_leading_axes(phantom):
    hu, _ = phantom
    channels = stack_windows(np.stack([hu, hu]), [BRAIN, BONE])  # (2, 2, rows, cols)
    transform = plan_crop(channels[:, 0], output_shape=(64, 96))
    out = transform.to_model(channels)
    assert out.shape == (2, 2, 64, 96)
    np.testing.assert_allclose(out[1, 1], transform.to_model(channels[1, 1]))


def test_outside_the_image_is_filled():
    image = np.ones((10, 10), dtype=np.float32)
    transform = CropResize(source_shape=(10, 10), box=(-4.5, -4.5, 20.0, 20.0), output_shape=(20, 20))
    out = transform.to_model(image, fill=0.0)
    assert out[0, 0] == 0.0 and out[10, 10] == 1.0


@pytest.mark.parametrize("windows", [[BRAIN], [BRAIN, SUBDURAL, BONE], [SUBDURAL, BRAIN]])
def test_dicom_slice_and_its_png_give_the_same_model_input(phantom, windows):
    hu, _ = phantom
    from_dicom = prepare_hu(hu, windows=windows, output_shape=(160, 160))

    png = to_uint8(stack_windows(hu, windows))  # what the training export wrote
    brain_channel = [w.name for w in windows].index("brain")
    from_png = prepare_windowed(from_uint8(png), output_shape=(160, 160), brain_channel=brain_channel)

    assert from_png.transform == from_dicom.transform
    assert from_dicom.image.shape == (len(windows), 160, 160)
    assert np.abs(from_png.image - from_dicom.image).max() <= 0.5 / 255 + 1e-6


def test_a_model_without_the_brain_window_still_crops_on_it(phantom):
    hu, _ = phantom
    bone_only = prepare_hu(hu, windows=[BONE], output_shape=(64, 64))
    with_brain = prepare_hu(hu, windows=[BRAIN, BONE], output_shape=(64, 64))
    assert bone_only.image.shape == (1, 64, 64)
    assert bone_only.transform == with_brain.transform
    np.testing.assert_allclose(bone_only.image[0], with_brain.image[1])
