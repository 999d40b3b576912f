"""One entry to the training data: which layout a folder has, and its splits.

The readers live one per layout (:mod:`~dicom_node.training.kaggle`,
:mod:`~dicom_node.training.nifti`, :mod:`~dicom_node.training.dicom_seg`); this
module picks one and splits what it reads (fixed splits for Kaggle, by case with
a seed otherwise). A missing or malformed folder raises an error that says
what was expected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from dicom_node.models.inputs import InputSpec
from dicom_node.training.cases import Case, SliceSet, TrainingData
from dicom_node.training.dicom_seg import dicom_cases_in, dicom_eval_cases, dicom_slices
from dicom_node.training.kaggle import KaggleHeadCT, kaggle_cases, kaggle_slices
from dicom_node.training.nifti import nifti_cases, nifti_pairs, nifti_slices
from dicom_node.training.phe_sich import PheSich, phe_cases, phe_slices
from dicom_node.training.splits import split_groups

logger = logging.getLogger(__name__)

Layout = Literal["kaggle", "nifti", "phe-sich", "dicom"]

_READERS = {"nifti": nifti_slices, "phe-sich": phe_slices, "dicom": dicom_slices}


def detect_layout(path: str | Path) -> Layout:
    """Which reader a data folder needs; a folder matching none is a FileNotFoundError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data folder {path} does not exist")
    if (path / "labels.csv").is_file() and (path / "images").is_dir():
        return "kaggle"
    if (path / "ct_scans").is_dir() and (path / "masks").is_dir():
        return "nifti"
    if (path / "images").is_dir() and (path / "phe_masks").is_dir() and (path / "boxes").is_dir():
        return "phe-sich"
    if path.is_dir():
        return "dicom"
    raise FileNotFoundError(f"{path} is not a Kaggle, NIfTI (ct_scans/, masks/) or DICOM + SEG folder")


def case_names(path: str | Path, layout: Layout) -> list[str]:
    """The scan, patient or case names of a NIfTI, PHE-SICH or DICOM folder."""
    if layout == "nifti":
        return [name for name, _, _ in nifti_pairs(path)]
    if layout == "phe-sich":
        return PheSich.open(path).patients()
    if layout == "dicom":
        return [case.name for case in dicom_cases_in(path)]
    raise ValueError("Kaggle data has fixed splits, not case names")


def load_training_data(
    path: str | Path, spec: InputSpec, *, seed: int, val_fraction: float = 0.2
) -> TrainingData:
    """Read a data folder of any layout and split it (fixed for Kaggle, seeded by case otherwise)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout == "kaggle":
        dataset = KaggleHeadCT.open(path)
        train = kaggle_slices(dataset, "train", spec)
        val = kaggle_slices(dataset, "val", spec)
        description: dict[str, Any] = {
            "layout": layout,
            "path": str(path),
            "split": "fixed: train = 000-069 & 100-169, val = 070-089 & 170-189 (test 090-099 & 190-199 untouched)",
        }
    else:
        names = case_names(path, layout)
        train_names, val_names = split_groups(names, val_fraction=val_fraction, seed=seed)
        reader = _READERS[layout]
        train = reader(path, train_names, spec)
        val = reader(path, val_names, spec)
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


def load_training_sets(
    paths: Sequence[str | Path],
    spec: InputSpec,
    *,
    seed: int,
    val_fraction: float = 0.2,
    oversample: Mapping[str, int] | None = None,
) -> TrainingData:
    """Several data folders trained together: each split as :func:`load_training_data` does, then joined.

    Each folder keeps its own split (Kaggle's fixed one, by patient elsewhere),
    so no patient is ever on both sides. ``oversample`` maps a folder's name
    (its last path part) to how many times its *training* slices are repeated:
    a small set beside a large one (140 Kaggle slices beside 2,779 whole-stack
    ones) is otherwise seen too rarely to keep what it taught. Each copy is
    augmented afresh; validation is never repeated.
    """
    if not paths:
        raise ValueError("give at least one data folder")
    repeats = dict(oversample or {})
    names = [Path(p).name for p in paths]
    unknown = sorted(set(repeats) - set(names))
    if unknown:
        raise ValueError(f"oversample names {unknown}, which are not among the data folders {names}")
    if any(n < 1 for n in repeats.values()):
        raise ValueError("an oversampling factor is a whole number of at least 1")
    parts = [load_training_data(p, spec, seed=seed, val_fraction=val_fraction) for p in paths]
    for part, name in zip(parts, names, strict=True):
        if repeats.get(name, 1) > 1:
            part.description["train_repeats"] = repeats[name]
    if len(parts) == 1 and repeats.get(names[0], 1) == 1:
        return parts[0]
    train = SliceSet.concat([p.train for p, n in zip(parts, names, strict=True) for _ in range(repeats.get(n, 1))])
    val = SliceSet.concat([p.val for p in parts])
    description = {
        "folders": [p.description for p in parts],
        "train_slices": len(train),
        "train_positive": int(train.labels.sum()),
        "val_slices": len(val),
        "val_positive": int(val.labels.sum()),
    }
    return TrainingData(train=train, val=val, description=description)


def evaluation_cases(
    path: str | Path,
    spec: InputSpec,
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
        yield from kaggle_cases(KaggleHeadCT.open(path), split, spec)
        return
    names: list[str] | None = None
    if split != "all":
        if split not in ("train", "val"):
            raise ValueError("a NIfTI, PHE-SICH or DICOM folder has the splits 'all', 'train' and 'val'")
        train_names, val_names = split_groups(case_names(path, layout), val_fraction=val_fraction, seed=seed)
        names = train_names if split == "train" else val_names
    if layout == "nifti":
        yield from nifti_cases(path, names)
    elif layout == "phe-sich":
        yield from phe_cases(path, names)
    else:
        yield from dicom_eval_cases(path, names)
