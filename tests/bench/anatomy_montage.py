"""A montage of the intracranial space on real head CT slices (PHE-SICH-CT-IDS PNG stacks).

Why PNG stacks: they are the only whole real head CTs in ``../shared/data``, skull
base to vertex, so they show the hard levels (skull base, orbits, sinuses, vertex)
that a synthetic phantom only approximates.

From grey to HU. The stacks are 8-bit renderings of a brain window whose level and
width the source does not state. The analysis needs three classes, not exact HU:
air and fat (grey 0, below the window), soft tissue (inside the window) and bone
(255, saturated above it). So the window is estimated from the tissue only to put
soft tissue at plausible HU: the brain's grey peak is taken as 35 HU and the width
as the standard 80 HU; 0 becomes air (-1000) and 255 bone (+1000). A calcification
or a dense clot that saturates counts as bone, which the final hole filling absorbs.
Pixel spacing and slice spacing are not in the PNGs: 0.45 mm and 5 mm are assumed
(a 230 mm field of view); only the millimetre thresholds depend on them.

Run from the top of the checkout::

    .venv/bin/python -m tests.bench.anatomy_montage --patients 0001,0013,0042 \\
        --out tests/bench/anatomy-montage.png
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dicom_node.imaging.anatomy import intracranial_space
from dicom_node.imaging.volume import CTVolume

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO.parent / "shared" / "data" / "phe-sich-ct-ids" / "images"
#: Assumed geometry of the PNG stacks (not stated by the source).
PIXEL_MM = 0.45
SLICE_MM = 5.0
#: The brain window assumed when mapping grey to HU.
BRAIN_HU = 35.0
WINDOW_WIDTH_HU = 80.0
TILE = 256


def read_stack(patient: str, images: Path = IMAGES) -> np.ndarray:
    """The patient's slices in file order (00 = skull base), shape (slices, rows, cols), uint8."""
    paths = sorted(images.glob(f"{patient}_*.png"), key=lambda p: int(re.split(r"[_.]", p.name)[1]))
    if not paths:
        raise FileNotFoundError(f"no slices of patient {patient} in {images}")
    return np.stack([np.asarray(Image.open(p).convert("L")) for p in paths])


def grey_to_hu(stack: np.ndarray) -> np.ndarray:
    """Approximate HU from a brain-windowed 8-bit stack (see the module docstring)."""
    soft = stack[(stack > 20) & (stack < 235)]
    peak = float(np.bincount(soft).argmax()) if soft.size else 128.0
    hu_per_grey = WINDOW_WIDTH_HU / 255.0
    hu = (BRAIN_HU + (stack.astype(np.float32) - peak) * hu_per_grey).astype(np.float32)
    hu[stack == 0] = -1000.0
    hu[stack == 255] = 1000.0
    return hu


def _tile(grey: np.ndarray, mask: np.ndarray) -> Image.Image:
    """The slice in grey with the mask's outline in green and a faint fill."""
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    rgb[mask, 1] = rgb[mask, 1] * 0.75 + 64
    edge = mask & ~(
        np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
    )
    edge |= np.roll(edge, 1, 0) | np.roll(edge, 1, 1)
    rgb[edge] = (40, 255, 40)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).resize((TILE, TILE), Image.BILINEAR)


def montage(patients: list[str], levels: tuple[float, ...], images: Path = IMAGES) -> Image.Image:
    """One row per patient, one column per relative level (0 = first slice, 1 = last)."""
    sheet = Image.new("RGB", (TILE * len(levels), (TILE + 16) * len(patients)), "black")
    draw = ImageDraw.Draw(sheet)
    for row, patient in enumerate(patients):
        stack = read_stack(patient, images)
        volume = CTVolume.from_array(grey_to_hu(stack), spacing_mm=(SLICE_MM, PIXEL_MM, PIXEL_MM))
        mask = intracranial_space(volume).mask()
        for col, level in enumerate(levels):
            k = min(stack.shape[0] - 1, round(level * (stack.shape[0] - 1)))
            y = row * (TILE + 16)
            sheet.paste(_tile(stack[k], mask[k]), (col * TILE, y + 16))
            draw.text((col * TILE + 4, y + 2), f"patient {patient} slice {k + 1}/{stack.shape[0]}", fill="white")
    return sheet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", default="0001,0013,0042")
    parser.add_argument("--levels", default="0.0,0.1,0.2,0.5,0.8,0.95")
    parser.add_argument("--images", type=Path, default=IMAGES)
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "bench" / "anatomy-montage.png")
    args = parser.parse_args()
    levels = tuple(float(v) for v in args.levels.split(","))
    sheet = montage(args.patients.split(","), levels, args.images)
    # 64 colours: grey levels plus the green overlay; keeps the committed PNG small.
    sheet.quantize(colors=64, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} kB)")


if __name__ == "__main__":
    main()
