"""The pixel-edge outline that the SR draws round a lesion (dicom_node/outputs/outline.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_node.outputs.outline import outer_outline
from tests.support.outputs_fixtures import pixels_inside


def test_a_rectangle_is_its_four_pixel_corners_closed() -> None:
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:4] = True  # rows 1-2, columns 1-3
    assert outer_outline(mask).tolist() == [[1, 1], [4, 1], [4, 3], [1, 3], [1, 1]]


def test_a_single_pixel_at_the_corner_of_the_image() -> None:
    mask = np.zeros((3, 3), dtype=bool)
    mask[2, 2] = True
    assert outer_outline(mask).tolist() == [[2, 2], [3, 2], [3, 3], [2, 3], [2, 2]]


def test_the_largest_region_wins_and_diagonal_neighbours_are_separate_regions() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[0, 0] = True  # touches the L-shape below only at a corner
    mask[1, 1:4] = True
    mask[2, 1] = True
    expected = mask.copy()
    expected[0, 0] = False
    assert np.array_equal(pixels_inside(outer_outline(mask), mask.shape), expected)


def test_a_hole_is_inside_the_outer_outline() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[1:6, 1:6] = True
    mask[3, 3] = False
    assert outer_outline(mask).tolist() == [[1, 1], [6, 1], [6, 6], [1, 6], [1, 1]]


def test_an_empty_mask_is_refused() -> None:
    with pytest.raises(ValueError, match="no foreground"):
        outer_outline(np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="2D"):
        outer_outline(np.zeros((2, 4, 4), dtype=bool))


@st.composite
def _row_run_blobs(draw: st.DrawFn) -> np.ndarray:
    """Hole-free, 4-connected masks: one run of pixels per row, each overlapping the run above."""
    height = draw(st.integers(1, 12))
    mask = np.zeros((height + 2, 16), dtype=bool)
    low, high = 5, 8
    for r in range(1, height + 1):
        new_low = draw(st.integers(max(1, low - 3), high - 1))
        high = draw(st.integers(max(new_low, low) + 1, min(15, high + 3)))
        low = new_low
        mask[r, low:high] = True
    return mask


@settings(max_examples=200, deadline=None)
@given(_row_run_blobs())
def test_the_outline_of_a_hole_free_region_encloses_exactly_its_pixels(mask: np.ndarray) -> None:
    polygon = outer_outline(mask)
    assert np.array_equal(polygon[0], polygon[-1])
    steps = np.diff(polygon, axis=0)
    assert np.all((steps[:, 0] == 0) != (steps[:, 1] == 0)), "every side runs along pixel edges"
    assert np.array_equal(pixels_inside(polygon, mask.shape), mask)
