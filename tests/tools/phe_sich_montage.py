"""Show and check the PHE-SICH hematoma derivation; read the 8-bit window off the data.

    PYTHONPATH=$PWD .venv/bin/python -m tests.tools.phe_sich_montage \
        --data ../shared/data/phe-sich-ct-ids --out tests/figures/phe_sich_derivation.png

Writes a small montage (edema ring green, box yellow, derived clot red) of
boxed slices picked across patients, and prints what checks the derivation
against the source annotations over every patient:

* boxed slices that get a clot, and clot area per boxed slice;
* clot pixels lying on the drawn ring (should be none: the ring is edema);
* on slices with a drawn ring, the share of clot within the ring's extent (its
  bounding box grown by 3 pixels): the ring bounds the clot;
* clot pixels outside every box (none, by construction: a guard);
* unboxed slices (no clot by construction) - counted for the record;
* the window: the grey-level comb and the CSF/parenchyma peaks (see
  :mod:`dicom_node.training.phe_sich`).

Nothing is written but the montage; no data or masks go into the repository.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from dicom_node.imaging.morphology import erode_in_plane, fill_holes_2d, largest_component
from dicom_node.training.phe_sich import PheSich, PheStack, estimate_window, measure_window

TILE = 192


def _tile(stack: PheStack, k: int) -> np.ndarray:
    """One slice as RGB around its first box, with ring, box and clot drawn."""
    grey = np.clip((stack.hu[k] + 20.0) / 120.0 * 255.0, 0, 255).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    rgb[stack.edema[k]] = (0.5 * rgb[stack.edema[k]] + [0, 110, 0]).astype(np.uint8)
    clot_edge = stack.hematoma[k] & ~(np.roll(stack.hematoma[k], 1, 0) & np.roll(stack.hematoma[k], 1, 1))
    rgb[clot_edge] = [255, 40, 40]
    for r0, c0, r1, c1 in stack.boxes[k]:
        rgb[r0:r1, [c0, c1 - 1]] = [255, 220, 0]
        rgb[[r0, r1 - 1], c0:c1] = [255, 220, 0]
    r0, c0, r1, c1 = stack.boxes[k][0]
    cy, cx = (r0 + r1) // 2, (c0 + c1) // 2
    half = max(48, max(r1 - r0, c1 - c0))
    crop = rgb[max(cy - half, 0) : cy + half, max(cx - half, 0) : cx + half]
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((TILE, TILE), Image.Resampling.NEAREST))


def _intracranial(hu: np.ndarray) -> np.ndarray:
    """A rough brain mask for reading the window: inside the largest bone ring, eroded. (Check only.)"""
    bone = hu >= 1000
    inside = fill_holes_2d(largest_component(bone)) & ~bone if bone.any() else np.zeros_like(bone)
    return erode_in_plane(inside[None], 6)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tiles", type=int, default=12)
    args = parser.parse_args()

    dataset = PheSich.open(args.data)
    boxed = with_clot = on_ring = outside_box = ringed = ring_touch = unboxed = 0
    clot_area: list[int] = []
    picks: list[np.ndarray] = []
    grey_all = np.zeros(256)
    peaks: list[tuple[float, float]] = []
    windows: list[tuple[float, float]] = []
    patients = dataset.patients()
    step = max(1, len(patients) // args.tiles)
    for number, patient in enumerate(patients):
        stack = dataset.stack(patient)
        grey = dataset.grey(patient)
        grey_all += np.bincount(grey.ravel(), minlength=256)
        windows.append(measure_window(grey))
        middle = slice(len(grey) * 2 // 5, len(grey) * 7 // 10)
        try:
            mask = np.stack([_intracranial(h) for h in stack.hu[middle]])
            peaks.append(estimate_window(grey[middle], mask))
        except ValueError:
            pass
        in_box = np.zeros(stack.hu.shape, dtype=bool)
        for k, boxes in enumerate(stack.boxes):
            for r0, c0, r1, c1 in boxes:
                in_box[k, r0:r1, c0:c1] = True
        outside_box += int((stack.hematoma & ~in_box).sum())
        for k in range(len(stack.boxes)):
            if not stack.boxes[k]:
                unboxed += 1
                continue
            boxed += 1
            clot = stack.hematoma[k]
            on_ring += int((clot & stack.edema[k]).sum())
            if clot.any():
                with_clot += 1
                clot_area.append(int(clot.sum()))
                if stack.edema[k].any():
                    ringed += int(clot.sum())
                    rows, cols = np.nonzero(stack.edema[k])
                    bounded = np.zeros_like(clot)
                    bounded[max(rows.min() - 3, 0) : rows.max() + 4, max(cols.min() - 3, 0) : cols.max() + 4] = True
                    ring_touch += int((clot & bounded).sum())
        if number % step == 0 and len(picks) < args.tiles:
            ks = [k for k in range(len(stack.boxes)) if stack.boxes[k]]
            if ks:
                picks.append(_tile(stack, ks[len(ks) // 2]))

    print(f"patients {len(patients)}; boxed slices {boxed}, unboxed {unboxed}")
    print(f"boxed slices with a derived clot: {with_clot} ({with_clot / max(boxed, 1):.1%})")
    print(f"clot area per such slice (source pixels): median {np.median(clot_area):.0f}, "
          f"p10 {np.percentile(clot_area, 10):.0f}, p90 {np.percentile(clot_area, 90):.0f}")
    print(f"clot pixels on the drawn edema ring: {on_ring}; outside every box: {outside_box}")
    print(f"clot on slices with a ring that lies within the ring's extent (+3 px): {ring_touch / max(ringed, 1):.1%}")
    widths = sorted({round(w[1] - w[0]) for w in windows})
    print("measured windows (lower..upper HU: stacks): " + ", ".join(
        f"{lo:.0f}..{hi:.0f}: {n}" for (lo, hi), n in sorted(Counter(windows).items())))
    print(f"widths: {widths}")
    if peaks:
        lows, highs = np.array([p[0] for p in peaks]), np.array([p[1] for p in peaks])
        print(f"window from CSF/parenchyma peaks over {len(peaks)} patients: lower median {np.median(lows):.1f} HU "
              f"(IQR {np.percentile(lows, 25):.1f}..{np.percentile(lows, 75):.1f}), upper median "
              f"{np.median(highs):.1f} HU (a rougher, independent reading of the same window)")
    rows = [np.concatenate(picks[i : i + 6], axis=1) for i in range(0, len(picks) - len(picks) % 6 or len(picks), 6)]
    from PIL import Image

    args.out.parent.mkdir(parents=True, exist_ok=True)
    # A palette of 64 colours keeps the committed PNG small; the picture loses nothing visible.
    Image.fromarray(np.concatenate(rows, axis=0)).quantize(colors=64).save(args.out, optimize=True)
    print(f"montage: {args.out}")


if __name__ == "__main__":
    main()
