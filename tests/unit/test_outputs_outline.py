"""The pixel-edge outline that the SR draws round a lesion (dicom_node/outputs/outline.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dicom_node.outputs.outline import outer_outline


def _inside(polygon: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixel centres inside a closed polygon (even-odd rule)."""
    rows, columns = np.mgrid[0 : shape[0], 0 : shape[1]]
    x, y = columns + 0.5, rows + 0.5
    inside = np.zeros(shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(polygon[:-1], polygon[1:], strict=True):
        if y0 != y1:
            inside ^= ((y0 > y) != (y1 > y)) & (x < x0 + (y - y0) * (x1 - x0) / (y1 - y0))
    return inside


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
    assert np.array_equal(_inside(outer_outline(mask), mask.shape), expected)


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
    assert np.array_equal(_inside(polygon, mask.shape), mask)
