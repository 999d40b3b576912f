"""Reader of PHE-SICH-CT-IDS: whole head-CT stacks (8-bit PNG), edema rings and boxes.

Layout (``phe-sich-ct-ids/``): ``images/PPPP_SS.png`` (512x512 grey, one file
per slice, ``SS`` = index in the patient's stack, 00 = skull base),
``phe_masks/PPPP_SS.png`` (0/255 perihematomal *edema*, not blood) and
``boxes/PPPP_SS.xml`` (Pascal VOC boxes, each around a clot and its edema).

What this reader adds to the raw files, and why:

* **HU from 8-bit.** The source does not state the window, and it is not one
  window: it is measured per stack (:func:`measure_window`). The width comes
  from the histogram's comb: a linear window of integer HU spread over 255
  levels leaves levels empty, and 111 stacks fill 99 of the 210 levels
  20..229 (width 120 HU) while patients 0160-0167 fill 66 (width 80 HU). The
  level puts the histogram's mode, parenchyma, at 30 HU; for the 120 HU
  stacks that gives -20..100 HU, and then CSF (ventricles, grey 54) reads 5 HU,
  an independent check (:func:`estimate_window` reads a window off the CSF
  and parenchyma peaks alone; ``tests/tools/phe_sich_montage.py`` prints both).
  The slices become pseudo-HU (grey 0 -> air, 255 -> bone) and take the same
  road as DICOM at inference (:func:`dicom_node.models.inputs.slice_from_hu`):
  the brain window 0..80 HU that the networks read lies inside each stack's
  window, so PNG and HU inputs meet to a grey level, as the Kaggle path does.
* **Orientation.** The stacks are stored with the face to the left; they are
  turned a quarter clockwise so that anterior is up, as in every other source.
* **Hematoma masks** are derived, not given: :func:`derive_hematoma`.
* **Geometry.** PNGs carry none: pixel spacing is nominal (the head's long
  axis taken as 180 mm, as for the Kaggle PNGs) and the slice spacing is the
  stack's nominal coverage (150 mm, skull base to vertex) over its slices.

Nothing is copied or cached on disk: derived masks exist in memory only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dicom_node.imaging.morphology import dilate_in_plane, fill_holes_2d, label_components
from dicom_node.models.inputs import InputSpec
from dicom_node.training.cases import Case, PseudoVolume, SliceSet, volume_slices

#: The 8-bit window most stacks have, in HU (lower, upper); see the module docstring.
WINDOW_HU = (-20.0, 100.0)
#: Pseudo-HU of saturated pixels: black is air or fat, white is bone.
AIR_HU = -1000.0
BONE_HU = 1000.0
#: Acute clot is 50-90 HU, its partial-volume rim less; parenchyma reads 25-35 HU here and
#: edema below it. Bone saturates at 100. Inside a ring the lower bound can be lower: the
#: ring already says where the clot is.
CLOT_HU = (44.0, 99.0)
CLOT_IN_RING_MIN_HU = 38.0
#: Gaps of a drawn ring up to about twice this many pixels are closed before its inside is taken.
RING_CLOSING_PIXELS = 3
#: Nominal geometry (PNGs have none): head long axis and skull-base-to-vertex coverage.
NOMINAL_HEAD_LENGTH_MM = 180.0
NOMINAL_COVERAGE_MM = 150.0
#: Reference tissue values used to read the window off the data (adult, non-contrast).
CSF_HU = 5.0
PARENCHYMA_HU = 30.0
#: Derived clot regions smaller than this many source pixels are noise, not blood.
MIN_CLOT_PIXELS = 20

_NAME = re.compile(r"^(\d{4})_(\d{2,3})$")
_BOX = re.compile(
    r"<bndbox>\s*<xmin>([\d.]+)</xmin>\s*<ymin>([\d.]+)</ymin>\s*<xmax>([\d.]+)</xmax>\s*<ymax>([\d.]+)</ymax>"
)

Box = tuple[int, int, int, int]  # (row0, col0, row1, col1), end exclusive, after the quarter turn


@dataclass(frozen=True)
class PheStack:
    """One patient's stack on the display grid: pseudo-HU, edema ring, boxes, derived clot."""

    patient: str
    hu: np.ndarray  # float32 (slices, rows, cols)
    edema: np.ndarray  # bool (slices, rows, cols)
    boxes: tuple[tuple[Box, ...], ...]  # per slice
    hematoma: np.ndarray  # bool (slices, rows, cols), derived
    spacing_mm: tuple[float, float, float]

    @property
    def labels(self) -> np.ndarray:
        """1 where the slice has a box (a clot and its edema were outlined there)."""
        return np.array([1 if b else 0 for b in self.boxes], dtype=np.uint8)


