"""Connected components, hole filling and in-plane morphology: the one module for both.

Every part of the node that reasons about regions uses these functions: the
lesion measurements (:mod:`dicom_node.models.result`), the threshold baseline,
the head crop (:mod:`dicom_node.imaging.geometry`) and the intracranial space
(:mod:`dicom_node.imaging.anatomy`).

The techniques, each where it fits best:

* Labelling and hole filling of full-resolution masks work on *runs* (maximal
  stretches of foreground along the last axis). A head CT has a few runs per
  image row, so the union-find runs over tens of thousands of runs instead of
  millions of voxels, every step is vectorised, and no int32 label image of a
  1000-slice mask is made. Measured on a 240x512x512 ring mask on this machine:
  0.45 s to fill holes slice by slice, where ``scipy.ndimage.binary_fill_holes``
  takes 3.3 s (it propagates voxel by voxel).
* Dilation and erosion in the image plane use ``scipy.ndimage`` (separable
  maximum filters for the square part, a cross iterated for the diamond part:
  an octagon, a close and cheap stand-in for a disc).
* Where the exact distance matters (the threshold baseline's margin from the
  skull, in mm with anisotropic pixels), :func:`farther_than` erodes by a true
  disc with boolean scans, column by column.

"In-plane" means along the last two axes of a ``(slices, rows, cols)`` array:
a radiologist reads a head CT slice by slice, and a head's openings (foramen
magnum) would make 3D operations leak between structures that each slice keeps
apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Fill holes a chunk of this many slices at a time, to bound temporary memory.
_SLICES_PER_CHUNK = 32

#: Find runs this many voxels at a time, to bound the temporary int8 copies.
_VOXELS_PER_RUN_CHUNK = 1 << 22


@dataclass(frozen=True)
class _Runs:
    """The foreground runs of an array along its last axis, in raster order."""

    leading: tuple[int, ...]  # the shape without the last axis
    width: int  # the length of the last axis
    line: np.ndarray  # flat index of the run's line in the leading shape
    start: np.ndarray  # first voxel of the run
    end: np.ndarray  # one past its last voxel

    @classmethod
    def of(cls, mask: np.ndarray) -> _Runs:
        width = mask.shape[-1]
        lines = mask.reshape(-1, width)
        per_chunk = max(1, _VOXELS_PER_RUN_CHUNK // (width + 2))
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for first in range(0, lines.shape[0], per_chunk):
            chunk = lines[first : first + per_chunk]
            padded = np.zeros((chunk.shape[0], width + 2), dtype=np.int8)
            padded[:, 1:-1] = chunk
            edges = np.diff(padded, axis=1)
            start_line, start = np.nonzero(edges == 1)
            _, end = np.nonzero(edges == -1)
            parts.append((start_line + first, start, end))
        line, start, end = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return cls(leading=tuple(mask.shape[:-1]), width=width, line=line, start=start, end=end)

    @property
    def n_lines(self) -> int:
        return int(np.prod(self.leading, dtype=np.int64))

    def components(self, connect_axes: Sequence[int] | None) -> tuple[np.ndarray, int]:
        """A component number (1..n, raster order of first run) for every run, and n."""
        n_runs = self.line.size
        if n_runs == 0:
            return np.zeros(0, dtype=np.int32), 0
        leading, width = self.leading, self.width
        axes = range(len(leading)) if connect_axes is None else connect_axes
        if any(not 0 <= a < len(leading) for a in axes):
            raise ValueError("connect_axes must name axes other than the last one")
        # One global ordering of runs by (line, position), for searchsorted.
        key_stride = width + 2
        start_key = self.line * key_stride + self.start
        end_key = self.line * key_stride + self.end
        line_strides = np.cumprod((1,) + leading[::-1])[:-1][::-1]
        line_coords = np.unravel_index(self.line, leading)

        sources: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        for axis in axes:
            runs = np.flatnonzero(line_coords[axis] < leading[axis] - 1)
            target_line = self.line[runs] + line_strides[axis]
            # The runs of the next line along ``axis`` that overlap [start, end)
            # form a contiguous range of the ordering: [lo, hi).
            lo = np.searchsorted(end_key, target_line * key_stride + self.start[runs], side="right")
            hi = np.searchsorted(start_key, target_line * key_stride + self.end[runs], side="left")
            counts = np.maximum(hi - lo, 0)
            total = int(counts.sum())
            if total == 0:
                continue
            sources.append(np.repeat(runs, counts))
            offsets = np.repeat(lo - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
            targets.append(np.arange(total) + offsets)

        parent = np.arange(n_runs)
        if sources:
            a = np.concatenate(sources)
            b = np.concatenate(targets)
            # Union-find, vectorised: hook every root to the smallest root it
            # touches, then compress paths fully, until every edge joins equal roots.
            while True:
                root_a, root_b = parent[a], parent[b]
                differ = root_a != root_b
                if not differ.any():
                    break
                low = np.minimum(root_a[differ], root_b[differ])
                np.minimum.at(parent, root_a[differ], low)
                np.minimum.at(parent, root_b[differ], low)
                while True:
                    grand = parent[parent]
                    if np.array_equal(grand, parent):
                        break
                    parent = grand
        roots, run_labels = np.unique(parent, return_inverse=True)
        return run_labels.astype(np.int32) + 1, int(roots.size)

    def paint(self, values: np.ndarray, dtype: type, where: np.ndarray | None = None) -> np.ndarray:
        """An array of the mask's shape holding ``values[r]`` on run ``r`` (0 elsewhere).

        Differences at run starts and ends, then one cumulative sum per line:
        no per-voxel index arrays, which would cost 8 bytes per voxel.
        """
        line, start, end = self.line, self.start, self.end
        if where is not None:
            line, start, end, values = line[where], start[where], end[where], values[where]
        painted = np.zeros((self.n_lines, self.width), dtype=dtype)
        painted[line, start] = values
        inside = end < self.width  # a run reaching the line's end needs no closing step
        painted[line[inside], end[inside]] -= values[inside]
        np.cumsum(painted, axis=1, out=painted)
        return painted.reshape(self.leading + (self.width,))


def label_components(
    mask: np.ndarray, *, connect_axes: Sequence[int] | None = None
) -> tuple[np.ndarray, int]:
    """Face-connected components of a boolean array: (int32 labels 1..n, n).

    Labels are numbered in raster order of each component's first voxel.
    ``connect_axes`` lists the axes, other than the last one, along which
    neighbours connect (default: all, i.e. 6-connectivity in 3D). Pass ``(1,)``
    for a ``(slices, rows, cols)`` stack to label each slice on its own.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim < 1:
        raise ValueError("mask must have at least one dimension")
    if mask.ndim == 1:
        mask2 = mask[None]
        labels, n = label_components(mask2, connect_axes=())
        return labels[0], n
    runs = _Runs.of(mask)
    run_labels, n = runs.components(connect_axes)
    return runs.paint(run_labels, np.int32), n


