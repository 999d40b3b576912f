"""Display windows that turn HU into the [0, 1] images the models were trained on.

The training data are PNG renderings of these windows, so the formula here is the
one that made them: clip HU to ``[center - width/2, center + width/2]`` and scale
linearly to [0, 1]. (This is not the DICOM VOI LINEAR function of PS3.3
C.11.2.1.2.1, whose ``center - 0.5`` / ``width - 1`` offsets would shift every
value by a fraction of a grey level relative to the training images.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np


@dataclass(frozen=True)
class Window:
    """A named linear window: HU ``lower`` maps to 0, ``upper`` to 1, clipped outside."""

    name: str
    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError("a window's width must be positive")

    @property
    def lower(self) -> float:
        """The HU value shown black (0)."""
        return self.center - self.width / 2

    @property
    def upper(self) -> float:
        """The HU value shown white (1)."""
        return self.center + self.width / 2

    def apply(self, hu: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
        """The windowed image as float32 in [0, 1]; written into ``out`` when given."""
        if out is None:
            out = np.empty(hu.shape, dtype=np.float32)
        elif out.shape != hu.shape or out.dtype != np.float32:
            raise ValueError("out must be a float32 array of the same shape as hu")
        np.subtract(hu, np.float32(self.lower), out=out, casting="unsafe")
        np.multiply(out, np.float32(1.0 / self.width), out=out)
        np.clip(out, 0.0, 1.0, out=out)
        return out


BRAIN = Window(name="brain", center=40.0, width=80.0)
SUBDURAL = Window(name="subdural", center=80.0, width=200.0)
BONE = Window(name="bone", center=600.0, width=2800.0)

#: The windows a model configuration may name.
STANDARD_WINDOWS: Mapping[str, Window] = MappingProxyType({w.name: w for w in (BRAIN, SUBDURAL, BONE)})


def window_by_name(name: str) -> Window:
    """The standard window called ``name`` (as written in a model's configuration)."""
    try:
        return STANDARD_WINDOWS[name]
    except KeyError:
        raise ValueError(
            f"unknown window {name!r}: the standard windows are {', '.join(STANDARD_WINDOWS)}"
        ) from None


def stack_windows(hu: np.ndarray, windows: Sequence[Window | str]) -> np.ndarray:
    """The chosen windows of ``hu`` as channels, float32 in [0, 1].

    A slice ``(rows, columns)`` gives ``(channels, rows, columns)``; a stack of
    slices ``(slices, rows, columns)`` gives ``(slices, channels, rows, columns)``,
    the layout of a batch of 2D images. Three windows of 1000 slices of 512x512
    are 3 GB, so window a volume a batch of slices at a time.
    """
    if hu.ndim not in (2, 3):
        raise ValueError("hu must be one slice (rows, columns) or a stack (slices, rows, columns)")
    if not windows:
        raise ValueError("stack_windows needs at least one window")
    resolved = [window_by_name(w) if isinstance(w, str) else w for w in windows]
    channel_axis = hu.ndim - 2
    shape = list(hu.shape)
    shape.insert(channel_axis, len(resolved))
    out = np.empty(shape, dtype=np.float32)
    for c, window in enumerate(resolved):
        window.apply(hu, out=out[c] if channel_axis == 0 else out[:, c])
    return out


def to_uint8(image: np.ndarray) -> np.ndarray:
    """A [0, 1] image quantised to 8 bits as a PNG writer stores it (round half to even)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(image: np.ndarray) -> np.ndarray:
    """An 8-bit image (e.g. read from a training PNG) back to float32 in [0, 1]."""
    if image.dtype != np.uint8:
        raise ValueError("from_uint8 takes uint8 images; other depths have other scales")
    return image.astype(np.float32) / np.float32(255.0)
