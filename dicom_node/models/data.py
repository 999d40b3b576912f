"""Readers for the three layouts of hemorrhage training data, into one in-memory form.

* **Kaggle head CT** (``headct-kaggle/``): 8-bit brain-window PNG slices of
  varying size, ``labels.csv`` (image labels) and VIA 2.x polygons in
  ``via/train.json`` and ``via/val.json``. Splits are fixed (see
  :data:`KAGGLE_SPLITS`); images 090-099 and 190-199 have labels only.
* **NIfTI pairs** in the CT-ICH / BHSD layout: ``ct_scans/<name>.nii[.gz]`` (HU)
  and ``masks/<name>.nii[.gz]`` (any nonzero voxel is hemorrhage; BHSD's
  subtype labels are merged). Split by scan, with a seed.
* **DICOM + SEG**: one folder per case holding a CT series and a DICOM SEG that
  references it. Split by case, with a seed.

Two views of the data exist because training and evaluation need different
things. Training reads :class:`SliceSet`: every slice already made into model
input by the shared preprocessing (:mod:`dicom_node.models.inputs`) with its
instance label map carried through the same crop (nearest neighbour), stored as
float16 to halve memory. Evaluation reads :class:`Case`: the source-grid image,
truth and a volume to measure on, so that metrics are computed where the SEG
will live, after the runner has mapped predictions back.

Nothing is copied: the readers read the data where it lies. A missing or
malformed folder raises an error that says what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dicom_node.models.inputs import (
    ImagingFunctions,
    InputSpec,
    ModelSlice,
    read_png_brain,
    slice_from_hu,
    slice_from_windowed,
)
from dicom_node.imaging.morphology import label_components

logger = logging.getLogger(__name__)

Layout = Literal["kaggle", "nifti", "dicom"]

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


@dataclass(frozen=True, eq=False)
class SliceSet:
    """Model-size training slices.

    ``images`` float16 ``(n, channels, rows, cols)`` in [0, 1]; ``instances`` uint8
    ``(n, rows, cols)``, 0 background and 1..k one per annotated region;
    ``labels`` the image label (1 = hemorrhage); ``annotated`` whether the
    pixel truth is known (a positive image without polygons is not, and must not
    teach a segmenter that its bleed is background); ``keys`` name each slice and
    ``groups`` the patient or scan it belongs to (splits never cut a group).
    """

    images: np.ndarray
    instances: np.ndarray
    labels: np.ndarray
    annotated: np.ndarray
    keys: tuple[str, ...]
    groups: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.ndim != 4 or self.instances.shape != (n,) + self.images.shape[2:]:
            raise ValueError("images must be (n, C, H, W) and instances (n, H, W)")
        if self.labels.shape != (n,) or self.annotated.shape != (n,) or len(self.keys) != n or len(self.groups) != n:
            raise ValueError("labels, annotated, keys and groups need one entry per slice")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: Sequence[int] | np.ndarray) -> SliceSet:
        """The slices at ``index``, in that order."""
        idx = np.asarray(index, dtype=np.intp)
        return SliceSet(
            images=self.images[idx],
            instances=self.instances[idx],
            labels=self.labels[idx],
            annotated=self.annotated[idx],
            keys=tuple(self.keys[i] for i in idx),
            groups=tuple(self.groups[i] for i in idx),
        )

    @classmethod
    def build(cls, items: Sequence[tuple[ModelSlice, np.ndarray, int, bool, str, str]]) -> SliceSet:
        """From ``(model slice, model-size instance map, label, annotated, key, group)`` items."""
        if not items:
            raise ValueError("a SliceSet needs at least one slice")
        return cls(
            images=np.stack([item[0].image for item in items]).astype(np.float16),
            instances=np.stack([item[1] for item in items]).astype(np.uint8),
            labels=np.array([item[2] for item in items], dtype=np.uint8),
            annotated=np.array([item[3] for item in items], dtype=bool),
            keys=tuple(item[4] for item in items),
            groups=tuple(item[5] for item in items),
        )


@dataclass(frozen=True, eq=False)
class PseudoVolume:
    """A volume without DICOM provenance (PNG or NIfTI data), enough to measure lesions on."""

    hu: np.ndarray
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray | None = None


@dataclass(frozen=True, eq=False)
class Case:
    """One evaluation case on its source grid.

    ``truth`` is the boolean hemorrhage mask ``(slices, rows, cols)``, or None
    when only the label is known. ``windowed`` holds brain-windowed [0, 1]
    slices for data that only exist as such (PNGs: the runner then takes the
    windowed road); for HU data it is None and the runner windows ``volume.hu``.
    """

    key: str
    volume: PseudoVolume | Any
    label: int
    truth: np.ndarray | None
    windowed: np.ndarray | None = None


# --------------------------------------------------------------------------- Kaggle


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


def kaggle_cases(dataset: KaggleHeadCT, split: str, spec: InputSpec, imaging: ImagingFunctions) -> Iterator[Case]:
    """Evaluation cases of a Kaggle split, one single-slice volume per image."""
    labels = dataset.labels()
    polygons = dataset.polygons()
    for image_id in dataset.ids(split):
        brain = dataset.image(image_id)
        prepared = slice_from_windowed(brain, spec=spec, imaging=imaging)
        truth = None
        if image_id in polygons and (labels[image_id] == 0 or polygons[image_id]):
            truth = (rasterize_polygons(polygons[image_id], brain.shape) > 0)[None]
        yield Case(
            key=image_id,
            volume=PseudoVolume(
                hu=pseudo_hu(brain)[None],
                spacing_mm=nominal_spacing(prepared.transform, spec.margin_fraction),
            ),
            label=labels[image_id],
            truth=truth,
            windowed=brain[None],
        )


def kaggle_slices(dataset: KaggleHeadCT, split: str, spec: InputSpec, imaging: ImagingFunctions) -> SliceSet:
    """Model-size training slices of a Kaggle split (each image is its own group)."""
    labels = dataset.labels()
    polygons = dataset.polygons()
    items = []
    for image_id in dataset.ids(split):
        brain = dataset.image(image_id)
        prepared = slice_from_windowed(brain, spec=spec, imaging=imaging)
        annotated = image_id in polygons and (labels[image_id] == 0 or bool(polygons[image_id]))
        instances = rasterize_polygons(polygons.get(image_id, []), brain.shape)
        model_instances = prepared.transform.to_model(instances, order="nearest", fill=0)
        items.append((prepared, model_instances, labels[image_id], annotated, image_id, image_id))
    return SliceSet.build(items)


# --------------------------------------------------------------------------- NIfTI


def nifti_pairs(root: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, scan, mask) for every ``ct_scans/<name>.nii[.gz]`` with a ``masks/<name>.nii[.gz]``."""
    root = Path(root)
    scans_dir, masks_dir = root / "ct_scans", root / "masks"
    if not scans_dir.is_dir() or not masks_dir.is_dir():
        raise FileNotFoundError(f"{root} is not the CT-ICH/BHSD layout: it needs ct_scans/ and masks/")

    def stem(path: Path) -> str:
        return path.name.removesuffix(".gz").removesuffix(".nii")

    masks = {stem(p): p for p in masks_dir.iterdir() if p.name.endswith((".nii", ".nii.gz"))}
    pairs = []
    for scan in sorted(scans_dir.iterdir()):
        if not scan.name.endswith((".nii", ".nii.gz")):
            continue
        name = stem(scan)
        if name not in masks:
            raise ValueError(f"{scan} has no mask: expected masks/{name}.nii or .nii.gz")
        pairs.append((name, scan, masks[name]))
    if not pairs:
        raise FileNotFoundError(f"{scans_dir} holds no .nii or .nii.gz scans")
    return pairs


