"""Wall time of the configured default model on one 240-slice 512x512 head CT.

What it measures
    The model the example config (``config/dicom-node.toml``) builds, exactly as
    the worker builds it (``dicom_node.models.loading.load_configured_model``: the classifier and segmenter
    runners, the anatomy gate, the combination rule), predicting one phantom
    study of ``--slices`` slices of 512x512 HU with skull base, neck and one
    lesion (0.625 mm slices by default, as a thin-slice scanner delivers them).
    The volume is assembled before the clock starts: the figure is the
    analysis, from HU volume to ModelResult, the part the 30 s target bounds.
    One warm-up run, then ``--runs`` timed runs; the median is reported with the
    load average before and after, because on a shared host the figure is only
    meaningful next to it.

Run it from the top of the checkout::

    .venv/bin/python -m tests.bench.default_study --runs 3 --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "dicom-node.toml"


def _volume(slices: int, thickness_mm: float):  # type: ignore[no-untyped-def]
    """The phantom head and the one lesion planted in it."""
    from dicom_node.imaging.volume import assemble_volume
    from tests.support.synthetic_ct import Anatomy, Lesion, SeriesSpec, series_datasets

    lesion = Lesion(center_mm=(20.0, 10.0, 30.0), radius_mm=10.0)
    spec = SeriesSpec(
        n_slices=slices,
        slice_thickness_mm=thickness_mm,
        anatomy=Anatomy(head_centre_z_mm=20.0),
        lesions=[lesion],
    )
    return assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid), lesion


def _segmenter_folder(settings) -> Path | None:  # type: ignore[no-untyped-def]
    """The segmenter folder the worker loads: ``unet_dir``/``maskrcnn_dir``, else the shipped default."""
    from dicom_node.models.registry import shipped_model_dir

    segmenter = settings.analysis.model.split("+")[-1]
    if segmenter not in ("unet", "maskrcnn"):
        return None
    configured = settings.analysis.unet_dir if segmenter == "unet" else settings.analysis.maskrcnn_dir
    return configured or shipped_model_dir(segmenter)


def _finding_line(result, lesion) -> str:  # type: ignore[no-untyped-def]
    """The largest finding next to the planted lesion: volume (a sphere's) and centroid distance."""
    import math

    planted_ml = 4 / 3 * math.pi * lesion.radius_mm**3 / 1000
    if not result.findings:
        return f"no finding (planted {planted_ml:.2f} mL)"
    largest = max(result.findings, key=lambda finding: finding.volume_ml)
    where = largest.centroid_patient_mm
    distance = "n/a" if where is None else f"{math.dist(where, lesion.center_mm):.1f} mm"
    return (
        f"largest {largest.volume_ml:.2f} mL (planted {planted_ml:.2f} mL), "
        f"centroid {distance} from the planted centre"
    )


def main() -> None:
    """Time the configured model and print its call next to the planted lesion."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=240)
    parser.add_argument("--thickness-mm", type=float, default=0.625)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--config", type=Path, default=CONFIG)
    args = parser.parse_args()

    import torch

    from dicom_node.config import load_settings
    from dicom_node.models.loading import load_configured_model

    torch.set_num_threads(args.threads)
    settings = load_settings(args.config)
    model = load_configured_model(settings.analysis).model
    volume, lesion = _volume(args.slices, args.thickness_mm)
    load_before = os.getloadavg()
    result = model.predict(volume)  # warm-up
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        result = model.predict(volume)
        times.append(time.perf_counter() - started)
    load_after = os.getloadavg()
    print(f"model: {settings.analysis.model} ({settings.analysis.combination}), {args.threads} torch threads")
    print(f"segmenter folder: {_segmenter_folder(settings)}")
    print(f"study: {volume.hu.shape[0]} x {volume.hu.shape[1]} x {volume.hu.shape[2]}")
    print(f"seconds: median {statistics.median(times):.1f} (runs: {', '.join(f'{t:.1f}' for t in times)})")
    findings = f"{len(result.findings)} finding(s); {_finding_line(result, lesion)}"
    print(f"call: p={result.study_probability:.2f}, {findings}")
    print(f"load average before {load_before[0]:.2f}/{load_before[1]:.2f}, after {load_after[0]:.2f}/{load_after[1]:.2f}")


if __name__ == "__main__":
    main()
