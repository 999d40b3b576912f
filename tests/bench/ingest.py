"""Ingest throughput: dicom-node against DCMTK storescp and Orthanc, measured in one run.

What it measures
    DCMTK's ``/usr/bin/storescu`` sends a synthetic CT series (default 300 slices of
    512×512 int16, about 158 MB) over one association to each receiver on loopback.
    The time is the wall clock of the storescu process, so it includes storescu's own
    start-up and file scanning, which is the same for every receiver. Every peer runs
    with ``TCP_NODELAY=1`` (Debian's DCMTK and Orthanc stall about 80 ms per C-STORE
    without it; see ../shared/NOTES.md).

Receivers
    dicom-node      ``dicom-node run`` with product defaults: fsync of the file and its
                    directory, database row committed, then success.
    storescp        DCMTK storescp, writes each file without fsync (DCMTK 3.6.7 has no
                    fsync option).
    storescp-fsync  the same, plus ``/usr/bin/sync FILE`` (an fsync of that file) run
                    synchronously per instance with ``-xcr ... -xs``, before the response.
                    The fork+exec per instance makes this an upper bound on fsync cost.
    orthanc         Orthanc on a temporary configuration, ``SyncStorageArea`` true
                    (fsync of each file), SQLite index, no plugins.

Every receiver is started fresh on empty storage for every run, runs are interleaved
(run 1: each receiver, run 2: each receiver, ...) to spread machine noise, and the
median of the runs is reported. After each send the benchmark checks that the receiver
stored every instance and exits non-zero if one did not.

Run it from the top of the checkout::

    .venv/bin/python -m tests.bench.ingest                    # 300 instances, 3 runs
    .venv/bin/python -m tests.bench.ingest --instances 50 --runs 1 --receivers dicom-node,orthanc

Profiling (see tests/bench/profile.py): ``--profile DIR`` records each dicom-node run with
py-spy into ``DIR/dicom-node-runN.txt`` and prints the per-instance split after each run.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.bench.profile import print_split
from tests.support.node import NODE_AE, NodeConfig, NodeProcess, free_port
from tests.support.orthanc import ORTHANC, Orthanc, OrthancError
from tests.support.synthetic_ct import SeriesSpec, write_series

STORESCU = Path("/usr/bin/storescu")
STORESCP = Path("/usr/bin/storescp")
SYNC = Path("/usr/bin/sync")
SENDER_AE = "STORESCU"
STORESCP_AE = "STORESCP"
ORTHANC_AE = "ORTHANC"
START_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 600.0
GOAL_VS_ORTHANC = 1.2
GOAL_VS_STORESCP = 0.5
PROFILE_RATE_HZ = 250


class BenchmarkError(RuntimeError):
    """A receiver failed to start, refused the data, or stored fewer instances than sent."""


@dataclass(frozen=True)
class Endpoint:
    """Where storescu sends to."""

    ae_title: str
    port: int


class Receiver(Protocol):
    """One C-STORE SCP under test, started fresh in its own directory for each run."""

    name: str

    def start(self) -> Endpoint: ...

    def stored_count(self) -> int: ...

    def stop(self) -> None: ...


def peer_env() -> dict[str, str]:
    """The environment of every child process: Nagle off for DCMTK and Orthanc."""
    return {**os.environ, "TCP_NODELAY": "1"}


def echo_ok(endpoint: Endpoint) -> bool:
    """True when a C-ECHO to ``endpoint`` on loopback succeeds."""
    ae = AE(ae_title=SENDER_AE)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 2
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", endpoint.port, ae_title=endpoint.ae_title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    """Poll ``ready`` until it is true; fail if ``process`` exits or the timeout passes."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"{what} exited with {process.returncode}:\n{tail(log)}")
        if ready():
            return
        time.sleep(0.2)
    raise BenchmarkError(f"{what} not ready within {START_TIMEOUT_S:.0f} s:\n{tail(log)}")


