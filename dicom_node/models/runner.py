"""Run a loaded model over a whole study, a batch of slices at a time.

Memory is bounded by the batch, not the study: each batch's slices are
windowed, cropped and resized (the shared preprocessing, see
:mod:`dicom_node.models.inputs`), run, and their outputs mapped back to the
source grid before the next batch is prepared. A 1000-slice study therefore
never holds more than ``batch_size`` model inputs; what grows with the study is
the source-grid output (one byte per voxel) that the result needs anyway.

Device: CUDA when available unless told otherwise (``device="cpu"``). Mixed
precision (bfloat16 where the GPU supports it, else float16) is used on GPUs
only: CPU autocast is slower than float32 on most CPUs and changes results.
Everything runs under ``torch.inference_mode()``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch

from dicom_node.models.inputs import ModelSlice, network_hu, slice_from_hu_stack, slice_from_windowed_stack
from dicom_node.models.registry import LoadedModel
from dicom_node.models.result import ModelResult, VolumeLike

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 16


def select_device(preference: str | None = None) -> torch.device:
    """``None``/"auto": CUDA if available, else CPU. "cpu", "cuda" or "cuda:N" are taken as asked.

    Asking for CUDA on a machine without it is an error rather than a silent
    fall-back, so that a misconfigured GPU node is noticed.
    """
    if preference in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {preference!r} was asked for, but CUDA is not available here")
    if device.type not in ("cpu", "cuda"):
        raise ValueError("device must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def measured_slices(volume: VolumeLike) -> tuple[bool, ...] | None:
    """Which slices are real images, for a 2.5D model's neighbours; None when all are (or none can tell).

    A DICOM volume fills a missing instance by interpolation and marks it with no
    source SOP Instance UID; such a slice is not a neighbour a 2.5D model
    should read. Volumes without DICOM provenance (every UID None) say nothing.
    """
    uids = getattr(volume, "source_sop_instance_uids", None)
    if not uids or all(uid is None for uid in uids):
        return None
    return tuple(uid is not None for uid in uids)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision type for ``device``: bf16 or fp16 on CUDA, None (float32) on the CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class Runner:
    """A loaded model bound to a device and the shared preprocessing.

    ``predict(volume)`` takes an HU volume (``CTVolume``) and returns a
    :class:`ModelResult` on its source grid. ``predict_windowed`` does the same
    for brain-windowed [0, 1] images (8-bit PNG renderings), with ``volume``
    giving the grid, spacing and HU used for measurements.

    The result is the network's findings as they are: the card's study decision is
    never applied here. It was fitted on gated findings (``calibrate --gate``), so
    it belongs after the intracranial gate, and :class:`~dicom_node.models.combine.DecidedModel`
    (worker) or ``evaluate``'s wrapper puts it there; one place for it, not a flag per caller.
    """

    def __init__(
        self,
        model: LoadedModel,
        *,
        device: str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        amp: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model = model
        self.device = select_device(device)
        self.batch_size = batch_size
        self.amp_dtype = autocast_dtype(self.device) if amp else None
        self.network = model.network.to(self.device).eval()
        self.name = model.card.name
        self.version = model.card.version
        #: Largest number of model inputs held at once during the last run (for tests and benchmarks).
        self.peak_batch = 0

    def predict(self, volume: VolumeLike) -> ModelResult:
        """Run on every slice of an HU volume (thin slices averaged as the card says; measured on the volume)."""
        spec = self.model.card.input
        pixel_spacing = (float(volume.spacing_mm[1]), float(volume.spacing_mm[2]))
        measured = measured_slices(volume)
        spacing_z = float(volume.spacing_mm[0])
        hu = network_hu(volume.hu, spec=spec, spacing_z=spacing_z, measured=measured)

        def prepare(index: int) -> ModelSlice:
            return slice_from_hu_stack(
                hu, index, spec=spec, pixel_spacing=pixel_spacing, spacing_z=spacing_z, measured=measured
            )

        return self._run(volume, prepare)

    def predict_windowed(self, brain: np.ndarray, volume: VolumeLike) -> ModelResult:
        """Run on brain-windowed slices ``(slices, rows, cols)`` in [0, 1], measured on ``volume``."""
        if brain.shape != volume.hu.shape:
            raise ValueError("the windowed slices and the measurement volume must have one shape")
        spec = self.model.card.input
        measured = measured_slices(volume)

        def prepare(index: int) -> ModelSlice:
            return slice_from_windowed_stack(
                brain, index, spec=spec, spacing_z=float(volume.spacing_mm[0]), measured=measured
            )

        return self._run(volume, prepare)

    def _batches(self, count: int, prepare: Callable[[int], ModelSlice]) -> Iterator[tuple[range, list[ModelSlice]]]:
        for first in range(0, count, self.batch_size):
            indices = range(first, min(first + self.batch_size, count))
            yield indices, [prepare(k) for k in indices]

    def _run(self, volume: VolumeLike, prepare: Callable[[int], ModelSlice]) -> ModelResult:
        started = time.perf_counter()
        decoder = self.model.decoder(volume)
        count = volume.hu.shape[0]
        self.peak_batch = 0
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else nullcontext()
        )
        with torch.inference_mode():
            for indices, slices in self._batches(count, prepare):
                self.peak_batch = max(self.peak_batch, len(slices))
                batch = torch.from_numpy(np.stack([s.image for s in slices])).to(self.device)
                with autocast:
                    outputs = decoder.infer(self.network, batch)
                del batch
                for index, output, prepared in zip(indices, outputs, slices, strict=True):
                    decoder.add(index, output, prepared.transform)
        result = decoder.result()
        elapsed = time.perf_counter() - started
        logger.info(
            "%s model ran on %d slices in %.2f s (%.1f slices/s) on %s",
            self.model.kind.value,
            count,
            elapsed,
            count / elapsed if elapsed > 0 else float("inf"),
            self.device,
            extra={"stage": "inference", "count": count, "duration_s": round(elapsed, 3)},
        )
        return result
