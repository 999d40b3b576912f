"""Fixtures for the model tests: tiny datasets in each layout, tiny cards.

Everything is generated at test time: no patient data, nothing copied from ../shared.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dicom_node.models.card import ModelCard
from dicom_node.models.inputs import InputSpec
from dicom_node.models.result import ModelKind

REPO = Path(__file__).resolve().parents[2]
KAGGLE = REPO.parent / "shared" / "data" / "headct-kaggle"

#: Tiny architectures, so that a training step takes milliseconds at 64x64.
TINY_ARCHITECTURES = {
    "classifier": {"widths": [8, 8, 16, 16], "blocks": [1, 1, 1, 1], "dropout": 0.0},
    "unet": {"base_channels": 8, "depth": 3},
    "maskrcnn": {
        "widths": [8, 8, 16, 16],
        "blocks": [1, 1, 1, 1],
        "fpn_channels": 16,
        "representation": 32,
        "mask_channels": 16,
        "anchor_sizes": [4, 8, 16, 32, 64],
    },
}


def tiny_card(kind: str, size: int = 64) -> ModelCard:
    """A card of the ``kind`` with its tiny architecture and square ``size`` input (weights not checked)."""
    return ModelCard(
        name=f"tiny-{kind}",
        version="0",
        kind=ModelKind(kind),
        weights_file="weights.pt",
        weights_sha256="0" * 64,
        architecture=TINY_ARCHITECTURES[kind],
        input=InputSpec(size=(size, size)),
    )


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Import into a test module to run it on one torch thread (restored afterwards).

    The networks in the tests are tiny: a second thread only adds contention on
    a shared CPU, and can make a step ten times slower when the machine is busy.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def require_kaggle() -> Path:
    """The shared Kaggle folder, or an AssertionError that says what is missing (never a skip)."""
    assert (KAGGLE / "labels.csv").is_file() and (KAGGLE / "images").is_dir(), (
        f"the Kaggle head CT data are missing: expected {KAGGLE} (labels.csv, images/, via/); "
        "see ../shared/data/README.md"
    )
    return KAGGLE


def synthetic_slice(
    rng: np.random.Generator, *, rows: int, cols: int, lesion: bool
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """A brain-windowed [0, 1] head slice (skull ring, brain, noise) and its lesion polygon.

    The head is an ellipse filling most of the image, off-centre by a few
    pixels; the lesion (when asked for) is a bright disc inside the brain. A
    small bright "figure letter" sits in a corner, outside the head.
    """
    y, x = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2 + rng.uniform(-3, 3), cols / 2 + rng.uniform(-3, 3)
    ry, rx = rows * 0.42, cols * 0.36
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    image = np.zeros((rows, cols), dtype=np.float32)
    image[r <= 1.0] = 1.0  # skull (saturated in the brain window)
    image[r <= 0.9] = 0.45  # brain, about 36 HU
    image += (r <= 0.9) * rng.normal(0.0, 0.02, image.shape).astype(np.float32)
    polygon: list[tuple[float, float]] = []
    if lesion:
        ly = cy + rng.uniform(-0.4, 0.4) * ry
        lx = cx + rng.uniform(-0.4, 0.4) * rx
        radius = rng.uniform(0.12, 0.2) * min(rows, cols)
        image[np.hypot(y - ly, x - lx) <= radius] = 0.85  # acute blood, about 68 HU
        angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        polygon = [(float(lx + radius * np.cos(a)), float(ly + radius * np.sin(a))) for a in angles]
    image[2:8, 2:6] = 1.0  # a figure letter
    return np.clip(image, 0.0, 1.0), polygon


def write_tiny_kaggle(root: Path, *, per_split: dict[str, int] | None = None, seed: int = 0) -> Path:
    """A folder in the Kaggle layout with a few synthetic slices per split (half with a lesion)."""
    from PIL import Image

    per_split = per_split or {"train": 8, "val": 4, "test": 4}
    first_ids = {"train": (0, 100), "val": (70, 170), "test": (90, 190)}
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "via").mkdir()
    labels = []
    via: dict[str, dict[str, object]] = {"train": {}, "val": {}}
    for split, count in per_split.items():
        positive_start, negative_start = first_ids[split]
        for k in range(count):
            lesion = k % 2 == 0
            number = (positive_start if lesion else negative_start) + k // 2
            rows, cols = int(rng.integers(90, 130)), int(rng.integers(80, 120))
            image, polygon = synthetic_slice(rng, rows=rows, cols=cols, lesion=lesion)
            name = f"{number:03d}.png"
            grey = np.rint(image * 255).astype(np.uint8)
            Image.fromarray(np.stack([grey] * 3, axis=-1)).save(root / "images" / name)
            labels.append((number, int(lesion)))
            if split in via:
                regions = []
                if polygon:
                    regions.append(
                        {
                            "shape_attributes": {
                                "name": "polygon",
                                "all_points_x": [round(px) for px, _ in polygon],
                                "all_points_y": [round(py) for _, py in polygon],
                            },
                            "region_attributes": {},
                        }
                    )
                via[split][name] = {"filename": name, "size": 0, "regions": regions, "file_attributes": {}}
    with open(root / "labels.csv", "w") as handle:
        handle.write("id, hemorrhage\n")
        for number, label in sorted(labels):
            handle.write(f"{number},{label}\n")
    for split, entries in via.items():
        (root / "via" / f"{split}.json").write_text(json.dumps(entries))
    return root