@dataclass(frozen=True)
class PheSich:
    """The PHE-SICH-CT-IDS folder."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> PheSich:
        """Check the layout; a missing part is a FileNotFoundError naming it."""
        root = Path(root)
        for part in ("images", "phe_masks", "boxes"):
            if not (root / part).is_dir():
                raise FileNotFoundError(
                    f"{root} is not the PHE-SICH-CT-IDS layout: {part}/ is missing "
                    "(expected images/PPPP_SS.png, phe_masks/PPPP_SS.png, boxes/PPPP_SS.xml)"
                )
        return cls(root)

    def slices_by_patient(self) -> dict[str, list[str]]:
        """Patient -> slice file stems in stack order (patients with images only)."""
        stacks: dict[str, list[tuple[int, str]]] = {}
        for path in (self.root / "images").glob("*.png"):
            match = _NAME.match(path.stem)
            if match is None:
                raise ValueError(f"{path.name}: PHE-SICH images are named PPPP_SS.png")
            stacks.setdefault(match.group(1), []).append((int(match.group(2)), path.stem))
        if not stacks:
            raise FileNotFoundError(f"{self.root / 'images'} holds no PNG slices")
        return {p: [stem for _, stem in sorted(items)] for p, items in sorted(stacks.items())}

    def patients(self) -> list[str]:
        """Patient numbers that have images."""
        return list(self.slices_by_patient())

    def grey(self, patient: str) -> np.ndarray:
        """The stack's 8-bit slices as stored (uint8, turned anterior-up)."""
        stems = self.slices_by_patient().get(patient)
        if not stems:
            raise ValueError(f"patient {patient} has no images under {self.root / 'images'}")
        return np.stack([_turn(_read_grey(self.root / "images" / f"{s}.png")) for s in stems])

    def stack(self, patient: str, *, window: tuple[float, float] | None = None) -> PheStack:
        """Read one patient's stack and derive its hematoma masks (window: measured, unless given)."""
        stems = self.slices_by_patient().get(patient) or []
        grey = self.grey(patient)
        edema = np.stack([_turn(_read_grey(self.root / "phe_masks" / f"{s}.png")) > 127 for s in stems])
        boxes = tuple(_turn_boxes(read_boxes(self.root / "boxes" / f"{s}.xml"), grey.shape[2]) for s in stems)
        hu = grey_to_hu(grey, window or measure_window(grey))
        hematoma = np.stack([derive_hematoma(hu[k], edema[k], boxes[k]) for k in range(len(stems))])
        slice_mm = float(np.clip(NOMINAL_COVERAGE_MM / len(stems), 1.0, 10.0))
        pixel_mm = _nominal_pixel_mm(hu)
        return PheStack(patient, hu, edema, boxes, hematoma, (slice_mm, pixel_mm, pixel_mm))


