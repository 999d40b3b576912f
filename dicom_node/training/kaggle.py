"""Reader of the Kaggle head CT layout (``headct-kaggle/``).

8-bit brain-window PNG slices of varying size, ``labels.csv`` (image labels) and
VIA 2.x polygons in ``via/train.json`` and ``via/val.json``. Splits are fixed
(see :data:`KAGGLE_SPLITS`); images 090-099 and 190-199 have labels only.
Nothing is copied: the reader reads the data where it lies.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_node.models.inputs import InputSpec, read_png_brain, slice_from_windowed
from dicom_node.training.cases import Case, PseudoVolume, SliceSet

#: The Kaggle set's fixed splits (image ids); test has image labels but no polygons.
KAGGLE_SPLITS: dict[str, tuple[int, ...]] = {
    "train": tuple(range(0, 70)) + tuple(range(100, 170)),
    "val": tuple(range(70, 90)) + tuple(range(170, 190)),
    "test": tuple(range(90, 100)) + tuple(range(190, 200)),
}
#: Assumed outer length of an adult head on an axial slice, to give PNGs (which
#: carry no geometry) a nominal pixel spacing for volumes in mL.
NOMINAL_HEAD_LENGTH_MM = 180.0
#: Assumed slice thickness of a PNG slice.
NOMINAL_SLICE_MM = 5.0
#: Pseudo-HU given to saturated (white) brain-window pixels: at or above 80 HU,
#: which on a brain-windowed image is overwhelmingly bone.
SATURATED_HU = 1000.0


@dataclass(frozen=True)
class KaggleHeadCT:
    """The Kaggle head CT folder: images/NNN.png, labels.csv, via/{train,val}.json."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> KaggleHeadCT:
        """Check the layout; a missing part is a FileNotFoundError naming it."""
        root = Path(root)
        for part in ("images", "labels.csv", "via/train.json", "via/val.json"):
            if not (root / part).exists():
                raise FileNotFoundError(
                    f"{root} is not the Kaggle head CT layout: {part} is missing "
                    "(expected images/NNN.png, labels.csv, via/train.json, via/val.json)"
                )
        return cls(root)

    @staticmethod
    def image_id(number: int) -> str:
        """The three-digit id of image ``number`` ("007")."""
        return f"{number:03d}"

    def ids(self, split: str) -> list[str]:
        """Image ids of a split ("train", "val", "test") that labels.csv lists."""
        if split not in KAGGLE_SPLITS:
            raise ValueError(f"unknown split {split!r}: the Kaggle splits are {tuple(KAGGLE_SPLITS)}")
        listed = self.labels()
        return [self.image_id(n) for n in KAGGLE_SPLITS[split] if self.image_id(n) in listed]

    def labels(self) -> dict[str, int]:
        """Image id -> 1 (hemorrhage) or 0, from labels.csv."""
        with open(self.root / "labels.csv", newline="") as handle:
            rows = list(csv.reader(handle))
        header = [h.strip().lower() for h in rows[0]]
        if header != ["id", "hemorrhage"]:
            raise ValueError(f"labels.csv must have the header 'id, hemorrhage', not {rows[0]}")
        out = {}
        for row in rows[1:]:
            if not row:
                continue
            value = int(row[1])
            if value not in (0, 1):
                raise ValueError(f"labels.csv: hemorrhage must be 0 or 1, image {row[0]} has {value}")
            out[self.image_id(int(row[0]))] = value
        return out

    def polygons(self) -> dict[str, list[list[tuple[float, float]]]]:
        """Image id -> polygons ``[(x, y), ...]`` for every image listed in the VIA files."""
        out: dict[str, list[list[tuple[float, float]]]] = {}
        for name in ("train", "val"):
            out.update(read_via(self.root / "via" / f"{name}.json"))
        return out

    def image(self, image_id: str) -> np.ndarray:
        """The brain-windowed image in [0, 1], ``(rows, cols)``."""
        return read_png_brain(self.root / "images" / f"{image_id}.png")


