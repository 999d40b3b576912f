"""What a network sees: the input spec of a model card and the one road to it.

Every model kind, in training and in inference, gets its input from the imaging
layer's shared preprocessing (window(s), then a square crop around the head
resized to the model's size: :func:`dicom_node.imaging.geometry.prepare_hu` for
HU, :func:`~dicom_node.imaging.geometry.prepare_windowed` for 8-bit renderings
of the brain window). The imaging layer sits below the models, so they call it
directly.

After the crop, one model-side step is applied on both roads:
:func:`mask_outside_head` blanks everything that is not the head (figure letters
and arrows of published images, the table, the head-rest). Those differ between
data sources and must not inform the call; the training PNGs carry many of them.

2.5D context (``InputSpec.context_slices`` = k > 0): the network also sees the
k slices below and the k above the one it segments, so that it can tell a clot
from the petrous bone, a sinus or the tentorium by what lies around it. The
neighbours are taken ``context_spacing_mm`` apart along the slice normal
(:func:`context_indices`; thin slices are not all nearly the centre), cropped
with the *centre* slice's crop (so that they line up pixel for pixel) and
masked with its head. A neighbour that does not exist (the first and last
slices, an isolated PNG, a slice filled in for a missing instance, slices
further apart than 1.5 x ``context_spacing_mm``) is replaced by the centre
slice itself: the network then sees "no information" rather than an invented
neighbour. With k = 0 every function here gives exactly the 2D input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.imaging.geometry import CropResize, prepare_hu, prepare_windowed
from dicom_node.imaging.morphology import fill_holes_2d, label_components
from dicom_node.imaging.slabs import HUStack, thick_slabs
from dicom_node.imaging.windows import stack_windows

#: Window names a card may list; the imaging layer checks them again when windowing.
KNOWN_WINDOWS = ("brain", "subdural", "bone")
#: Brain-windowed value of HU 20 (window 40/80): skin, brain and bone are above, air and fat below.
HEAD_LEVEL = 0.25
#: Distance between context slices when a card does not say: the 5 mm of the whole-stack
#: training data (PHE-SICH: 24-33 slices over about 150 mm), and of most routine head CT.
DEFAULT_CONTEXT_SPACING_MM = 5.0
#: Thickness thin HU slices are averaged to for a network trained from now on: that of its
#: training data (see DEFAULT_CONTEXT_SPACING_MM). Cards written before have no slab.
DEFAULT_SLAB_MM = 5.0
#: A neighbour further than this many times ``context_spacing_mm`` from its place is missing.
CONTEXT_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class InputSpec:
    """The input section of a model card.

    ``windows`` are the channels in order (names of the imaging layer's standard
    windows); the head is always found on the brain window. ``crop`` names the
    rule: ``per-slice`` = each slice is cropped to a square around its own head
    (square in mm for DICOM), enlarged by ``margin_fraction`` on every side, as
    every training image was.

    ``context_slices`` (k): 0 for a 2D model; k > 0 gives the network 2k + 1
    slices, ``context_spacing_mm`` apart, each with all ``windows``, in position
    order along the slice normal (lowest first; the centre slice in the middle).

    ``slab_mm``: HU slices thinner than this are averaged into slabs this thick
    before windowing (:mod:`dicom_node.imaging.slabs`), the thickness the network
    learned on; 0 (cards written before it existed): slices as they are.
    """

    size: tuple[int, int] = (256, 256)
    windows: tuple[str, ...] = ("brain",)
    margin_fraction: float = 0.05
    crop: str = "per-slice"
    mask_outside_head: bool = True
    context_slices: int = 0
    context_spacing_mm: float = DEFAULT_CONTEXT_SPACING_MM
    slab_mm: float = 0.0

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 32:
            raise ValueError("input size is (rows, columns), each at least 32 pixels")
        if any(s % 32 for s in self.size):
            raise ValueError("input size must be a multiple of 32 (five 2x downsamplings)")
        if not self.windows:
            raise ValueError("a model needs at least one window as input channel")
        unknown = [w for w in self.windows if w not in KNOWN_WINDOWS]
        if unknown:
            raise ValueError(f"unknown window(s) {unknown}: the standard windows are {KNOWN_WINDOWS}")
        if len(set(self.windows)) != len(self.windows):
            raise ValueError("a window may appear only once among the input channels")
        if self.margin_fraction < 0:
            raise ValueError("margin_fraction must not be negative")
        if self.crop != "per-slice":
            raise ValueError("the only crop rule implemented is 'per-slice'")
        if not 0 <= self.context_slices <= 4:
            raise ValueError("context_slices is 0 (2D) to 4 slices on each side")
        if not self.context_spacing_mm > 0:
            raise ValueError("context_spacing_mm must be positive")
        if not self.slab_mm >= 0:
            raise ValueError("slab_mm is 0 (slices as they are) or the thickness thin HU slices are averaged to")

    @property
    def slices(self) -> int:
        """Number of slices the network sees: the centre and ``context_slices`` on each side."""
        return 2 * self.context_slices + 1

    @property
    def channels(self) -> int:
        """Number of input channels: one per window, for each slice seen."""
        return len(self.windows) * self.slices

    @property
    def centre_brain_channel(self) -> int:
        """The input channel of the centre slice's brain window (where the head is found)."""
        return self.context_slices * len(self.windows) + _brain_channel(self)

    @property
    def brain_only(self) -> bool:
        """True when the model reads nothing but the brain window (what 8-bit PNGs hold)."""
        return self.windows == ("brain",)

    def to_json(self) -> dict[str, Any]:
        """The card's ``input`` section (2D cards carry no context keys, as before 2.5D existed)."""
        section: dict[str, Any] = {
            "size": list(self.size),
            "windows": list(self.windows),
            "channel_order": "one channel per window, in this order, each windowed linearly to [0, 1]",
            "crop": self.crop,
            "margin_fraction": self.margin_fraction,
            "mask_outside_head": self.mask_outside_head,
            "resampling": "bilinear, pixel centres aligned (imaging.geometry)",
        }
        if self.context_slices:
            section["channel_order"] = (
                f"{self.slices} slices {self.context_spacing_mm:g} mm apart in position order along the "
                "slice normal (lowest first, the segmented slice in the middle), each with one channel per "
                "window in this order, windowed linearly to [0, 1]; all cropped with the centre slice's crop "
                "and head; a missing neighbour (stack edge, isolated image, filled-in slice, gap over "
                f"{CONTEXT_GAP_FACTOR:g} x the spacing) repeats the centre slice"
            )
            section["context_slices"] = self.context_slices
            section["context_spacing_mm"] = self.context_spacing_mm
        if self.slab_mm:
            section["slab_mm"] = self.slab_mm
        return section

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        """Parse the card's ``input`` section; missing required keys are errors."""
        for key in ("size", "windows"):
            if key not in data:
                raise ValueError(f"a model card's input section needs {key!r}")
        return cls(
            size=(int(data["size"][0]), int(data["size"][1])),
            windows=tuple(str(w) for w in data["windows"]),
            margin_fraction=float(data.get("margin_fraction", 0.05)),
            crop=str(data.get("crop", "per-slice")),
            mask_outside_head=bool(data.get("mask_outside_head", True)),
            context_slices=int(data.get("context_slices", 0)),
            context_spacing_mm=float(data.get("context_spacing_mm", DEFAULT_CONTEXT_SPACING_MM)),
            slab_mm=float(data.get("slab_mm", 0.0)),
        )


