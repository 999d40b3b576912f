"""Issue 12's figures: each anonymised-export case's outcome, and last instance -> last result for 238 slices.

What it runs
    ``dicom-node run`` on ``config/dicom-node.toml`` as shipped (the example's quiet
    period of 30 s included, unless ``--quiet-period`` says otherwise; ports and the
    destination are set through ``DICOM_NODE_`` variables, see
    :mod:`tests.support.example_node`), a DCMTK storescp as the PACS, and DCMTK
    storescu sending each case of :mod:`tests.support.anonymised_export` over one
    association, one case at a time:

    * the CI corpus (40 slices of 5 mm: positive with mixed transfer syntaxes and a
      stray slice of another patient, negative JPEG Lossless), and the positive phantom
      under a SeriesDescription that names the chest (the header wins: skipped);
    * issue 12's export at full size: 238 JPEG Lossless slices of 0.625 mm, 8.5° tilt,
      no Frame of Reference, blank descriptions, a missing slice and a stray slice,
      ``--runs`` times (fresh UIDs each run).

What it measures
    The clock starts when storescu exits (every instance acknowledged, association
    released) and stops at the modification time of the last result file storescp
    wrote for the main study (SR, SEG and key images: storescp writes, then answers).
    ``excl. quiet`` takes the configured quiet period off. Each run's split, from the
    node's database: ``complete`` (acknowledged -> study complete: the quiet period plus
    the completion scan's interval, 5 s in the example), ``dispatch`` (-> job started),
    ``job`` (-> job finished; its stages follow: load, which includes the head check
    from the image, infer, build, write) and ``send`` (-> last result written). The
    acceptance target is
    every result at the destination within 2 minutes, each with dciodvfy 0 errors;
    dciodvfy runs after the clock stopped.

Run it from the top of the checkout::

    PYTHONPATH=$PWD .venv/bin/python -m tests.bench.anonymised_export
    PYTHONPATH=$PWD .venv/bin/python -m tests.bench.anonymised_export --runs 1 --quiet-period 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.dciodvfy import run_dciodvfy
from tests.support.anonymised_export import ExportCase, corpus, non_head_case, send_folder, timing_case, write_export
from tests.support.example_node import EXAMPLE_CONFIG, ExampleNode, JobRow
from tests.support.node import NODE_AE
from tests.support.peers import StoreSCP

FINAL_STATES = {"succeeded", "dead", "cancelled", "skipped"}
RESULT_TIMEOUT_S = 900.0
POLL_S = 0.05
TARGET_S = 120.0
#: UIDs make a reason too long for a table row; the case and role already name the study.
_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")


class BenchmarkError(RuntimeError):
    """A peer did not start, storescu failed, or a study did not settle in time."""


@dataclass
class StudyOutcome:
    """What became of one study of a case."""

    role: str  # main | stray
    job: JobRow | None
    segs: int = 0
    srs: int = 0
    key_images: int = 0
    dciodvfy_errors: int = 0


@dataclass
class CaseRun:
    """One case sent once."""

    case: ExportCase
    seconds_to_last_result: float | None
    outcomes: list[StudyOutcome] = field(default_factory=list)
    #: where the time went: acknowledged -> study complete -> job started -> job finished -> last result
    split: dict[str, float] = field(default_factory=dict)


def _studies(case: ExportCase) -> list[tuple[str, str]]:
    studies = [("main", case.spec.study_instance_uid)]
    if case.stray is not None:
        studies.append(("stray", case.stray.study_instance_uid))
    return studies


def _settled(node: ExampleNode, pacs: StoreSCP, uids: list[str]) -> bool:
    jobs = node.jobs()
    return all(
        (job := jobs.get(uid)) is not None
        and job.state in FINAL_STATES
        and len(pacs.results_of(uid).files) >= job.deliveries
        for uid in uids
    )


def run_case(node: ExampleNode, pacs: StoreSCP, case: ExportCase, scratch: Path) -> CaseRun:
    written = write_export(case, scratch / case.name)  # not timed
    sent = send_folder(node.port, written.folder, NODE_AE)
    acknowledged = time.time()
    if sent.returncode != 0:
        raise BenchmarkError(f"storescu exited with {sent.returncode}:\n{sent.stderr[-3000:]}")
    uids = [uid for _, uid in _studies(case)]
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while not _settled(node, pacs, uids):
        if node.process is not None and node.process.poll() is not None:
            raise BenchmarkError(f"the node exited with {node.process.returncode}:\n{node.log()[-3000:]}")
        if time.monotonic() > deadline:
            raise BenchmarkError(f"{case.name} did not settle within {RESULT_TIMEOUT_S:.0f} s: {node.jobs()}")
        time.sleep(POLL_S)
    jobs = node.jobs()
    main = pacs.results_of(case.spec.study_instance_uid)
    last = max((path.stat().st_mtime for path in main.files), default=None)
    run = CaseRun(case, None if last is None else last - acknowledged)
    job = jobs.get(case.spec.study_instance_uid)
    if last is not None and job is not None and None not in (job.completed_at, job.started_at, job.finished_at):
        run.split = {
            "complete": job.completed_at - acknowledged,  # type: ignore[operator]
            "dispatch": job.started_at - job.completed_at,  # type: ignore[operator]
            "job": job.finished_at - job.started_at,  # type: ignore[operator]
            "send": last - job.finished_at,  # type: ignore[operator]
        }
    for role, uid in _studies(case):
        got = pacs.results_of(uid)
        errors = sum(len(run_dciodvfy(path).errors) for path in got.files)
        run.outcomes.append(StudyOutcome(role, jobs.get(uid), len(got.segs), len(got.srs), len(got.key_images), errors))
    return run


def _reason(job: JobRow | None) -> str:
    if job is None:
        return "no job"
    text = job.reason or job.last_error or job.warnings or ""
    if job.state == "succeeded" and not text:
        summary = job.summary
        text = (
            f"{'hemorrhage' if summary.get('hemorrhage') else 'no hemorrhage'}, p={summary.get('probability')}, "
            f"{summary.get('lesions')} lesion(s), {summary.get('total_volume_ml')} mL"
        )
    return _UID.sub("<uid>", " ".join(text.split()))[:100]


def print_report(runs: list[CaseRun], args: argparse.Namespace, quiet_s: float) -> None:
    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs (load average {load[0]:.1f} at the end: shared with other work, so "
        f"figures are pessimistic), Python {platform.python_version()}"
    )
    print(
        f"node: config/dicom-node.toml as shipped; quiet period {quiet_s:g} s, model and device as configured "
        f"({args.device_note}); storescu -xf (one context per transfer syntax) -> dicom-node run -> storescp"
    )
    print()
    header = f"{'case':<15} {'study':<5} {'slices':>6} {'job':<10} {'tries':>5} {'SEG':>3} {'SR':>3} {'KI':>3} {'dciodvfy':>8}  reason / call"
    print(header)
    print("-" * len(header))
    seen: set[str] = set()
    for run in runs:
        if run.case.name in seen:
            continue
        seen.add(run.case.name)
        for outcome in run.outcomes:
            job = outcome.job
            slices = run.case.sent_slices if outcome.role == "main" else 1
            print(
                f"{run.case.name:<15} {outcome.role:<5} {slices:>6} {job.state if job else '-':<10} "
                f"{job.attempts if job else 0:>5} {outcome.segs:>3} {outcome.srs:>3} {outcome.key_images:>3} "
                f"{outcome.dciodvfy_errors:>8}  {_reason(job)}"
            )
    print()
    timed = [run for run in runs if run.case.spec.n_slices == 238]
    seconds = [run.seconds_to_last_result for run in timed if run.seconds_to_last_result is not None]
    print("last instance acknowledged -> last result written at the destination, 238 slices of 0.625 mm:")
    for n, run in enumerate(timed, start=1):
        value = run.seconds_to_last_result
        main = run.outcomes[0].job
        stages = dict(main.summary.get("timings_s", {})) if main else {}  # type: ignore[call-overload]
        split = ", ".join(f"{name} {float(seconds):.1f}" for name, seconds in stages.items())
        print(
            f"  run {n}: "
            + ("no result arrived" if value is None else f"{value:6.1f} s (excl. quiet {value - quiet_s:6.1f} s)")
            + (f"\n         " + ", ".join(f"{k} {v:.1f}" for k, v in run.split.items()) if run.split else "")
            + (f"; job stages: {split}" if split else "")
        )
    if seconds and len(seconds) == len(timed):
        median = statistics.median(seconds)
        verdict = "met" if median <= TARGET_S and all(o.dciodvfy_errors == 0 for r in timed for o in r.outcomes) else "NOT met"
        print(f"  median {median:.1f} s; target: SR + SEG + key images within {TARGET_S:.0f} s, dciodvfy 0 errors: {verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of the 238-slice case (median reported)")
    parser.add_argument("--quiet-period", type=float, default=None, help="override the example's quiet period (s)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="override [analysis] device")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def run_benchmark(args: argparse.Namespace) -> tuple[list[CaseRun], float]:
    example = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    quiet_s = args.quiet_period if args.quiet_period is not None else float(example["completion"]["quiet_period_s"])
    args.device_note = f"{example['analysis']['model']} on {args.device or example['analysis']['device']}"
    overrides = {"DICOM_NODE_ANALYSIS__DEVICE": args.device} if args.device else {}
    runs: list[CaseRun] = []
    with tempfile.TemporaryDirectory(prefix="dicom-node-export-") as tmp:
        scratch = Path(tmp)
        pacs = StoreSCP(scratch / "pacs").start()
        node = ExampleNode(scratch / "node", ("DEST", pacs.port), quiet_period_s=args.quiet_period, overrides=overrides)
        try:
            node.start()
            cases = corpus() + [non_head_case()] + [timing_case(f"timing-238-run{n}", seed=10 + n) for n in range(1, args.runs + 1)]
            for case in cases:
                run = run_case(node, pacs, case, scratch)
                took = "-" if run.seconds_to_last_result is None else f"{run.seconds_to_last_result:.1f} s"
                print(f"{case.name}: {[o.job.state if o.job else None for o in run.outcomes]}, last result after {took}",
                      file=sys.stderr, flush=True)
                runs.append(run)
        finally:
            node.stop()
            pacs.stop()
    return runs, quiet_s


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs, quiet_s = run_benchmark(args)
    except (BenchmarkError, AssertionError) as exc:  # AssertionError: a start-up check of a test helper
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    print_report(runs, args, quiet_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
