"""Thin slices averaged into thick slabs, so that a network sees the slice thickness it learned on.

Why: the networks learned on 5 mm slices (the whole-stack and Kaggle training data, and
most routine head CT). Many scanners send thin reconstructions (0.5-1.25 mm) as well or
instead, whose pixel noise is two to three times higher, because each slice gathers
fewer photons. Measured on the phantom with thin-slice noise (white, 20-30 HU SD in the
body): the shipped default missed a 0.9 mL bleed at 1 mm and 0.625 mm, and found it
(0.82-0.88 mL) on the same slices averaged to 5 mm, with no false finding either way.
A radiologist reads thin series the same way, as thick slabs or MPRs.

The average is the mean of the HU of the ``n`` slices centred on each slice, ``n`` the
largest odd number whose ``n`` x spacing stays within :data:`SLAB_TOLERANCE` times the
wanted thickness (1 mm: 5 slices; 0.625 mm: 9; 2 mm: 3; above 6.25 / 3 = 2.08 mm: none). Near the first
and last slice the window is cut short rather than shifted. Slices a volume filled in for
a missing instance (``measured`` False) are left out of every mean. Only what the network
sees is averaged: findings, their HU and the intracranial gate keep the volume's own
slices. Written here: highdicom and pydicom read volumes but do not average them, and scipy's
``uniform_filter1d`` would average the filled-in slices too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

#: A slab may be this much thicker than asked (odd slice counts rarely fit exactly).
SLAB_TOLERANCE = 1.25


def slab_slices(spacing_z: float | None, slab_mm: float) -> int:
    """How many slices one slab averages: an odd number, 1 when there is nothing to average."""
    if not slab_mm > 0 or spacing_z is None or not spacing_z > 0:
        return 1
    # The spacing is fitted to the slice positions: 1.25 mm can come out as 1.2500000000000013.
    n = int(SLAB_TOLERANCE * slab_mm / spacing_z + 1e-6)
    return max(1, n if n % 2 else n - 1)


class SlabStack:
    """A stack of slices read like ``hu`` (``stack[k]``, ``shape``), slice ``k`` being its slab's mean.

    Each slab is computed when asked for, so no second copy of the volume is held (a 1000-slice
    study is 500 MB of int16): a network's inputs ask for a few slices at a time. The slabs
    read last are kept, three more than three times a slab's slices: a 2.5D input reads each
    slab as its own slice and as the context of the slices about one slab thickness above and
    below (:func:`dicom_node.models.inputs.context_indices`, 5 mm on every shipped card), in
    order, and would otherwise average it three times. For 0.625 mm slices that is 30 slabs,
    15 MB at 512² in int16 (twice that in float32). A context further apart than one slab, or
    more than one neighbour each side, makes slabs be averaged again: results are the same.
    One stack serves one reader (one ``predict``): it is not locked, and ``hu`` must not change
    under it.
    """

    def __init__(self, hu: np.ndarray, slices: int, measured: Sequence[bool] | None = None) -> None:
        count = hu.shape[0]
        self.real = np.ones(count, dtype=bool) if measured is None else np.asarray(measured, dtype=bool)
        if self.real.shape != (count,):
            raise ValueError("measured needs one entry per slice")
        self.hu = hu
        self.half = slices // 2
        self.shape = hu.shape
        self._recent: OrderedDict[int, np.ndarray] = OrderedDict()
        self._keep = 3 * slices + 3

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, k: int) -> np.ndarray:
        count = self.shape[0]
        if not 0 <= k < count:  # a slice index only: no negative ones, no ranges
            raise IndexError(f"slice {k} is not in a stack of {count}")
        if k in self._recent:
            self._recent.move_to_end(k)
            return self._recent[k]
        slab = self._slab(k)
        slab.flags.writeable = False  # handed out more than once: nobody may change it in place
        self._recent[k] = slab
        if len(self._recent) > self._keep:
            self._recent.popitem(last=False)
        return slab

    def _slab(self, k: int) -> np.ndarray:
        hu, count = self.hu, self.shape[0]
        window = [j for j in range(max(0, k - self.half), min(count, k + self.half + 1)) if self.real[j]]
        if not self.real[k] or not window:  # a filled-in slice stays what the volume made of it
            return hu[k]
        mean = np.add.reduce(hu[window], axis=0, dtype=np.float32) / len(window)
        return np.rint(mean).astype(hu.dtype) if np.issubdtype(hu.dtype, np.integer) else mean.astype(hu.dtype)


def thick_slabs(
    hu: np.ndarray,
    *,
    spacing_z: float | None,
    slab_mm: float,
    measured: Sequence[bool] | None = None,
) -> HUStack:
    """``hu`` ``(slices, rows, cols)`` read as slabs: ``hu`` itself (no copy) when the slices are
    thick enough, else a :class:`SlabStack` over it."""
    n = slab_slices(spacing_z, slab_mm)
    if n == 1 or hu.ndim != 3:
        return hu
    return SlabStack(hu, n, measured)


#: What a network's inputs are cut from: a volume's HU array, or slabs read over it.
HUStack = np.ndarray | SlabStack