def _dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation by a 3x3 square, ``iterations`` times (numpy; no scipy here)."""
    out = mask.copy()
    for _ in range(iterations):
        padded = np.pad(out, 1)
        out = (
            padded[1:-1, 1:-1]
            | padded[:-2, 1:-1]
            | padded[2:, 1:-1]
            | padded[1:-1, :-2]
            | padded[1:-1, 2:]
            | padded[:-2, :-2]
            | padded[:-2, 2:]
            | padded[2:, :-2]
            | padded[2:, 2:]
        )
    return out


def head_mask(brain: np.ndarray, *, level: float = HEAD_LEVEL, dilation: int = 2) -> np.ndarray:
    """The head on a model-size brain-windowed image: largest region >= ``level``, filled, dilated.

    Ventricles and sulci (CSF, below the level) are holes and are filled; the
    dilation keeps the skull's outer edge. Returns all True when nothing
    reaches the level (a blank image stays blank either way).
    """
    if brain.ndim != 2:
        raise ValueError("head_mask takes one model-size brain image (rows, cols)")
    above = brain >= level
    if not above.any():
        return np.ones(brain.shape, dtype=bool)
    labels, n = label_components(above)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    largest = labels == int(np.argmax(sizes[1:])) + 1
    return _dilate(fill_holes_2d(largest), dilation)


def mask_outside_head(image: np.ndarray, *, brain_channel: int) -> np.ndarray:
    """``image`` ``(channels, rows, cols)`` with every channel zeroed outside the head (in place)."""
    outside = ~head_mask(image[brain_channel])
    image[:, outside] = 0.0
    return image


@dataclass(frozen=True)
class ModelSlice:
    """One slice ready for a network: ``image`` float32 ``(channels, rows, cols)`` and its crop."""

    image: np.ndarray
    transform: CropResize


def network_hu(
    hu: np.ndarray, *, spec: InputSpec, spacing_z: float | None, measured: Sequence[bool] | None = None
) -> HUStack:
    """The HU stack the network's inputs are cut from: ``hu``, thin slices averaged to ``spec.slab_mm``."""
    return thick_slabs(hu, spacing_z=spacing_z, slab_mm=spec.slab_mm, measured=measured)


