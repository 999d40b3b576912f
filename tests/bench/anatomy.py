"""The intracranial space: time per study and accuracy on phantoms of known geometry.

What it measures
    :func:`dicom_node.imaging.anatomy.intracranial_space` on synthetic heads from
    the neck to the vertex (tests/support/synthetic_ct.py, ``Anatomy``), each
    generated once: wall time and CPU time (median of ``--runs`` runs after one
    warm-up), and the Dice of the mask against the exact inside of the skull,
    and how much of the mask lies outside the skull (neck, pharynx, cord, scalp).
    The budget is 2 s for 240 slices of 512x512 on 2 CPU cores.

Run it from the top of the checkout::

    .venv/bin/python -m tests.bench.anatomy
    .venv/bin/python -m tests.bench.anatomy --runs 5 --cases 240x512
"""

from __future__ import annotations

import argparse
import statistics
import time

from dicom_node.imaging.anatomy import intracranial_space
from dicom_node.imaging.volume import CTVolume
from tests.support.synthetic_ct import Anatomy, SeriesSpec, anatomical_volume

#: name -> SeriesSpec arguments; 240x512 is the budget case (0.625 mm slices, 150 mm of head and neck).
CASES: dict[str, dict] = {
    "240x512": dict(n_slices=240, slice_thickness_mm=0.625, anatomy=Anatomy(head_centre_z_mm=-10.0)),
    "34x512 5mm": dict(n_slices=34, slice_thickness_mm=5.0, anatomy=Anatomy()),
    "34x512 tilt 20": dict(n_slices=34, slice_thickness_mm=5.0, gantry_tilt_deg=20.0, anatomy=Anatomy()),
    "34x512 craniectomy": dict(n_slices=34, slice_thickness_mm=5.0, anatomy=Anatomy(craniectomy_deg=70.0)),
}


def _measure(name: str, runs: int) -> dict:
    spec = SeriesSpec(rows=512, columns=512, pixel_spacing_mm=(0.45, 0.45), **CASES[name])
    hu, _, truth = anatomical_volume(spec)
    volume = CTVolume.from_array(hu, spacing_mm=(spec.slice_thickness_mm, *spec.pixel_spacing_mm))
    intracranial_space(volume)
    walls, cpus = [], []
    for _ in range(runs):
        wall, cpu = time.perf_counter(), time.process_time()
        space = intracranial_space(volume)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    mask = space.mask()
    return {
        "case": name,
        "shape": "x".join(str(s) for s in hu.shape),
        "wall_s": statistics.median(walls),
        "cpu_s": statistics.median(cpus),
        "dice": 2 * float((mask & truth).sum()) / float(mask.sum() + truth.sum()),
        "outside": float((mask & ~truth).sum()) / float(truth.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES))
    args = parser.parse_args()
    print("| case | shape | wall s (median) | CPU s (median) | Dice | mask outside the skull (fraction of the true volume) |")
    print("|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        row = _measure(name, args.runs)
        print(
            f"| {row['case']} | {row['shape']} | {row['wall_s']:.2f} | {row['cpu_s']:.2f} | "
            f"{row['dice']:.3f} | {row['outside']:.4f} |"
        )


if __name__ == "__main__":
    main()
