"""End-to-end latency: last CT instance acknowledged -> last result object acknowledged.

What it measures
    DCMTK's ``/usr/bin/storescu`` sends a synthetic positive head CT (512×512 int16,
    one planted lesion) to ``dicom-node run`` on loopback. The clock starts when
    storescu exits (every instance acknowledged, association released) and stops when
    the destination, a DCMTK storescp started by the benchmark, has written the last
    result object (SEG, SR and key images; storescp writes a file, then answers). The
    arrival time is the newest modification time among the study's result files,
    found by polling storescp's folder (``+uf`` unique file names).

The split, all on this machine's clock
    quiet     the configured quiet period (a study is complete once nothing arrived
              for this long; product default 30 s, short here so it does not dominate)
    scan      study completed_at - storescu exit - quiet: completion scan granularity
              (scan interval) plus the commit of the completion
    dispatch  job started_at - study completed_at: the worker's dispatch tick
    load, infer, build, write
              the job's stage timings (``timings_s`` in the job summary, the same
              numbers ``dicom-node jobs show`` prints)
    record    job finished_at - started_at - the four stages: the outbox rows and the
              job's commit
    send      last result file written - job finished_at: outbox tick + C-STORE of
              every result object
    total     last result file written - storescu exit
    excl. quiet  total - quiet, the figure the goal is stated in

Each column is a median over the runs on its own, so the columns need not add up
exactly to the median total. Timestamps of the node come from its database (naive UTC,
microseconds). One node and one storescp serve every run; a warm-up study (not
reported) goes first so that the figures are those of a running node, not of its first
job after start. Runs are interleaved over the slice counts to spread machine noise.

Run it from the top of the checkout::

    .venv/bin/python -m tests.bench.e2e                       # 40 and 300 slices, 3 runs, CPU
    .venv/bin/python -m tests.bench.e2e --slices 40 --runs 5
    .venv/bin/python -m tests.bench.e2e --device cuda         # on a machine with a GPU
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from tests.support.node import NODE_AE, NodeConfig, NodeProcess
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

STORESCU = Path("/usr/bin/storescu")  # not the venv's pynetdicom `storescu` (see ../shared/NOTES.md)
SENDER_AE = "STORESCU"
DESTINATION_AE = "DEST"  # what tests/support/peers.py StoreSCP answers to
SEND_TIMEOUT_S = 600.0
RESULT_TIMEOUT_S = 900.0
POLL_S = 0.02
LESION = Lesion(center_mm=(25.0, 10.0, 0.0), radius_mm=9.0)
GOAL = "goal: <= 15 s on 2 CPU cores for 40 slices excluding the quiet period; <= 3 s on a GPU"
GOAL_CPU_S, GOAL_GPU_S = 15.0, 3.0
COMPARISON = "published open PACS->nnU-Net->PACS pipeline: 5 min 32 s"
COLUMNS = ("quiet", "scan", "dispatch", "load", "infer", "build", "write", "record", "send", "total", "excl_quiet")


class BenchmarkError(RuntimeError):
    """A peer failed to start, the node failed the job, or results did not arrive in time."""


@dataclass
class Run:
    """One study's trip, every figure in seconds."""

    slices: int
    figures: dict[str, float]
    model: str
    results: int


def peer_env() -> dict[str, str]:
    """Nagle off for DCMTK (Debian's stalls about 80 ms per C-STORE otherwise)."""
    return {**os.environ, "TCP_NODELAY": "1"}