def slice_from_hu(
    hu: np.ndarray, *, spec: InputSpec, pixel_spacing: Sequence[float] | None
) -> ModelSlice:
    """The model input of one HU slice (DICOM, NIfTI), on its own (a 2.5D model sees it repeated)."""
    return slice_from_hu_stack(hu[None], 0, spec=spec, pixel_spacing=pixel_spacing, spacing_z=None)


def slice_from_hu_stack(
    hu: HUStack,
    index: int,
    *,
    spec: InputSpec,
    pixel_spacing: Sequence[float] | None,
    spacing_z: float | None,
    measured: Sequence[bool] | None = None,
) -> ModelSlice:
    """The model input of slice ``index`` of an HU stack ``(slices, rows, cols)`` (or slabs read over
    one, :func:`network_hu`): the road used at inference.

    ``spacing_z`` is the distance between slices in mm (None: unknown, no
    neighbour is used); ``measured`` marks the slices that are real images
    (None: all). See :func:`context_indices`.
    """
    prepared = prepare_hu(
        hu[index],
        windows=list(spec.windows),
        output_shape=spec.size,
        pixel_spacing=pixel_spacing,
        margin_fraction=spec.margin_fraction,
    )
    centre = np.array(prepared.image, dtype=np.float32)
    return _with_context(
        centre,
        prepared.transform,
        lambda j: stack_windows(hu[j], list(spec.windows)),
        index,
        spec=spec,
        indices=context_indices(hu.shape[0], index, spec=spec, spacing_z=spacing_z, measured=measured),
    )


def slice_from_windowed(
    brain: np.ndarray, *, spec: InputSpec, pixel_spacing: Sequence[float] | None = None
) -> ModelSlice:
    """The model input of a brain-windowed [0, 1] image (an 8-bit PNG divided by 255).

    Only brain-only models can be fed this way: the other windows cannot be
    recovered from a brain window, which clips everything outside 0-80 HU
    (:func:`slice_from_windowed_stack` refuses them).
    """
    if brain.ndim != 2:
        raise ValueError("a windowed slice is one grey image (rows, cols)")
    return slice_from_windowed_stack(brain[None], 0, spec=spec, pixel_spacing=pixel_spacing, spacing_z=None)