def read_via(path: Path) -> dict[str, list[list[tuple[float, float]]]]:
    """Polygons of a VIA 1.x/2.x project or annotation export, by image id (file stem).

    Only polygon regions are accepted: other shapes are a ValueError rather than
    silently dropped ground truth.
    """
    data = json.loads(Path(path).read_text())
    if "_via_img_metadata" in data:
        data = data["_via_img_metadata"]
    out: dict[str, list[list[tuple[float, float]]]] = {}
    for entry in data.values():
        regions = entry.get("regions", [])
        if isinstance(regions, dict):  # VIA 1.x keeps regions in a dict
            regions = list(regions.values())
        polygons = []
        for region in regions:
            shape = region["shape_attributes"]
            if shape.get("name") != "polygon":
                raise ValueError(
                    f"{path}: {entry['filename']} has a {shape.get('name')!r} region; only polygons are read"
                )
            points = list(zip(shape["all_points_x"], shape["all_points_y"], strict=True))
            if len(points) >= 3:
                polygons.append([(float(x), float(y)) for x, y in points])
        out[Path(entry["filename"]).stem] = polygons
    return out


def rasterize_polygons(polygons: Sequence[Sequence[tuple[float, float]]], shape: tuple[int, int]) -> np.ndarray:
    """uint8 instance map of ``shape``: polygon ``i`` painted ``i + 1`` (later ones on top)."""
    from PIL import Image, ImageDraw

    if len(polygons) > 255:
        raise ValueError("more than 255 polygons on one image do not fit a uint8 instance map")
    canvas = Image.new("L", (shape[1], shape[0]), 0)
    draw = ImageDraw.Draw(canvas)
    for number, polygon in enumerate(polygons, start=1):
        draw.polygon([(x, y) for x, y in polygon], fill=number, outline=number)
    return np.asarray(canvas, dtype=np.uint8)


def nominal_spacing(transform: Any, margin_fraction: float) -> tuple[float, float, float]:
    """(z, y, x) mm for a PNG slice, assuming the head's long side is :data:`NOMINAL_HEAD_LENGTH_MM`.

    The crop box is the head's longer side enlarged by the margin on both sides.
    """
    head_pixels = max(transform.box[2], transform.box[3]) / (1.0 + 2.0 * margin_fraction)
    pixel = NOMINAL_HEAD_LENGTH_MM / head_pixels
    return (NOMINAL_SLICE_MM, pixel, pixel)


def pseudo_hu(brain: np.ndarray) -> np.ndarray:
    """HU-like values of a brain-window image: ``80 v`` (window 40/80), saturated white as bone.

    Only the HU threshold baseline reads these (and lesion mean HU on PNGs);
    networks get the windowed image itself.
    """
    hu = (brain * 80.0).astype(np.float32)
    hu[brain >= 1.0] = SATURATED_HU
    return hu


def kaggle_cases(dataset: KaggleHeadCT, split: str, spec: InputSpec) -> Iterator[Case]:
    """Evaluation cases of a Kaggle split, one single-slice volume per image."""
    labels = dataset.labels()
    polygons = dataset.polygons()
    for image_id in dataset.ids(split):
        brain = dataset.image(image_id)
        prepared = slice_from_windowed(brain, spec=spec)
        truth = None
        if image_id in polygons and (labels[image_id] == 0 or polygons[image_id]):
            truth = (rasterize_polygons(polygons[image_id], brain.shape) > 0)[None]
        yield Case(
            key=image_id,
            volume=PseudoVolume(
                hu=pseudo_hu(brain)[None],
                spacing_mm=nominal_spacing(prepared.transform, spec.margin_fraction),
                real_hu=False,  # saturated white is a placeholder, not a density
            ),
            label=labels[image_id],
            truth=truth,
            windowed=brain[None],
        )


def kaggle_slices(dataset: KaggleHeadCT, split: str, spec: InputSpec) -> SliceSet:
    """Model-size training slices of a Kaggle split (each image is its own group)."""
    labels = dataset.labels()
    polygons = dataset.polygons()
    items = []
    for image_id in dataset.ids(split):
        brain = dataset.image(image_id)
        prepared = slice_from_windowed(brain, spec=spec)
        annotated = image_id in polygons and (labels[image_id] == 0 or bool(polygons[image_id]))
        instances = rasterize_polygons(polygons.get(image_id, []), brain.shape)
        model_instances = prepared.transform.to_model(instances, order="nearest", fill=0)
        items.append((prepared, model_instances, labels[image_id], annotated, image_id, image_id))
    return SliceSet.build(items)