def terminate(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM, then SIGKILL after 30 s; safe to call on a process that has exited."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(log: Path, lines: int = 20) -> str:
    if not log.exists():
        return "(no log)"
    return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def count_files(root: Path, pattern: str = "*", skip: tuple[str, ...] = ()) -> int:
    """Regular files under ``root`` matching ``pattern``, ignoring any path part in ``skip``."""
    return sum(
        1
        for path in root.rglob(pattern)
        if path.is_file() and not any(part in skip for part in path.relative_to(root).parts)
    )


@dataclass
class DicomNodeReceiver:
    """``dicom-node run`` via the test helpers; counts files on disk and rows in the DB."""

    workdir: Path
    study_instance_uid: str
    name: str = "dicom-node"
    #: where to write a py-spy profile of the node while it runs (None: no profiler)
    profile: Path | None = None
    node: NodeProcess | None = field(default=None, init=False)
    profiler: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> Endpoint:
        # Product defaults for completion: the study stays open during the whole send.
        config = NodeConfig(workdir=self.workdir, quiet_period_s=30.0, scan_interval_s=5.0, max_pdu_size=int(os.environ.get("BENCH_PDU", "65536")))
        self.node = NodeProcess(config)  # kept before start() so stop() can reap a slow start
        try:
            self.node.start(timeout_s=START_TIMEOUT_S)
        except AssertionError as exc:
            raise BenchmarkError(f"dicom-node did not start: {exc}") from exc
        if self.profile is not None:
            self.profiler = start_profiler(self.node.process.pid, self.profile)  # type: ignore[union-attr]
        return Endpoint(NODE_AE, config.port)

    def stored_count(self) -> int:
        assert self.node is not None
        on_disk = count_files(self.node.config.storage_root, "*.dcm", skip=(".incoming",))
        in_db = self._db_count()
        if on_disk != in_db:
            raise BenchmarkError(f"dicom-node: {on_disk} files on disk but {in_db} instances in the DB")
        return on_disk

    def _db_count(self) -> int:
        """The study's instance count as ``dicom-node status`` reports it."""
        assert self.node is not None
        done = subprocess.run(
            [sys.executable, "-m", "dicom_node", "status", "--config", str(self.workdir / "dicom-node.toml")],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise BenchmarkError(f"dicom-node status failed:\n{done.stderr}")
        for line in done.stdout.splitlines():
            fields = line.split()
            if fields and fields[0] == self.study_instance_uid:
                return int(fields[4])  # UID, STATE, GEN, SERIES, INSTANCES, ...
        return 0

    def stop(self) -> None:
        if self.node is not None and self.node.process is not None:
            self.node.stop()
        if self.profiler is not None:  # py-spy ends with the process it records
            self.profiler.wait(timeout=60)


def start_profiler(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` and its children into ``output`` until they exit."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        py_spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
        "--threads", "--subprocesses", "--nonblocking", "--output", str(output),
    ]  # fmt: skip
    profiler = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # py-spy attaches before the first C-STORE
    return profiler


@dataclass
class StorescpReceiver:
    """DCMTK storescp in single-process mode; optionally fsyncs each file before answering."""

    workdir: Path
    fsync: bool = False
    name: str = "storescp"
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.fsync:
            self.name = "storescp-fsync"

    @property
    def output_dir(self) -> Path:
        return self.workdir / "out"

    def start(self) -> Endpoint:
        self.output_dir.mkdir(parents=True)
        endpoint = Endpoint(STORESCP_AE, free_port())
        command = [str(STORESCP), "-aet", STORESCP_AE, "-od", str(self.output_dir)]
        if self.fsync:
            # Runs in the store callback, before the C-STORE response is sent.
            command += ["--exec-on-reception", f"{SYNC} #p/#f", "--exec-sync"]
        command.append(str(endpoint.port))
        log = self.workdir / "storescp.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=out, env=peer_env())
        wait_until(lambda: echo_ok(endpoint), self.process, self.name, log)
        return endpoint

    def stored_count(self) -> int:
        return count_files(self.output_dir)

    def stop(self) -> None:
        terminate(self.process)


@dataclass
class OrthancReceiver:
    """Orthanc on loopback with a temporary configuration; counts through its REST API."""

    workdir: Path
    name: str = "orthanc"
    orthanc: Orthanc | None = field(default=None, init=False)

    def start(self) -> Endpoint:
        # tests/support/orthanc.py: SyncStorageArea true, no compression, SQLite index, no plugins.
        self.orthanc = Orthanc(self.workdir, ae_title=ORTHANC_AE, name="dicom-node-bench")
        try:
            self.orthanc.start(timeout_s=START_TIMEOUT_S)
        except (OrthancError, AssertionError) as exc:
            raise BenchmarkError(f"Orthanc did not start: {exc}") from exc
        return Endpoint(ORTHANC_AE, self.orthanc.dicom_port)

    def stored_count(self) -> int:
        assert self.orthanc is not None
        try:
            return int(self.orthanc.statistics()["CountInstances"])
        except OrthancError as exc:
            raise BenchmarkError(f"Orthanc did not answer GET /statistics: {exc}") from exc

    def stop(self) -> None:
        if self.orthanc is not None:
            self.orthanc.stop()


RECEIVERS = ("dicom-node", "storescp", "storescp-fsync", "orthanc")


def make_receiver(name: str, workdir: Path, study_instance_uid: str, profile: Path | None = None) -> Receiver:
    if name == "dicom-node":
        return DicomNodeReceiver(workdir, study_instance_uid, profile=profile)
    if name == "storescp":
        return StorescpReceiver(workdir)
    if name == "storescp-fsync":
        return StorescpReceiver(workdir, fsync=True)
    if name == "orthanc":
        return OrthancReceiver(workdir)
    raise ValueError(f"unknown receiver {name!r}; choose from {', '.join(RECEIVERS)}")


def send_series(series_dir: Path, endpoint: Endpoint) -> float:
    """Send every file in ``series_dir`` over one association; return the wall-clock seconds."""
    command = [
        str(STORESCU), "-aet", SENDER_AE, "-aec", endpoint.ae_title,
        "127.0.0.1", str(endpoint.port), str(series_dir), "+sd",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=peer_env(), timeout=SEND_TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchmarkError(f"storescu to {endpoint} exited with {done.returncode}:\n{done.stderr[-4000:]}")
    return elapsed


def measure_once(
    name: str, series_dir: Path, n_instances: int, study_uid: str, scratch: Path, profile: Path | None = None
) -> float:
    """Start a fresh receiver, send the series, check it stored everything; return seconds."""
    workdir = scratch / name
    receiver = make_receiver(name, workdir, study_uid, profile)
    try:
        endpoint = receiver.start()
        seconds = send_series(series_dir, endpoint)
        stored = receiver.stored_count()
        if stored != n_instances:
            raise BenchmarkError(f"{name} stored {stored} of {n_instances} instances")
        return seconds
    finally:
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@dataclass
class Result:
    """All runs of one receiver."""

    name: str
    n_instances: int
    n_bytes: int
    seconds: list[float] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return [self.n_instances / s for s in self.seconds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def median_mb_per_s(self) -> float:
        return self.n_bytes / 1e6 / statistics.median(self.seconds)


def tool_version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def print_report(results: dict[str, Result], n_instances: int, n_bytes: int, runs: int) -> None:
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{tool_version([str(STORESCU), '--version'])}, {tool_version([str(ORTHANC), '--version'])}"
    )
    print(
        f"workload: {n_instances} CT instances 512x512 int16 ({n_bytes / 1e6:.0f} MB), one association, "
        f"storescu +sd, TCP_NODELAY=1 everywhere, median of {runs} interleaved runs"
    )
    print()
    header = f"{'receiver':<16} | {'median inst/s':>13} | {'runs (inst/s)':<24} | {'MB/s':>6}"
    print(header)
    print("-" * len(header))
    for result in results.values():
        each = ", ".join(f"{rate:.0f}" for rate in result.rates)
        print(f"{result.name:<16} | {result.median_rate:>13.1f} | {each:<24} | {result.median_mb_per_s:>6.1f}")
    print()
    print_ratios(results)
    print()
    print("notes: dicom-node fsyncs the file and its directory and commits a DB row before answering;")
    print("       storescp does not fsync (DCMTK 3.6.7 has no option for it);")
    print("       storescp-fsync runs `/usr/bin/sync FILE` per instance (-xcr/-xs): fsync + a fork/exec;")
    print("       orthanc has SyncStorageArea=true (fsync per file) and its SQLite index.")


def print_ratios(results: dict[str, Result]) -> None:
    node = results.get("dicom-node")
    if node is None:
        return
    goals = {"storescp": GOAL_VS_STORESCP, "storescp-fsync": None, "orthanc": GOAL_VS_ORTHANC}
    for other, goal in goals.items():
        if other not in results:
            continue
        ratio = node.median_rate / results[other].median_rate
        verdict = "" if goal is None else f"   goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'}"
        print(f"dicom-node / {other:<15} = {ratio:5.2f}x{verdict}")
    print(f"goal: >= {GOAL_VS_ORTHANC}x Orthanc and >= {GOAL_VS_STORESCP}x storescp")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per receiver (median reported)")
    parser.add_argument("--instances", type=int, default=300, help="CT slices to send per run")
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help=f"comma-separated subset of {','.join(RECEIVERS)}",
    )
    parser.add_argument("--profile", type=Path, help="record each dicom-node run with py-spy into this folder")
    args = parser.parse_args(argv)
    args.receivers = [name.strip() for name in args.receivers.split(",") if name.strip()]
    unknown = sorted(set(args.receivers) - set(RECEIVERS))
    if unknown or not args.receivers:
        parser.error(f"--receivers: unknown {unknown}; choose from {','.join(RECEIVERS)}")
    if args.runs < 1 or args.instances < 1:
        parser.error("--runs and --instances must be at least 1")
    return args


def run_benchmark(args: argparse.Namespace) -> None:
    # Children (the node included, which NodeProcess starts with our environment) inherit it.
    os.environ["TCP_NODELAY"] = "1"
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as tmp:
        scratch = Path(tmp)
        spec = SeriesSpec(n_slices=args.instances)
        series_dir = scratch / "series"
        paths = write_series(spec, series_dir)
        n_bytes = sum(path.stat().st_size for path in paths)
        results = {name: Result(name, len(paths), n_bytes) for name in args.receivers}
        for run in range(1, args.runs + 1):
            for name in args.receivers:
                profile = args.profile / f"{name}-run{run}.txt" if args.profile and name == "dicom-node" else None
                seconds = measure_once(name, series_dir, len(paths), spec.study_instance_uid, scratch / f"run{run}", profile)
                if profile is not None:
                    print_split(profile, len(paths), PROFILE_RATE_HZ)
                results[name].seconds.append(seconds)
                print(f"run {run}: {name:<16} {len(paths) / seconds:7.1f} inst/s", file=sys.stderr, flush=True)
        print_report(results, len(paths), n_bytes, args.runs)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run_benchmark(args)
    except BenchmarkError as exc:
        print(f"benchmark FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
