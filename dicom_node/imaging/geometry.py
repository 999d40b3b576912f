"""Crop to the head, resize to the model's input, and map predictions back.

The models are trained on 8-bit PNG renderings of the brain window (plus other
windows as extra channels) and run on HU DICOM. Both roads go through
:func:`prepare_windowed`: the DICOM road first windows the HU at full
resolution (:func:`prepare_hu`), exactly as the PNG was made, and then both find
the head on the *brain-windowed* image, crop and resize the same way. A DICOM
slice and its PNG rendering therefore give the same model input, up to the PNG's
quantisation (half a grey level).

The crop is a square around the head (square in mm when the pixel spacing is
known, so non-square pixels are not distorted; square in pixels for PNGs),
enlarged by a margin, and may reach past the image, where the fill value (black)
is used. :class:`CropResize` records it, so that a mask predicted at model size
can be put back on the source pixel grid (:meth:`CropResize.to_source`).

Resampling is separable bilinear (or nearest for labels) in numpy, pixel centres
aligned (the ``align_corners=False`` convention). It is not antialiased; what
matters is that training and inference use this same function.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from dicom_node.imaging.morphology import largest_component
from dicom_node.imaging.windows import BRAIN, Window, stack_windows

Order = Literal["linear", "nearest"]

#: Head = brain-windowed value at or above this: HU >= 20 (skin, brain, bone),
#: which leaves out air, fat, foam head-rests and most of the table.
DEFAULT_HEAD_THRESHOLD = 0.25
#: The largest connected component is found on a thumbnail at most this wide.
_THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class CropResize:
    """An axis-aligned crop of a source image resized to a model's input shape.

    ``box`` is ``(row0, col0, height, width)`` in source pixel units: the crop
    spans source coordinates ``row0 - 0.5 .. row0 + height - 0.5`` (pixel edges),
    and may extend past the image. Output pixel ``u`` samples source row
    ``row0 + (u + 0.5) * height / out_rows - 0.5`` (and likewise for columns).
    """

    source_shape: tuple[int, int]
    box: tuple[float, float, float, float]
    output_shape: tuple[int, int]
    head_found: bool = True

    def __post_init__(self) -> None:
        if min(self.output_shape) < 1 or min(self.source_shape) < 1:
            raise ValueError("source and output shapes must be positive")
        if self.box[2] <= 0 or self.box[3] <= 0:
            raise ValueError("a crop box needs a positive height and width")

    @property
    def scale(self) -> tuple[float, float]:
        """Source pixels per output pixel, (rows, columns)."""
        return self.box[2] / self.output_shape[0], self.box[3] / self.output_shape[1]

    def model_to_source(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Source pixel coordinates of model pixel coordinates (floats, pixel centres)."""
        sy, sx = self.scale
        return (
            self.box[0] + (np.asarray(rows, dtype=float) + 0.5) * sy - 0.5,
            self.box[1] + (np.asarray(cols, dtype=float) + 0.5) * sx - 0.5,
        )

    def source_to_model(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Model pixel coordinates of source pixel coordinates; inverse of :meth:`model_to_source`."""
        sy, sx = self.scale
        return (
            (np.asarray(rows, dtype=float) - self.box[0] + 0.5) / sy - 0.5,
            (np.asarray(cols, dtype=float) - self.box[1] + 0.5) / sx - 0.5,
        )

    def to_model(self, image: np.ndarray, *, order: Order = "linear", fill: float = 0.0) -> np.ndarray:
        """Crop and resize ``image`` ``(..., rows, cols)`` to ``(..., *output_shape)``."""
        if tuple(image.shape[-2:]) != self.source_shape:
            raise ValueError(f"image has shape {image.shape[-2:]}, this crop is for {self.source_shape}")
        rows, cols = self.model_to_source(np.arange(self.output_shape[0]), np.arange(self.output_shape[1]))
        return _sample(image, rows, cols, order=order, fill=fill)

    def to_source(self, array: np.ndarray, *, order: Order = "nearest", fill: float = 0.0) -> np.ndarray:
        """Put a model-size ``array`` ``(..., *output_shape)`` back on the source pixel grid.

        Use ``nearest`` for label maps (labels are not blended) and ``linear`` for
        probability maps (threshold after mapping back, not before). Source pixels
        outside the crop get ``fill``.
        """
        if tuple(array.shape[-2:]) != self.output_shape:
            raise ValueError(f"array has shape {array.shape[-2:]}, this crop outputs {self.output_shape}")
        rows, cols = self.source_to_model(np.arange(self.source_shape[0]), np.arange(self.source_shape[1]))
        return _sample(array, rows, cols, order=order, fill=fill)


def _sample(image: np.ndarray, rows: np.ndarray, cols: np.ndarray, *, order: Order, fill: float) -> np.ndarray:
    """Sample ``image`` at the grid ``rows x cols`` (pixel coordinates), ``fill`` outside."""
    height, width = image.shape[-2:]
    # One pixel of fill around the image: a sample half a pixel outside blends
    # with the fill instead of repeating the edge.
    padded = np.pad(
        image,
        [(0, 0)] * (image.ndim - 2) + [(1, 1), (1, 1)],
        mode="constant",
        constant_values=fill,
    )
    if order == "nearest":
        r = np.clip(np.floor(rows + 0.5).astype(int) + 1, 0, height + 1)
        c = np.clip(np.floor(cols + 0.5).astype(int) + 1, 0, width + 1)
        return padded[..., r[:, None], c[None, :]]
    if order != "linear":
        raise ValueError("order is 'linear' or 'nearest'")
    r0 = np.floor(rows)
    c0 = np.floor(cols)
    wr = (rows - r0).astype(np.float32)[:, None]
    wc = (cols - c0).astype(np.float32)[None, :]
    r0 = r0.astype(int) + 1
    c0 = c0.astype(int) + 1
    r_lo, r_hi = np.clip(r0, 0, height + 1), np.clip(r0 + 1, 0, height + 1)
    c_lo, c_hi = np.clip(c0, 0, width + 1), np.clip(c0 + 1, 0, width + 1)
    top = padded[..., r_lo[:, None], c_lo[None, :]] * (1 - wc) + padded[..., r_lo[:, None], c_hi[None, :]] * wc
    bottom = padded[..., r_hi[:, None], c_lo[None, :]] * (1 - wc) + padded[..., r_hi[:, None], c_hi[None, :]] * wc
    out = top * (1 - wr) + bottom * wr
    return out.astype(np.result_type(image.dtype, np.float32), copy=False)


def find_head(brain: np.ndarray, *, threshold: float = DEFAULT_HEAD_THRESHOLD) -> tuple[int, int, int, int] | None:
    """Bounding box ``(row0, col0, row_end, col_end)`` (end exclusive) of the head.

    ``brain`` is a brain-windowed image in [0, 1], one slice ``(rows, cols)`` or a
    stack ``(slices, rows, cols)`` (one box for the whole stack, from the maximum
    projection, so that neighbouring slices share a crop). The head is the
    largest connected region at or above ``threshold``, which drops the table,
    cables and other small objects. None when nothing reaches the threshold.
    """
    if brain.ndim == 3:
        mask = (brain >= threshold).any(axis=0)
    elif brain.ndim == 2:
        mask = brain >= threshold
    else:
        raise ValueError("brain must be a slice (rows, cols) or a stack (slices, rows, cols)")
    if not mask.any():
        return None
    height, width = mask.shape
    factor = max(1, math.ceil(max(height, width) / _THUMBNAIL_SIZE))
    padded = np.zeros((math.ceil(height / factor) * factor, math.ceil(width / factor) * factor), dtype=bool)
    padded[:height, :width] = mask
    thumbnail = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).any(axis=(1, 3))
    largest = largest_component(thumbnail)
    thumb_rows = np.flatnonzero(largest.any(axis=1))
    thumb_cols = np.flatnonzero(largest.any(axis=0))
    # Back to full resolution: the exact extent of the mask inside the
    # component's (block-aligned) bounding box.
    r0, r1 = thumb_rows[0] * factor, min((thumb_rows[-1] + 1) * factor, height)
    c0, c1 = thumb_cols[0] * factor, min((thumb_cols[-1] + 1) * factor, width)
    window = mask[r0:r1, c0:c1]
    rows = np.flatnonzero(window.any(axis=1))
    cols = np.flatnonzero(window.any(axis=0))
    return int(r0 + rows[0]), int(c0 + cols[0]), int(r0 + rows[-1] + 1), int(c0 + cols[-1] + 1)


def plan_crop(
    brain: np.ndarray,
    *,
    output_shape: tuple[int, int],
    pixel_spacing: Sequence[float] | None = None,
    margin_fraction: float = 0.05,
    threshold: float = DEFAULT_HEAD_THRESHOLD,
) -> CropResize:
    """The square crop around the head of a brain-windowed slice or stack.

    ``pixel_spacing`` is DICOM's (row spacing, column spacing) in mm; with it the
    crop is square in mm, without it (PNG) square in pixels. The head's box is
    enlarged on every side by ``margin_fraction`` of its longer side. When no
    head is found the whole image, made square, is used without margin
    (``head_found`` is False).
    """
    if margin_fraction < 0:
        raise ValueError("margin_fraction must not be negative")
    source_shape = (int(brain.shape[-2]), int(brain.shape[-1]))
    dy, dx = (1.0, 1.0) if pixel_spacing is None else (float(pixel_spacing[0]), float(pixel_spacing[1]))
    if dy <= 0 or dx <= 0:
        raise ValueError("pixel spacing must be positive")
    box = find_head(brain, threshold=threshold)
    head_found = box is not None
    if box is None:
        box = (0, 0, source_shape[0], source_shape[1])
    r0, c0, r1, c1 = box
    # Edges, not centres: the box spans r0 - 0.5 .. r1 - 0.5 in pixel coordinates.
    centre_row = (r0 + r1) / 2 - 0.5
    centre_col = (c0 + c1) / 2 - 0.5
    margin = margin_fraction if head_found else 0.0
    side_mm = max((r1 - r0) * dy, (c1 - c0) * dx) * (1 + 2 * margin)
    height, width = side_mm / dy, side_mm / dx
    return CropResize(
        source_shape=source_shape,
        box=(centre_row - height / 2 + 0.5, centre_col - width / 2 + 0.5, height, width),
        output_shape=(int(output_shape[0]), int(output_shape[1])),
        head_found=head_found,
    )


@dataclass(frozen=True)
class ModelInput:
    """A model-size image ``(channels, rows, cols)`` and the crop that made it."""

    image: np.ndarray
    transform: CropResize


def prepare_windowed(
    image: np.ndarray,
    *,
    output_shape: tuple[int, int],
    brain_channel: int = 0,
    pixel_spacing: Sequence[float] | None = None,
    margin_fraction: float = 0.05,
) -> ModelInput:
    """Crop and resize an already-windowed [0, 1] image, e.g. a training PNG.

    ``image`` is ``(rows, cols)`` (the brain window alone) or ``(channels, rows,
    cols)`` with the brain window at ``brain_channel``; the head is found on that
    channel. Outside the image the fill is 0, the windowed value of air.
    """
    if image.ndim == 2:
        image = image[None]
    if image.ndim != 3:
        raise ValueError("image must be (rows, cols) or (channels, rows, cols)")
    if not 0 <= brain_channel < image.shape[0]:
        raise ValueError("brain_channel must index one of the image's channels")
    transform = plan_crop(
        image[brain_channel],
        output_shape=output_shape,
        pixel_spacing=pixel_spacing,
        margin_fraction=margin_fraction,
    )
    resized = transform.to_model(image.astype(np.float32, copy=False), order="linear", fill=0.0)
    return ModelInput(image=resized, transform=transform)


def prepare_hu(
    hu: np.ndarray,
    *,
    windows: Sequence[Window | str],
    output_shape: tuple[int, int],
    pixel_spacing: Sequence[float] | None = None,
    margin_fraction: float = 0.05,
) -> ModelInput:
    """Window one HU slice into channels, then crop and resize as :func:`prepare_windowed`.

    The head is found on the brain window whether or not it is one of the
    model's channels, so the crop matches the one a PNG of the brain window gets.
    """
    if hu.ndim != 2:
        raise ValueError("prepare_hu takes one slice (rows, cols)")
    names = [w if isinstance(w, str) else w.name for w in windows]
    channels = stack_windows(hu, windows)
    if BRAIN.name in names:
        brain_channel = names.index(BRAIN.name)
    else:
        channels = np.concatenate([channels, BRAIN.apply(hu)[None]])
        brain_channel = len(names)
    prepared = prepare_windowed(
        channels,
        output_shape=output_shape,
        brain_channel=brain_channel,
        pixel_spacing=pixel_spacing,
        margin_fraction=margin_fraction,
    )
    if brain_channel == len(names):
        return ModelInput(image=prepared.image[:-1], transform=prepared.transform)
    return prepared
