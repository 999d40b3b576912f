"""Inference throughput of each model kind: slices per second and peak memory.

What it measures
    The runner's ``predict`` on a synthetic head CT series (default 32 slices of
    512x512 HU, one 65 HU lesion), end to end as in production: windowing, head
    crop and resize, the network, mapping back to the source grid and the
    post-processing into a ModelResult. For each kind (the default model of each kind
    shipped in dicom_node/models/weights/, and the HU threshold baseline) and each batch
    size, the median of ``--runs`` runs after one warm-up run is reported.

Peak memory
    Each (kind, device) is measured in a fresh child process so that the peaks
    do not mix: ``peak RSS`` is the child's maximum resident set (CPU) and
    ``peak GPU`` torch's ``max_memory_allocated`` (GPU only).

Run it from the top of the checkout::

    .venv/bin/python -m tests.bench.inference                 # CPU, and GPU when there is one
    .venv/bin/python -m tests.bench.inference --slices 64 --batch-sizes 1,8,32 --threads 2
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KINDS = ("threshold", "classifier", "unet", "maskrcnn")


def _volume(slices: int):  # type: ignore[no-untyped-def]
    from dicom_node.imaging.volume import assemble_volume
    from tests.support.synthetic_ct import Lesion, SeriesSpec, series_datasets

    spec = SeriesSpec(n_slices=slices, lesions=[Lesion(center_mm=(20.0, 10.0, 0.0), radius_mm=12.0)])
    return assemble_volume(series_datasets(spec), series_instance_uid=spec.series_instance_uid)


def _measure_one(kind: str, device: str, batch_sizes: list[int], slices: int, runs: int, threads: int | None) -> dict:
    """Runs in the child process: one kind on one device, every batch size."""
    import torch

    from dicom_node.models.threshold import ThresholdModel

    if threads:
        torch.set_num_threads(threads)
    volume = _volume(slices)
    rows: dict[str, float] = {}
    for batch_size in batch_sizes:
        if kind == "threshold":
            model = ThresholdModel()
            predict = model.predict
        else:
            from dicom_node.models.registry import load_model, shipped_model_dir
            from dicom_node.models.runner import Runner

            runner = Runner(load_model(shipped_model_dir(kind)), device=device, batch_size=batch_size)
            predict = runner.predict
        predict(volume)  # warm-up
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            predict(volume)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        rows[str(batch_size)] = slices / statistics.median(times)
        if kind == "threshold":
            rows = {str(b): rows[str(batch_size)] for b in batch_sizes}  # no batches: one figure
            break
    peak_gpu = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    return {
        "kind": kind,
        "device": device,
        "slices_per_s": rows,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mib": peak_gpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--one", nargs=2, metavar=("KIND", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.one:
        print(json.dumps(_measure_one(args.one[0], args.one[1], batch_sizes, args.slices, args.runs, args.threads)))
        return

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    for device in devices:
        for kind in args.kinds.split(","):
            if kind == "threshold" and device != "cpu":
                continue
            command = [sys.executable, "-m", "tests.bench.inference", "--one", kind, device,
                       "--slices", str(args.slices), "--batch-sizes", args.batch_sizes, "--runs", str(args.runs)]
            if args.threads:
                command += ["--threads", str(args.threads)]
            child = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    header = f"{'kind':<11} {'device':<6} " + " ".join(f"{'bs ' + str(b):>9}" for b in batch_sizes)
    header += f" {'peak RSS MiB':>13} {'peak GPU MiB':>13}"
    print(f"{args.slices} slices of 512x512, slices/s (median of {args.runs} runs after a warm-up)")
    print(header)
    print("-" * len(header))
    for r in results:
        speeds = " ".join(f"{r['slices_per_s'][str(b)]:>9.1f}" for b in batch_sizes)
        gpu = "-" if r["peak_gpu_mib"] is None else f"{r['peak_gpu_mib']:.0f}"
        print(f"{r['kind']:<11} {r['device']:<6} {speeds} {r['peak_rss_mib']:>13.0f} {gpu:>13}")


if __name__ == "__main__":
    main()
