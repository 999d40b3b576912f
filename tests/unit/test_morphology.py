"""Connected components, hole filling and in-plane morphology (imaging/morphology.py)."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from dicom_node.imaging.morphology import (
    close_in_plane,
    dilate_in_plane,
    erode_in_plane,
    farther_than,
    fill_holes_2d,
    label_components,
    largest_component,
)


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


def _disc(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return (yy**2 + xx**2) <= radius**2


@pytest.mark.parametrize("radius", [2, 5, 9])
def test_dilation_by_an_octagon_is_close_to_a_disc(radius):
    point = np.zeros((1, 41, 41), dtype=bool)
    point[0, 20, 20] = True
    grown = dilate_in_plane(point, radius)[0]
    disc = np.pad(_disc(radius), 20 - radius)
    # An octagon is not a disc: it may differ on a thin rim, never further than a pixel.
    if radius >= 5:  # small discs are too coarse for an area comparison
        assert (grown ^ disc).sum() <= 0.25 * disc.sum()
    assert not (grown & ~dilate_in_plane(disc[None], 1)[0]).any()
    assert not (disc & ~dilate_in_plane(grown[None], 1)[0]).any()


def test_erosion_is_the_dual_of_dilation_and_treats_outside_as_background():
    mask = np.random.default_rng(3).random((2, 30, 30)) < 0.7
    eroded = erode_in_plane(mask, 3)
    np.testing.assert_array_equal(eroded, ~dilate_in_plane(np.pad(~mask, ((0, 0), (1, 1), (1, 1)), constant_values=True), 3)[:, 1:-1, 1:-1])
    full = np.ones((1, 10, 10), dtype=bool)
    assert not erode_in_plane(full, 2)[0, :2].any() and erode_in_plane(full, 2)[0, 4, 4]


def test_morphology_stays_in_its_slice():
    stack = np.zeros((3, 21, 21), dtype=bool)
    stack[1, 10, 10] = True
    grown = dilate_in_plane(stack, 4)
    assert not grown[0].any() and not grown[2].any() and grown[1].sum() > 30


def test_closing_bridges_a_gap_narrower_than_twice_the_radius_only():
    ring = np.zeros((1, 60, 60), dtype=bool)
    yy, xx = np.mgrid[:60, :60]
    distance = np.hypot(yy - 30, xx - 30)
    ring[0] = (distance <= 25) & (distance >= 22)
    narrow = ring.copy()
    narrow[0, 27:33, :30] = False  # a 6-pixel gap on the left
    wide = ring.copy()
    wide[0, 14:46, :30] = False  # a 32-pixel gap
    assert fill_holes_2d(close_in_plane(narrow, 4))[0, 30, 30]
    assert not fill_holes_2d(close_in_plane(wide, 4))[0, 30, 30]
    # Closing never removes foreground, also at the image border.
    edge = np.zeros((1, 20, 20), dtype=bool)
    edge[0, :, 0] = True
    assert close_in_plane(edge, 3)[0, :, 0].all()


def test_margin_is_an_exact_euclidean_erosion_with_anisotropic_pixels():
    rng = np.random.default_rng(3)
    inside = rng.random((2, 30, 40)) < 0.97
    dy, dx, radius = 0.7, 0.5, 2.0
    kept = farther_than(inside, dy, dx, radius)

    outside = np.argwhere(~inside)
    for k, i, j in np.ndindex(inside.shape):
        same_slice = outside[outside[:, 0] == k]
        distances = np.hypot((same_slice[:, 1] - i) * dy, (same_slice[:, 2] - j) * dx)
        # The image border counts as outside: the nearest pixel beyond each edge.
        border = min((i + 1) * dy, (30 - i) * dy, (j + 1) * dx, (40 - j) * dx)
        expected = inside[k, i, j] and min(distances.min(initial=np.inf), border) > radius
        assert kept[k, i, j] == expected, (k, i, j)