def bounding_box(mask: np.ndarray, pad: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, widened by ``pad``; None if empty."""
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(mask.any(axis=other))
        if present.size == 0:
            return None
        box.append(slice(max(0, present[0] - pad), min(mask.shape[axis], present[-1] + 1 + pad)))
    return tuple(box)


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill the holes of each slice of a ``(slices, rows, cols)`` mask (or one 2D mask).

    A hole is background that cannot reach the slice's border through
    background (4-connectivity). Done per slice because what matters is what
    the reader sees enclosed on an axial image, and because a head's openings
    (foramen magnum) would make 3D filling leak.
    """
    squeeze = mask.ndim == 2
    mask3 = np.asarray(mask, dtype=bool)[None] if squeeze else np.asarray(mask, dtype=bool)
    if mask3.ndim != 3:
        raise ValueError("fill_holes_2d takes (rows, cols) or (slices, rows, cols)")
    filled = mask3.copy()
    box = bounding_box(mask3.any(axis=0), pad=1)
    if box is not None:
        rows, cols = box
        for first in range(0, mask3.shape[0], _SLICES_PER_CHUNK):
            chunk = slice(first, first + _SLICES_PER_CHUNK)
            background = _Runs.of(~mask3[chunk, rows, cols])
            run_labels, n = background.components(connect_axes=(1,))
            # Background touching the box's border is outside (the box is padded
            # by one pixel, or is the image border itself).
            row = np.unravel_index(background.line, background.leading)[1]
            touches = (row == 0) | (row == background.leading[1] - 1)
            touches |= (background.start == 0) | (background.end == background.width)
            outside = np.zeros(n + 1, dtype=bool)
            outside[run_labels[touches]] = True
            holes = ~outside[run_labels]
            if holes.any():
                ones = np.ones(run_labels.size, dtype=np.int8)
                filled[chunk, rows, cols] |= background.paint(ones, np.int8, where=holes).view(bool)
    return filled[0] if squeeze else filled


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest face-connected component of a boolean array (all False if empty).

    Chosen from the runs' lengths and painted as booleans, so that no int32
    label image of the whole (possibly 1000-slice) mask is ever made.
    """
    out = np.zeros(mask.shape, dtype=bool)
    box = bounding_box(np.asarray(mask, dtype=bool))
    if box is None:
        return out
    runs = _Runs.of(np.asarray(mask[box], dtype=bool))
    run_labels, n = runs.components(connect_axes=None)
    sizes = np.bincount(run_labels, weights=runs.end - runs.start, minlength=n + 1)
    largest = int(np.argmax(sizes[1:])) + 1
    ones = np.ones(run_labels.size, dtype=np.int8)
    out[box] = runs.paint(ones, np.int8, where=run_labels == largest).view(bool)
    return out


def farther_than(inside: np.ndarray, dy: float, dx: float, radius_mm: float) -> np.ndarray:
    """True where ``inside`` voxels are more than ``radius_mm`` (in-plane, Euclidean) from outside.

    An exact erosion by a disc, done as boolean tests: first each pixel's
    distance to the nearest outside pixel in its own column (two cumulative
    scans); then a pixel is kept when, for every column offset ``o`` within the
    radius, the outside pixels of column ``j + o`` are farther than
    ``sqrt(r^2 - (o dx)^2)`` vertically. Beyond the image border counts as outside.
    """
    _, rows, cols = inside.shape
    index_type = np.int16 if rows < np.iinfo(np.int16).max else np.int32
    index = np.arange(rows, dtype=index_type)[None, :, None]
    last_outside = np.where(inside, index_type(-1), index)
    np.maximum.accumulate(last_outside, axis=1, out=last_outside)
    next_outside = np.where(inside, index_type(rows), index)[:, ::-1]
    np.minimum.accumulate(next_outside, axis=1, out=next_outside)
    vertical = np.minimum(index - last_outside, next_outside[:, ::-1] - index)
    del last_outside, next_outside
    kept = vertical > radius_mm / dy
    for offset in range(1, min(int(radius_mm // dx), cols - 1) + 1):
        reach = math.sqrt(max(radius_mm**2 - (offset * dx) ** 2, 0.0)) / dy
        kept[:, :, offset:] &= vertical[:, :, :-offset] > reach
        kept[:, :, :-offset] &= vertical[:, :, offset:] > reach
        kept[:, :, :offset] = False
        kept[:, :, -offset:] = False
    return kept


def _octagon_steps(radius_rows: float, radius_cols: float) -> tuple[int, int, int]:
    """Square half-sides (rows, cols) and diamond steps whose sum approximates a disc.

    A square of half-side ``s`` followed by a diamond of ``d`` steps is an
    octagon reaching ``s + d`` along the axes and ``2s + d`` diagonally
    (city-block), so ``s = 0.41 r`` and ``d = 0.59 r`` puts all eight vertices
    within a pixel of the circle of radius ``r``.
    """
    rows = max(0.0, radius_rows)
    cols = max(0.0, radius_cols)
    diamond = int(round(0.59 * min(rows, cols)))
    return int(round(rows - diamond)), int(round(cols - diamond)), diamond


def _in_plane_cross() -> np.ndarray:
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    return cross


def dilate_in_plane(mask: np.ndarray, radius_rows: float, radius_cols: float | None = None) -> np.ndarray:
    """Dilate each slice of ``(slices, rows, cols)`` by an octagon of the given radii (pixels).

    Radii differ when pixels are not square (give each in its axis's pixels).
    """
    return _morph_in_plane(mask, radius_rows, radius_rows if radius_cols is None else radius_cols, grow=True)


def erode_in_plane(mask: np.ndarray, radius_rows: float, radius_cols: float | None = None) -> np.ndarray:
    """Erode each slice by the octagon :func:`dilate_in_plane` uses; outside the array is background."""
    return _morph_in_plane(mask, radius_rows, radius_rows if radius_cols is None else radius_cols, grow=False)


def close_in_plane(mask: np.ndarray, radius_rows: float, radius_cols: float | None = None) -> np.ndarray:
    """Closing (dilate, then erode) in each slice: bridges gaps up to about twice the radius.

    The array is padded by the radius first, so that structures touching the
    image border are not eaten by the erosion.
    """
    cols = radius_rows if radius_cols is None else radius_cols
    pad_r, pad_c = int(math.ceil(radius_rows)) + 1, int(math.ceil(cols)) + 1
    padded = np.pad(np.asarray(mask, dtype=bool), ((0, 0), (pad_r, pad_r), (pad_c, pad_c)))
    closed = erode_in_plane(dilate_in_plane(padded, radius_rows, cols), radius_rows, cols)
    return closed[:, pad_r : closed.shape[1] - pad_r, pad_c : closed.shape[2] - pad_c]


def _morph_in_plane(mask: np.ndarray, radius_rows: float, radius_cols: float, *, grow: bool) -> np.ndarray:
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 3:
        raise ValueError("in-plane morphology takes a (slices, rows, cols) array")
    square_rows, square_cols, diamond = _octagon_steps(radius_rows, radius_cols)
    # Erosion is the dilation of the background; outside the array counts as background.
    work = (mask if grow else ~mask).view(np.uint8)
    if not grow:
        work = np.pad(work, ((0, 0), (1, 1), (1, 1)), constant_values=1)
    for axis, half in ((1, square_rows), (2, square_cols)):
        if half > 0:
            work = ndimage.maximum_filter1d(work, 2 * half + 1, axis=axis, mode="constant", cval=0)
    out = work.view(bool)
    if diamond > 0:
        out = ndimage.binary_dilation(out, _in_plane_cross(), iterations=diamond)
    if not grow:
        out = ~out[:, 1:-1, 1:-1]
    return out