def _read_grey(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (every PHE-SICH slice has an image and an edema mask)")
    with Image.open(path) as img:
        return np.asarray(img.convert("L"), dtype=np.uint8)


def _turn(image: np.ndarray) -> np.ndarray:
    """A quarter turn clockwise: the stacks' face-left layout to anterior-up."""
    return np.ascontiguousarray(np.rot90(image, k=-1))


def _turn_boxes(boxes: Sequence[tuple[float, float, float, float]], width: int) -> tuple[Box, ...]:
    """VOC (xmin, ymin, xmax, ymax) pixel boxes -> (row0, col0, row1, col1) after the quarter turn.

    Clockwise, source (row r, col c) goes to (row c, col W - 1 - r), W the source width.
    """
    turned = []
    for xmin, ymin, xmax, ymax in boxes:
        r0, r1 = int(xmin), int(xmax) + 1
        c0, c1 = width - 1 - int(ymax), width - int(ymin)
        turned.append((max(r0, 0), max(c0, 0), r1, c1))
    return tuple(turned)


def read_boxes(path: Path) -> list[tuple[float, float, float, float]]:
    """VOC boxes (xmin, ymin, xmax, ymax) of one slice; no file means no box."""
    if not path.is_file():
        return []
    return [tuple(float(v) for v in match) for match in _BOX.findall(path.read_text())]  # type: ignore[misc]


def grey_to_hu(grey: np.ndarray, window: tuple[float, float] = WINDOW_HU) -> np.ndarray:
    """Pseudo-HU of 8-bit windowed pixels; the saturated ends become air and bone."""
    lower, upper = window
    hu = (lower + grey.astype(np.float32) * np.float32((upper - lower) / 255.0)).astype(np.float32)
    hu[grey == 0] = AIR_HU
    hu[grey == 255] = BONE_HU
    return hu


def _nominal_pixel_mm(hu: np.ndarray) -> float:
    """mm per pixel, taking the head's longest extent over the stack as NOMINAL_HEAD_LENGTH_MM."""
    head = (hu > 0).any(axis=0)
    rows, cols = np.flatnonzero(head.any(axis=1)), np.flatnonzero(head.any(axis=0))
    if rows.size == 0:
        return NOMINAL_HEAD_LENGTH_MM / hu.shape[1]
    extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
    return NOMINAL_HEAD_LENGTH_MM / float(extent)


def derive_hematoma(hu: np.ndarray, edema: np.ndarray, boxes: Sequence[Box]) -> np.ndarray:
    """The clot of one slice: hyperdense pixels inside a box, bounded by its edema ring.

    In each box, clot candidates are pixels in :data:`CLOT_HU` (bone saturates
    above it) that are not edema. Where the ring, its small gaps closed,
    encloses a region, the candidates inside it (down to
    :data:`CLOT_IN_RING_MIN_HU`) are the clot: the ring bounds the clot and
    shuts out the skull or calcification at the box's edge. Where it does not
    (no ring, or a partial or tiny one), the candidate component that touches
    the ring, or failing that the largest, is kept. Holes are filled; pieces
    under :data:`MIN_CLOT_PIXELS` are dropped.
    """
    out = np.zeros(hu.shape, dtype=bool)
    for r0, c0, r1, c1 in boxes:
        window = (slice(r0, r1), slice(c0, c1))
        values, ring = hu[window], edema[window]
        if values.size == 0:
            continue
        candidates = (values >= CLOT_HU[0]) & (values <= CLOT_HU[1]) & ~ring
        enclosed = ring_inside(ring)
        if enclosed.sum() >= MIN_CLOT_PIXELS:
            clot = enclosed & (values >= CLOT_IN_RING_MIN_HU) & (values <= CLOT_HU[1])
        if enclosed.sum() < MIN_CLOT_PIXELS or clot.sum() < MIN_CLOT_PIXELS:
            clot = _component_near(candidates, ring)
        out[window] |= _drop_small(fill_holes_2d(clot) & ~ring, MIN_CLOT_PIXELS)
    return out


def ring_inside(ring: np.ndarray) -> np.ndarray:
    """What a drawn ring encloses, after closing gaps of up to ~2 x RING_CLOSING_PIXELS; the ring excluded."""
    closed = _dilate(ring, RING_CLOSING_PIXELS)
    inside = fill_holes_2d(closed) & ~closed
    return _dilate(inside, RING_CLOSING_PIXELS) & ~ring


def _dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """One slice dilated by an octagon of ``pixels`` radius (the morphology module's)."""
    return dilate_in_plane(mask[None], pixels)[0]


def _component_near(candidates: np.ndarray, ring: np.ndarray) -> np.ndarray:
    """The candidate component touching the ring (the largest such), else the largest one."""
    labels, n = label_components(candidates)
    if n == 0:
        return candidates
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    if ring.any():
        touching = np.unique(labels[_dilate(ring, 2)])
        touching = touching[touching > 0]
        if touching.size:
            best = touching[np.argmax(sizes[touching])]
            return labels == best
    return labels == int(np.argmax(sizes))


def _drop_small(mask: np.ndarray, min_pixels: int) -> np.ndarray:
    labels, n = label_components(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero(sizes >= min_pixels)
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def measure_window(grey: np.ndarray) -> tuple[float, float]:
    """(lower, upper) HU of one stack's 8-bit window, from its grey levels alone.

    Width: a linear window of integer HU leaves a comb in the histogram; over
    the grey levels a stack populates (0.5th to 99.5th percentile of the
    unsaturated pixels), a width of W HU fills a share ``W / 255`` of them.
    Most stacks fill 99 of the 210 levels 20..229 (W = 120), patients
    0160-0167 fill 66 (W = 80). Level: the histogram's mode (brain parenchyma,
    which dominates every head slice) is put at :data:`PARENCHYMA_HU`. Falls
    back to :data:`WINDOW_HU` when the stack populates too few levels to show
    its comb.
    """
    counts = np.bincount(grey.ravel(), minlength=256)[:256]
    inner = counts[1:255]
    if inner.sum() < 10_000:
        return WINDOW_HU
    cumulative = np.cumsum(inner) / inner.sum()
    first = int(np.searchsorted(cumulative, 0.005))
    last = int(np.searchsorted(cumulative, 0.995))
    if last - first < 40:
        return WINDOW_HU
    occupied = int(np.count_nonzero(inner[first : last + 1]))
    width = float(round(occupied * 255.0 / (last - first + 1) / 5.0) * 5.0)
    if not 60.0 <= width <= 255.0:
        return WINDOW_HU
    mode = int(np.argmax(inner)) + 1
    lower = float(round(PARENCHYMA_HU - mode * width / 255.0))
    return lower, lower + width


def estimate_window(grey: np.ndarray, intracranial: np.ndarray) -> tuple[float, float]:
    """(lower, upper) HU of an 8-bit window from the CSF and parenchyma peaks inside the skull.

    ``grey`` uint8 slices and ``intracranial`` a bool mask of the brain on them.
    The parenchyma peak is the histogram's mode; the CSF peak is the mode below
    it by at least 15 % of the range. Anchored at :data:`CSF_HU` and
    :data:`PARENCHYMA_HU`.
    """
    values = grey[intracranial & (grey > 0) & (grey < 255)]
    if values.size < 1000:
        raise ValueError("too few intracranial pixels to read the window off")
    hist = np.convolve(np.bincount(values, minlength=256).astype(float), np.ones(7) / 7, mode="same")
    parenchyma = int(np.argmax(hist))
    below = hist[: max(parenchyma - 38, 1)]
    csf = int(np.argmax(below))
    if parenchyma - csf < 10:
        raise ValueError("no CSF peak below the parenchyma peak: cannot read the window off these slices")
    width = (PARENCHYMA_HU - CSF_HU) * 255.0 / (parenchyma - csf)
    lower = CSF_HU - csf * width / 255.0
    return float(lower), float(lower + width)


def phe_slices(root: str | Path, patients: Sequence[str], spec: InputSpec) -> SliceSet:
    """Model-size training slices of the named patients' whole stacks.

    A boxed slice whose derived clot is empty is kept for the classifier but is
    not pixel-annotated (its blood is there, only not found by the derivation);
    every other slice is annotated, the unboxed ones as true negatives.
    """
    dataset = PheSich.open(root)
    items = []
    for patient in patients:
        stack = dataset.stack(patient)
        these = volume_slices(patient, stack.hu, stack.hematoma, stack.spacing_mm, spec, slabs=False)
        for k, (prepared, instances, _, _, key, group) in enumerate(these):
            label = int(stack.labels[k])
            annotated = not (label and not stack.hematoma[k].any())
            items.append((prepared, instances, label, annotated, key, group))
    return SliceSet.build(items)


def phe_cases(root: str | Path, patients: Sequence[str] | None = None) -> Iterator[Case]:
    """Evaluation cases: one whole stack per patient, its derived clot as truth."""
    dataset = PheSich.open(root)
    for patient in patients if patients is not None else dataset.patients():
        stack = dataset.stack(patient)
        yield Case(
            key=patient,
            # Pseudo-HU read back from an 8-bit window: no density rule may judge them.
            volume=PseudoVolume(hu=stack.hu, spacing_mm=stack.spacing_mm, real_hu=False),
            label=int(stack.labels.any()),
            truth=stack.hematoma,
        )
