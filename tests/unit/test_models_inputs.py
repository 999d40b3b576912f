"""The one road to model input: DICOM HU and their brain-window PNG give the same input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dicom_node.imaging.volume import assemble_volume
from dicom_node.imaging.windows import BRAIN, to_uint8
from dicom_node.models.inputs import (
    InputSpec,
    head_mask,
    read_png_brain,
    slice_from_hu,
    slice_from_windowed,
)
from tests.support.synthetic_ct import Lesion, SeriesSpec, series_datasets

SPEC = InputSpec(size=(128, 128), windows=("brain",))


@pytest.fixture(scope="module")
def ct_volume():
    spec = SeriesSpec(
        n_slices=3,
        rows=200,
        columns=180,
        pixel_spacing_mm=(0.9, 1.1),
        lesions=[Lesion(center_mm=(20.0, 10.0, 0.0), radius_mm=12.0)],
    )
    return assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_a_dicom_slice_and_its_brain_window_png_give_the_same_model_input(ct_volume, tmp_path, mode):
    hu = ct_volume.hu[1]
    # The DICOM road, as the runner takes it (the PNG has no spacing, so neither does this slice).
    from_dicom = slice_from_hu(hu, spec=SPEC, pixel_spacing=None)

    grey = to_uint8(BRAIN.apply(hu))  # how the training PNGs were rendered
    channels = {"L": grey, "RGB": np.stack([grey] * 3, -1), "RGBA": np.dstack([grey] * 3 + [np.full_like(grey, 255)])}
    path = tmp_path / f"slice-{mode}.png"
    Image.fromarray(channels[mode]).save(path)
    from_png = slice_from_windowed(read_png_brain(path), spec=SPEC)

    assert from_png.transform == from_dicom.transform
    assert from_dicom.image.shape == (1, 128, 128)
    assert np.abs(from_png.image - from_dicom.image).max() <= 0.5 / 255 + 1e-6


def test_transparent_pixels_are_air(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:2, :, 3] = 255
    path = tmp_path / "transparent.png"
    Image.fromarray(rgba).save(path)
    brain = read_png_brain(path)
    assert np.allclose(brain[:2], 200 / 255) and np.allclose(brain[2:], 0.0)


def test_16_bit_pngs_are_refused(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(path)
    with pytest.raises(ValueError, match="not an 8-bit rendering"):
        read_png_brain(path)


def test_head_mask_drops_figure_letters_and_keeps_the_brain():
    brain = np.zeros((64, 64), dtype=np.float32)
    y, x = np.mgrid[0:64, 0:64]
    inside = np.hypot(y - 34, x - 32) <= 24
    brain[inside] = 1.0
    brain[np.hypot(y - 34, x - 32) <= 21] = 0.45
    brain[np.hypot(y - 34, x - 30) <= 4] = 0.1  # a ventricle: CSF below the head level
    brain[1:5, 1:5] = 1.0  # a letter in the corner
    mask = head_mask(brain)
    assert mask[inside].all()
    assert not mask[1:5, 1:5].any()


def test_a_multi_window_model_cannot_read_brain_window_pngs():
    spec = InputSpec(size=(64, 64), windows=("brain", "subdural", "bone"))
    with pytest.raises(ValueError, match="needs HU input"):
        slice_from_windowed(np.zeros((64, 64), np.float32), spec=spec)


def test_multi_window_hu_input_has_one_channel_per_window(ct_volume):
    spec = InputSpec(size=(64, 64), windows=("subdural", "brain", "bone"))
    prepared = slice_from_hu(ct_volume.hu[1], spec=spec, pixel_spacing=(0.9, 1.1))
    assert prepared.image.shape == (3, 64, 64)
    assert prepared.image.dtype == np.float32


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": (100, 100)}, "multiple of 32"),
        ({"windows": ("lung",)}, "unknown window"),
        ({"windows": ("brain", "brain")}, "only once"),
        ({"windows": ()}, "at least one window"),
        ({"crop": "per-study"}, "per-slice"),
        ({"margin_fraction": -0.1}, "must not be negative"),
    ],
)
def test_input_spec_states_its_rules(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InputSpec(**kwargs)


def test_input_spec_round_trips_through_json():
    spec = InputSpec(size=(64, 96), windows=("brain", "bone"), margin_fraction=0.1)
    assert InputSpec.from_json(spec.to_json()) == spec