def read_nifti_case(scan: Path, mask: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """HU ``(slices, rows, cols)`` float32, mask bool, spacing (z, y, x) mm, in display orientation.

    Both images are reoriented to RAS+ (nibabel's canonical), then each axial
    slice is laid out as a radiologist reads it: anterior at the top, the
    patient's right on the left of the image; slice 0 is the most inferior.
    """
    import nibabel as nib

    scan_img = nib.as_closest_canonical(nib.load(str(scan)))
    mask_img = nib.as_closest_canonical(nib.load(str(mask)))
    if scan_img.shape[:3] != mask_img.shape[:3]:
        raise ValueError(f"{scan.name} and its mask differ in shape: {scan_img.shape} vs {mask_img.shape}")
    if not np.allclose(scan_img.affine, mask_img.affine, atol=1e-3):
        raise ValueError(f"{scan.name} and its mask are not on the same grid (affines differ)")
    hu = np.asarray(scan_img.dataobj, dtype=np.float32)
    labels = np.asarray(mask_img.dataobj)
    if hu.ndim != 3:
        raise ValueError(f"{scan.name} must be a 3D volume, not {hu.ndim}D")
    # RAS+ array (i: to the right, j: anterior, k: superior) -> (k, rows = -j, cols = -i).
    hu = np.ascontiguousarray(hu[::-1, ::-1, :].transpose(2, 1, 0))
    truth = np.ascontiguousarray((labels[::-1, ::-1, :] != 0).transpose(2, 1, 0))
    zooms = scan_img.header.get_zooms()[:3]
    return hu, truth, (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def _volume_slices(
    key: str,
    hu: np.ndarray,
    truth: np.ndarray,
    spacing: tuple[float, float, float],
    spec: InputSpec,
    imaging: ImagingFunctions,
) -> list[tuple[ModelSlice, np.ndarray, int, bool, str, str]]:
    items = []
    for k in range(hu.shape[0]):
        prepared = slice_from_hu(hu[k], spec=spec, imaging=imaging, pixel_spacing=spacing[1:])
        instances, n = label_components(truth[k])
        if n > 255:
            raise ValueError(f"{key} slice {k} has more than 255 separate lesion regions")
        model_instances = prepared.transform.to_model(instances.astype(np.uint8), order="nearest", fill=0)
        items.append((prepared, model_instances, int(truth[k].any()), True, f"{key}:{k}", key))
    return items


def nifti_slices(root: str | Path, names: Sequence[str], spec: InputSpec, imaging: ImagingFunctions) -> SliceSet:
    """Model-size training slices of the named NIfTI scans (every slice, labelled from its mask)."""
    wanted = set(names)
    items = []
    for name, scan, mask in nifti_pairs(root):
        if name in wanted:
            hu, truth, spacing = read_nifti_case(scan, mask)
            items += _volume_slices(name, hu, truth, spacing, spec, imaging)
    return SliceSet.build(items)


def nifti_cases(root: str | Path, names: Sequence[str] | None = None) -> Iterator[Case]:
    """Evaluation cases of NIfTI scans (all, or the named ones), one volume each."""
    for name, scan, mask in nifti_pairs(root):
        if names is None or name in names:
            hu, truth, spacing = read_nifti_case(scan, mask)
            yield Case(key=name, volume=PseudoVolume(hu=hu, spacing_mm=spacing), label=int(truth.any()), truth=truth)


# --------------------------------------------------------------------------- DICOM + SEG


@dataclass(frozen=True)
class DicomCase:
    """A CT series and the SEG that annotates it, found in one folder."""

    name: str
    series_instance_uid: str
    ct_files: tuple[Path, ...]
    seg_file: Path


def dicom_cases_in(root: str | Path) -> list[DicomCase]:
    """One :class:`DicomCase` per SEG under ``root`` whose referenced series is there too.

    Cases are named after the SEG's folder relative to ``root``; a SEG whose
    series is missing is an error, as is a folder with no SEG at all.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder of DICOM cases")
    series: dict[str, list[Path]] = {}
    segs: list[tuple[Path, str]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError):
            continue
        if header.get("Modality") == "SEG":
            referenced = header.get("ReferencedSeriesSequence")
            if not referenced:
                raise ValueError(f"{path}: a SEG without ReferencedSeriesSequence cannot be matched to its CT")
            segs.append((path, str(referenced[0].SeriesInstanceUID)))
        elif header.get("Modality") == "CT":
            series.setdefault(str(header.SeriesInstanceUID), []).append(path)
    if not segs:
        raise FileNotFoundError(f"{root} holds no DICOM SEG: DICOM training data needs SEG ground truth")
    cases = []
    for seg_path, series_uid in segs:
        if series_uid not in series:
            raise ValueError(f"{seg_path} references series {series_uid}, whose CT images are not under {root}")
        name = str(seg_path.parent.relative_to(root)) if seg_path.parent != root else seg_path.stem
        cases.append(DicomCase(name, series_uid, tuple(series[series_uid]), seg_path))
    return cases


def read_dicom_case(case: DicomCase, imaging: ImagingFunctions) -> tuple[Any, np.ndarray]:
    """The assembled HU volume and its SEG mask (any segment), aligned frame for frame.

    Slices the volume interpolated for missing instances have no SEG frame and
    get an empty mask.
    """
    import highdicom as hd

    if imaging.assemble_volume is None:
        raise ValueError("reading DICOM training data needs ImagingFunctions.assemble_volume")
    volume = imaging.assemble_volume(list(case.ct_files), series_instance_uid=case.series_instance_uid)
    seg = hd.seg.segread(case.seg_file)
    uids = [uid for uid in volume.source_sop_instance_uids if uid is not None]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=False)
    truth = np.zeros(volume.hu.shape, dtype=bool)
    present = [k for k, uid in enumerate(volume.source_sop_instance_uids) if uid is not None]
    truth[present] = np.asarray(pixels).any(axis=-1)
    return volume, truth


def dicom_slices(root: str | Path, names: Sequence[str], spec: InputSpec, imaging: ImagingFunctions) -> SliceSet:
    """Model-size training slices of the named DICOM cases."""
    items = []
    for case in dicom_cases_in(root):
        if case.name in names:
            volume, truth = read_dicom_case(case, imaging)
            spacing = tuple(float(s) for s in volume.spacing_mm)
            items += _volume_slices(case.name, volume.hu, truth, spacing, spec, imaging)  # type: ignore[arg-type]
    return SliceSet.build(items)


def dicom_eval_cases(root: str | Path, imaging: ImagingFunctions, names: Sequence[str] | None = None) -> Iterator[Case]:
    """Evaluation cases of DICOM + SEG data (all, or the named ones)."""
    for case in dicom_cases_in(root):
        if names is None or case.name in names:
            volume, truth = read_dicom_case(case, imaging)
            yield Case(key=case.name, volume=volume, label=int(truth.any()), truth=truth)


# --------------------------------------------------------------------------- layouts and splits


def detect_layout(path: str | Path) -> Layout:
    """Which reader a data folder needs; a folder matching none is a FileNotFoundError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if (path / "labels.csv").is_file() and (path / "images").is_dir():
        return "kaggle"
    if (path / "ct_scans").is_dir() and (path / "masks").is_dir():
        return "nifti"
    if path.is_dir():
        return "dicom"
    raise FileNotFoundError(f"{path} is not a Kaggle, NIfTI (ct_scans/, masks/) or DICOM + SEG folder")


def split_groups(groups: Sequence[str], *, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, val) group names: a seeded permutation of the sorted names, the first part to val.

    At least one group goes to each side when there are two or more.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError("val_fraction must be in (0, 1)")
    names = sorted(set(groups))
    if len(names) < 2:
        raise ValueError("splitting by patient needs at least two scans or cases")
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = min(max(1, math.ceil(val_fraction * len(names))), len(names) - 1)
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


def case_names(path: str | Path, layout: Layout) -> list[str]:
    """The scan or case names of a NIfTI or DICOM folder."""
    if layout == "nifti":
        return [name for name, _, _ in nifti_pairs(path)]
    if layout == "dicom":
        return [case.name for case in dicom_cases_in(path)]
    raise ValueError("Kaggle data has fixed splits, not case names")


@dataclass(frozen=True)
class TrainingData:
    """Training and validation slices, and a description of the split for the model card."""

    train: SliceSet
    val: SliceSet
    description: dict[str, Any]


def load_training_data(
    path: str | Path, spec: InputSpec, imaging: ImagingFunctions, *, seed: int, val_fraction: float = 0.2
) -> TrainingData:
    """Read a data folder of any layout and split it (fixed for Kaggle, seeded by case otherwise)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "kaggle":
        dataset = KaggleHeadCT.open(path)
        train = kaggle_slices(dataset, "train", spec, imaging)
        val = kaggle_slices(dataset, "val", spec, imaging)
        description: dict[str, Any] = {
            "layout": layout,
            "path": str(path),
            "split": "fixed: train = 000-069 & 100-169, val = 070-089 & 170-189 (test 090-099 & 190-199 untouched)",
        }
    else:
        names = case_names(path, layout)
        train_names, val_names = split_groups(names, val_fraction=val_fraction, seed=seed)
        reader = nifti_slices if layout == "nifti" else dicom_slices
        train = reader(path, train_names, spec, imaging)
        val = reader(path, val_names, spec, imaging)
        description = {
            "layout": layout,
            "path": str(path),
            "split": f"by case, seed {seed}, val fraction {val_fraction}",
            "train_cases": train_names,
            "val_cases": val_names,
        }
    description.update(
        train_slices=len(train),
        train_positive=int(train.labels.sum()),
        val_slices=len(val),
        val_positive=int(val.labels.sum()),
    )
    logger.info(
        "training data: %d train slices (%d positive), %d val slices",
        len(train),
        int(train.labels.sum()),
        len(val),
        extra={"path": str(path)},
    )
    return TrainingData(train=train, val=val, description=description)


def evaluation_cases(
    path: str | Path,
    spec: InputSpec,
    imaging: ImagingFunctions,
    *,
    split: str,
    seed: int = 0,
    val_fraction: float = 0.2,
) -> Iterator[Case]:
    """The cases of one split for evaluation, read lazily (one volume in memory at a time).

    Kaggle: "train", "val" or "test". NIfTI/DICOM: "all", or "train"/"val" as
    :func:`load_training_data` splits them with the same seed.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout == "kaggle":
        yield from kaggle_cases(KaggleHeadCT.open(path), split, spec, imaging)
        return
    names: list[str] | None = None
    if split != "all":
        if split not in ("train", "val"):
            raise ValueError("a NIfTI or DICOM folder has the splits 'all', 'train' and 'val'")
        train_names, val_names = split_groups(case_names(path, layout), val_fraction=val_fraction, seed=seed)
        names = train_names if split == "train" else val_names
    if layout == "nifti":
        yield from nifti_cases(path, names)
    else:
        yield from dicom_eval_cases(path, imaging, names)
