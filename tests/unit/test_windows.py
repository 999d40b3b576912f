"""Windows: the named presets, the [0, 1] scaling, channel stacking and 8-bit round trips."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_node.imaging.windows import (
    BONE,
    BRAIN,
    STANDARD_WINDOWS,
    SUBDURAL,
    Window,
    from_uint8,
    stack_windows,
    to_uint8,
    window_by_name,
)


def test_named_presets():
    assert (BRAIN.center, BRAIN.width) == (40, 80)
    assert (SUBDURAL.center, SUBDURAL.width) == (80, 200)
    assert (BONE.center, BONE.width) == (600, 2800)
    assert set(STANDARD_WINDOWS) == {"brain", "subdural", "bone"}
    assert window_by_name("subdural") is SUBDURAL
    with pytest.raises(ValueError, match="standard windows are brain, subdural, bone"):
        window_by_name("lung")


def test_brain_window_maps_its_range_linearly_to_unit_interval():
    hu = np.array([-1024, 0, 20, 40, 60, 80, 3000], dtype=np.int16)
    np.testing.assert_allclose(BRAIN.apply(hu), [0, 0, 0.25, 0.5, 0.75, 1, 1])
    assert BRAIN.apply(hu).dtype == np.float32


def test_width_must_be_positive():
    with pytest.raises(ValueError, match="width must be positive"):
        Window(name="flat", center=0, width=0)


def test_stack_windows_of_a_slice_is_channels_first():
    hu = np.array([[-1000, 40], [80, 2000]], dtype=np.int16)
    stacked = stack_windows(hu, ["brain", SUBDURAL, BONE])
    assert stacked.shape == (3, 2, 2)
    assert stacked.dtype == np.float32
    np.testing.assert_allclose(stacked[0], BRAIN.apply(hu))
    np.testing.assert_allclose(stacked[1], SUBDURAL.apply(hu))
    np.testing.assert_allclose(stacked[2], BONE.apply(hu))
    assert stacked.min() >= 0 and stacked.max() <= 1


def test_stack_windows_of_a_stack_is_a_batch():
    hu = np.random.default_rng(0).integers(-1024, 3000, size=(4, 8, 8)).astype(np.int16)
    stacked = stack_windows(hu, [BRAIN, BONE])
    assert stacked.shape == (4, 2, 8, 8)
    np.testing.assert_allclose(stacked[:, 1], BONE.apply(hu))


def test_stack_windows_needs_a_window():
    with pytest.raises(ValueError, match="at least one window"):
        stack_windows(np.zeros((2, 2)), [])


def test_uint8_round_trip_is_within_half_a_grey_level():
    image = np.linspace(0, 1, 1001, dtype=np.float32)
    restored = from_uint8(to_uint8(image))
    assert np.abs(restored - image).max() <= 0.5 / 255 + 1e-7
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(np.zeros(3, dtype=np.uint16))
