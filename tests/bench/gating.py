"""What the intracranial gate removes from each model's findings on real whole head-CT stacks.

What it measures
    For PHE-SICH-CT-IDS stacks (8-bit brain-windowed PNG, skull base to vertex; see
    tests/bench/anatomy_montage.py for the grey-to-HU mapping used for the space),
    each shipped segmenting model (and the HU threshold baseline, on the mapped HU)
    runs on the whole stack; then the gate. Per model: findings before and after,
    how many were dropped as outside the skull, and their volume. These stacks
    hold one spontaneous bleed each, so a dropped finding is a false one unless it
    overlaps the edema box of the slice (counted separately as "dropped in a box").
    "After" counts the findings measured again after clipping, so a kept finding
    that the skull's edge cuts in two counts twice.

Run it from the top of the checkout (a few minutes on 2 CPU cores)::

    .venv/bin/python -m tests.bench.gating --patients 20
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from dicom_node.imaging.anatomy import intracranial_space
from dicom_node.imaging.volume import CTVolume
from dicom_node.models.gating import gate_result
from dicom_node.models.registry import load_model, shipped_model_dir
from dicom_node.models.runner import Runner
from dicom_node.models.threshold import ThresholdModel, ThresholdParameters
from tests.bench.anatomy_montage import IMAGES, PIXEL_MM, SLICE_MM, grey_to_hu, read_stack

BOXES = IMAGES.parent / "boxes"


def _boxes(patient: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The annotated boxes (clot and edema) as a mask, to tell a dropped true bleed from a false one."""
    mask = np.zeros(shape, dtype=bool)
    for k in range(shape[0]):
        path = BOXES / f"{patient}_{k:02d}.xml"
        if not path.is_file():
            continue
        for box in ET.parse(path).getroot().iter("bndbox"):
            x0, y0, x1, y1 = (int(float(box.find(t).text)) for t in ("xmin", "ymin", "xmax", "ymax"))
            mask[k, y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=20, help="the first N patients, in number order")
    parser.add_argument("--kinds", default="unet,maskrcnn,threshold")
    args = parser.parse_args()
    patients = sorted({p.name[:4] for p in IMAGES.glob("*.png")})[: args.patients]
    models = {}
    for kind in args.kinds.split(","):
        if kind == "threshold":
            models[kind] = ThresholdModel(ThresholdParameters())
        else:
            models[kind] = Runner(load_model(shipped_model_dir(kind), kind=kind), device="cpu")
    totals = {kind: dict(before=0, after=0, dropped=0, dropped_ml=0.0, in_box=0) for kind in models}
    for patient in patients:
        stack = read_stack(patient)
        volume = CTVolume.from_array(grey_to_hu(stack), spacing_mm=(SLICE_MM, PIXEL_MM, PIXEL_MM), real_hu=False)
        space = intracranial_space(volume)
        boxes = _boxes(patient, stack.shape)
        for kind, model in models.items():
            if kind == "threshold":
                result = model.predict(volume)
            else:
                result = model.predict_windowed(stack.astype(np.float32) / 255.0, volume)
            gated = gate_result(result, volume, space)
            kept_labels = gated.label_map != 0
            row = totals[kind]
            row["before"] += len(result.findings)
            row["after"] += len(gated.findings)
            row["dropped"] += gated.gate.dropped
            for finding in result.findings:
                voxels = result.label_map == finding.label
                if not (voxels & kept_labels).any():
                    row["dropped_ml"] += finding.volume_ml
                    row["in_box"] += int((voxels & boxes).any())
            print(
                f"patient {patient} {kind}: {len(result.findings)} finding(s), {gated.gate.dropped} dropped",
                file=sys.stderr,
                flush=True,
            )
    print(f"{len(patients)} PHE-SICH stacks; spacing assumed {PIXEL_MM} mm x {SLICE_MM} mm")
    print("| model | findings before | after | dropped | dropped mL | dropped in a box |")
    print("|---|---|---|---|---|---|")
    for kind, row in totals.items():
        print(
            f"| {kind} | {row['before']} | {row['after']} | {row['dropped']} | "
            f"{row['dropped_ml']:.1f} | {row['in_box']} |"
        )


if __name__ == "__main__":
    main()