def send_series(series_dir: Path, port: int) -> None:
    command = [str(STORESCU), "-aet", SENDER_AE, "-aec", NODE_AE, "127.0.0.1", str(port), "+sd", str(series_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=peer_env(), timeout=SEND_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise BenchmarkError(f"storescu exited with {done.returncode}:\n{done.stderr[-4000:]}")


def epoch(value: str | None) -> float | None:
    """A naive-UTC timestamp from the node's database as seconds since the epoch."""
    if value is None:
        return None
    return datetime.datetime.fromisoformat(value).replace(tzinfo=datetime.UTC).timestamp()


@dataclass(frozen=True)
class JobRecord:
    """What the node's database says about the study's job."""

    state: str
    last_error: str | None
    summary: dict[str, object]
    last_received_at: float
    completed_at: float | None
    started_at: float | None
    finished_at: float | None
    deliveries: int  # result objects queued for the destination


class NodeDatabase:
    """Read-only look at the node's SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def job(self, study_instance_uid: str) -> JobRecord | None:
        with sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10) as db:
            row = db.execute(
                "SELECT job.id, job.state, job.last_error, job.summary, study.last_received_at, study.completed_at,"
                " job.started_at, job.finished_at FROM job JOIN study ON study.id = job.study_id"
                " WHERE study.study_instance_uid = ? ORDER BY job.id DESC LIMIT 1",
                (study_instance_uid,),
            ).fetchone()
            if row is None:
                return None
            (deliveries,) = db.execute(
                "SELECT count(*) FROM delivery JOIN output_object ON output_object.id = delivery.output_id"
                " WHERE output_object.job_id = ? AND delivery.state != 'cancelled'",
                (row[0],),
            ).fetchone()
        return JobRecord(
            state=row[1],
            last_error=row[2],
            summary=json.loads(row[3]) if row[3] else {},
            last_received_at=epoch(row[4]) or 0.0,
            completed_at=epoch(row[5]),
            started_at=epoch(row[6]),
            finished_at=epoch(row[7]),
            deliveries=int(deliveries),
        )


class ResultFolder:
    """storescp's output folder: which files belong to which study, and when they were written."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.study_of: dict[Path, str] = {}

    def files_of(self, study_instance_uid: str) -> list[Path]:
        for path in self.folder.iterdir():
            if path in self.study_of or not path.is_file():
                continue
            try:
                self.study_of[path] = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
            except (InvalidDicomError, OSError, AttributeError, EOFError, ValueError):
                pass  # still being written: read it on the next poll
        return [path for path, uid in self.study_of.items() if uid == study_instance_uid]


def wait_for_results(
    node: NodeProcess, db: NodeDatabase, folder: ResultFolder, study_instance_uid: str
) -> tuple[JobRecord, list[Path]]:
    """Poll until the job succeeded and every result it queued reached the destination."""
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    job: JobRecord | None = None
    while time.monotonic() < deadline:
        if node.process is not None and node.process.poll() is not None:
            raise BenchmarkError(f"the node exited with {node.process.returncode}:\n{node.log()[-3000:]}")
        files = folder.files_of(study_instance_uid)
        if job is None or job.state != "succeeded":
            job = db.job(study_instance_uid)
            if job is not None and job.state in ("dead", "cancelled"):
                raise BenchmarkError(f"job {job.state}: {job.last_error}")
        if job is not None and job.state == "succeeded" and len(files) >= job.deliveries > 0:
            return job, files
        time.sleep(POLL_S)
    raise BenchmarkError(
        f"results of {study_instance_uid} did not arrive within {RESULT_TIMEOUT_S:.0f} s "
        f"(job: {job}, files: {len(folder.files_of(study_instance_uid))})"
    )


def measure(
    node: NodeProcess, db: NodeDatabase, folder: ResultFolder, spec: SeriesSpec, series_dir: Path, quiet_s: float
) -> Run:
    send_series(series_dir, node.config.port)
    acked = time.time()
    job, files = wait_for_results(node, db, folder, spec.study_instance_uid)
    arrived = max(path.stat().st_mtime for path in files)
    assert job.completed_at is not None and job.started_at is not None and job.finished_at is not None
    timings = {k: float(v) for k, v in dict(job.summary.get("timings_s", {})).items()}  # type: ignore[call-overload]
    stages = {name: timings.get(name, float("nan")) for name in ("load", "infer", "build", "write")}
    figures = {
        "quiet": quiet_s,
        "scan": job.completed_at - acked - quiet_s,
        "dispatch": job.started_at - job.completed_at,
        **stages,
        "record": job.finished_at - job.started_at - sum(stages.values()),
        "send": arrived - job.finished_at,
        "total": arrived - acked,
        "excl_quiet": arrived - acked - quiet_s,
    }
    return Run(spec.n_slices, figures, str(job.summary.get("model", "?")), len(files))


def tool_version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def print_report(runs: list[Run], args: argparse.Namespace) -> None:
    models = sorted({run.model for run in runs})
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {tool_version([str(STORESCU), '--version'])}; "
        f"analysis device {args.device}, model {', '.join(models)}"
    )
    print(
        f"workload: synthetic positive head CT 512x512 int16, one lesion; storescu +sd -> dicom-node run -> storescp "
        f"(TCP_NODELAY=1); quiet period {args.quiet_period:g} s, scan interval {args.scan_interval:g} s, "
        f"dispatch and outbox ticks 0.5 s; median of {args.runs} run(s) after {args.warmup} warm-up study"
    )
    print()
    header = (
        f"{'slices':>6} | {'objs':>4} | "
        + " | ".join(f"{name.replace('_', ' '):>{max(6, len(name))}}" for name in COLUMNS)
        + " | runs excl. quiet (s)"
    )
    print(header)
    print("-" * len(header))
    for slices in args.slices:
        mine = [run for run in runs if run.slices == slices]
        medians = {name: statistics.median(run.figures[name] for run in mine) for name in COLUMNS}
        cells = " | ".join(f"{medians[name]:>{max(6, len(name))}.2f}" for name in COLUMNS)
        each = ", ".join(f"{run.figures['excl_quiet']:.2f}" for run in mine)
        print(f"{slices:>6} | {mine[0].results:>4} | {cells} | {each}")
    print()
    print(GOAL)
    forty = [run.figures["excl_quiet"] for run in runs if run.slices == 40]
    if forty:
        goal_s = GOAL_GPU_S if args.device == "cuda" else GOAL_CPU_S
        median_40 = statistics.median(forty)
        verdict = "met" if median_40 <= goal_s else "NOT met"
        print(
            f"40 slices on {args.device}, {os.cpu_count()} CPUs: {median_40:.2f} s excluding the quiet period "
            f"(goal {goal_s:g} s): {verdict}"
        )
    print(f"comparison: {COMPARISON}")
    print("columns: seconds; each a median on its own (see the module docstring for what each spans)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per slice count (median reported)")
    parser.add_argument("--slices", default="40,300", help="comma-separated slice counts (512x512 each)")
    parser.add_argument("--quiet-period", type=float, default=2.0, help="node quiet period in seconds")
    parser.add_argument("--scan-interval", type=float, default=0.25, help="node completion scan interval in seconds")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu", help="[analysis] device")
    parser.add_argument(
        "--model", default="classifier+unet", help="[analysis] model (default: the product default, classifier+unet)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unreported 40-slice studies sent first")
    args = parser.parse_args(argv)
    try:
        args.slices = [int(s) for s in args.slices.split(",") if s.strip()]
    except ValueError:
        parser.error("--slices: comma-separated integers, e.g. 40,300")
    if not args.slices or min(args.slices) < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--slices and --runs must be at least 1, --warmup at least 0")
    if args.quiet_period <= 0 or args.scan_interval <= 0:
        parser.error("--quiet-period and --scan-interval must be positive")
    return args


def run_benchmark(args: argparse.Namespace) -> list[Run]:
    if not STORESCU.exists():
        raise BenchmarkError(f"{STORESCU} missing: install Debian's dcmtk")
    os.environ["TCP_NODELAY"] = "1"  # inherited by the node and storescp
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="dicom-node-e2e-") as tmp:
        scratch = Path(tmp)
        destination = StoreSCP(scratch / "destination")
        node: NodeProcess | None = None
        try:
            destination.start()
            config = NodeConfig(
                workdir=scratch / "node",
                quiet_period_s=args.quiet_period,
                scan_interval_s=args.scan_interval,
                destinations=[("bench", DESTINATION_AE, destination.port, ["seg", "sr", "key_images"])],
                model=args.model,
                device=args.device,
            )
            node = NodeProcess(config)
            try:
                node.start(timeout_s=60)
            except AssertionError as exc:
                raise BenchmarkError(f"dicom-node did not start: {exc}") from exc
            db, folder = NodeDatabase(config.workdir / "node.db"), ResultFolder(destination.folder)
            plan = [(0, 40)] * args.warmup + [(run, n) for run in range(1, args.runs + 1) for n in args.slices]
            for index, (run, slices) in enumerate(plan):
                spec = SeriesSpec(n_slices=slices, lesions=[LESION], seed=index)
                series_dir = scratch / f"series-{index}"
                write_series(spec, series_dir)  # not timed
                result = measure(node, db, folder, spec, series_dir, args.quiet_period)
                shutil.rmtree(series_dir)
                label = "warm-up" if run == 0 else f"run {run}"
                print(
                    f"{label}: {slices:>4} slices: total {result.figures['total']:6.2f} s, "
                    f"excl. quiet {result.figures['excl_quiet']:6.2f} s, {result.results} objects",
                    file=sys.stderr,
                    flush=True,
                )
                if run > 0:
                    runs.append(result)
        finally:
            if node is not None and node.process is not None:
                node.stop()
            destination.stop()
    return runs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = run_benchmark(args)
    except (BenchmarkError, AssertionError) as exc:  # AssertionError: a test helper's start-up check
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    print_report(runs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