def slice_from_windowed_stack(
    brain: np.ndarray,
    index: int,
    *,
    spec: InputSpec,
    pixel_spacing: Sequence[float] | None = None,
    spacing_z: float | None,
    measured: Sequence[bool] | None = None,
) -> ModelSlice:
    """The model input of slice ``index`` of brain-windowed slices ``(slices, rows, cols)`` in [0, 1]."""
    if not spec.brain_only:
        raise ValueError(
            f"this model reads windows {spec.windows}; a brain-windowed image holds only the brain "
            "window, so it needs HU input"
        )
    if brain.ndim != 3:
        raise ValueError("windowed slices are a stack of grey images (slices, rows, cols)")
    prepared = prepare_windowed(
        brain[index],
        output_shape=spec.size,
        brain_channel=0,
        pixel_spacing=pixel_spacing,
        margin_fraction=spec.margin_fraction,
    )
    centre = np.array(prepared.image, dtype=np.float32)
    return _with_context(
        centre,
        prepared.transform,
        lambda j: brain[j][None].astype(np.float32, copy=False),
        index,
        spec=spec,
        indices=context_indices(brain.shape[0], index, spec=spec, spacing_z=spacing_z, measured=measured),
    )


def context_indices(
    count: int,
    index: int,
    *,
    spec: InputSpec,
    spacing_z: float | None,
    measured: Sequence[bool] | None = None,
) -> tuple[int, ...]:
    """The slice indices the network sees for slice ``index`` of ``count``, lowest first.

    Neighbour ``o`` (o = -k..k) is the slice ``o * step`` away, ``step`` the
    whole number of slices nearest to ``context_spacing_mm`` (at least one).
    It is replaced by ``index`` itself when it lies outside the stack, is not a
    measured slice, or lies further than :data:`CONTEXT_GAP_FACTOR` times its
    nominal distance away (slices thicker than the context spacing allows), or
    when ``spacing_z`` is unknown.
    """
    if not 0 <= index < count:
        raise ValueError(f"slice {index} is not in a stack of {count}")
    if measured is not None and len(measured) != count:
        raise ValueError("measured needs one entry per slice")
    k = spec.context_slices
    if k == 0:
        return (index,)
    if spacing_z is None or not spacing_z > 0:
        return (index,) * spec.slices
    step = max(1, int(round(spec.context_spacing_mm / spacing_z)))
    if step * spacing_z > CONTEXT_GAP_FACTOR * spec.context_spacing_mm:  # slices too thick: every neighbour too far
        return (index,) * spec.slices
    indices = []
    for offset in range(-k, k + 1):
        j = index + offset * step
        missing = not 0 <= j < count or (measured is not None and not measured[j])
        indices.append(index if missing else j)
    return tuple(indices)


def _with_context(
    centre: np.ndarray,
    transform: CropResize,
    channels_of: Callable[[int], np.ndarray],
    index: int,
    *,
    spec: InputSpec,
    indices: Sequence[int],
) -> ModelSlice:
    """The centre slice's model image with its neighbours (through the centre's crop), head-masked."""
    if spec.context_slices == 0:
        image = centre
    else:
        parts = [
            centre if j == index else transform.to_model(channels_of(j), order="linear", fill=0.0).astype(np.float32)
            for j in indices
        ]
        image = np.concatenate(parts)
    if spec.mask_outside_head:
        mask_outside_head(image, brain_channel=spec.centre_brain_channel)
    return ModelSlice(image=image, transform=transform)


def _brain_channel(spec: InputSpec) -> int:
    # The head mask needs the brain window; a model without it still gets masked on
    # its first channel's head, which every standard window shows above air.
    return spec.windows.index("brain") if "brain" in spec.windows else 0


def read_png_brain(path: str | Path) -> np.ndarray:
    """An 8-bit brain-window rendering as float32 [0, 1] (rows, cols).

    Grey, RGB and RGBA files are accepted: colour is reduced to ITU-R 601 luma
    (PIL's "L"; grey pixels keep their value exactly) and transparency is
    composited onto black (air). 16-bit PNGs are refused: they are not the
    8-bit renderings these models are trained on.
    """
    from PIL import Image

    with Image.open(path) as img:
        if img.mode in ("I", "I;16", "I;16B", "F"):
            raise ValueError(f"{path}: a {img.mode} PNG is not an 8-bit rendering of the brain window")
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            img = Image.alpha_composite(black, rgba)
        grey = np.asarray(img.convert("L"), dtype=np.uint8)
    return grey.astype(np.float32) / np.float32(255.0)
