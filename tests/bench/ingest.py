"""Ingest throughput: dicom-node against DCMTK storescp and Orthanc, measured in one run.

What it measures
    DCMTK's ``/usr/bin/storescu`` sends synthetic CT (default 300 slices of 512×512
    int16, about 158 MB) to each receiver on loopback, in three scenarios:

    one     the series over one association;
    four    four studies of a quarter of the slices each, over four associations at
            once (four storescu processes); the time runs until the last one ends;
    busy    dicom-node only: the same send as ``one`` while the node analyses a
            240-slice study (0.625 mm, the shipped ``classifier+unet`` model unless
            ``--busy-model`` says otherwise), against the same node idle, in one run.
            The benchmark checks that the job was running when the send started and
            says whether it still was when the send ended.

    The time is the wall clock of the storescu processes, so it includes storescu's own
    start-up and file scanning, which is the same for every receiver. Every peer runs
    with ``TCP_NODELAY=1`` (Debian's DCMTK and Orthanc stall about 80 ms per C-STORE
    without it; see ../shared/NOTES.md). The ratios are printed against Orthanc and
    storescp measured in the same run, with the machine's load average: on a shared
    machine only ratios from one run mean anything.

Receivers
    dicom-node      ``dicom-node run`` with product defaults: fsync of the file and its
                    directory, database row committed, then success (SQLite). In
                    ``four``, ``[node] listener_processes`` is ``--listener-processes``.
    storescp        DCMTK storescp, writes each file without fsync (DCMTK 3.6.7 has no
                    fsync option); ``--fork`` (a process per association) in ``four``.
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

    .venv/bin/python -m tests.bench.ingest                    # 300 instances, 3 runs, every scenario
    .venv/bin/python -m tests.bench.ingest --instances 50 --runs 1 --receivers dicom-node,orthanc
    .venv/bin/python -m tests.bench.ingest --scenarios four --listener-processes 2

Profiling (see tests/bench/profile.py): ``--profile DIR`` records each dicom-node run with
py-spy into ``DIR/<scenario>-dicom-node-runN.txt`` and prints the per-instance split
(per process: the supervisor, each listener, the worker) after each run; add
``--profile-gil`` to sample only the thread holding the GIL.
"""

from __future__ import annotations

import argparse
import datetime
import mmap
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

import numpy as np
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import Engine, bindparam, create_engine, text

from tests.bench.profile import print_split
from tests.support.node import NODE_AE, NodeConfig, NodeProcess, free_port, wait_for
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
#: (scenario, what it is compared with) -> the ratio issue 15 asks for
GOALS = {("one", "orthanc"): 1.0, ("four", "orthanc"): 1.2, ("busy", "dicom-node idle"): 0.8}
BUSY_SLICES = 240
JOB_TIMEOUT_S = 600.0
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

    def after_send(self) -> None: ...

    def root_pid(self) -> int: ...

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
    study_uids: list[str]
    name: str = "dicom-node"
    listener_processes: int = 1
    max_pdu_size: int = 1048576  # the product default
    #: a series to analyse while the timed send runs (the ``busy`` scenario), and its model
    busy_series: Path | None = None
    busy_model: str = "classifier+unet"
    #: where to write a py-spy profile of the node while it runs (None: no profiler)
    profile: Path | None = None
    profile_gil: bool = False
    node: NodeProcess | None = field(default=None, init=False)
    profiler: subprocess.Popen[bytes] | None = field(default=None, init=False)
    job_ran_throughout: bool | None = field(default=None, init=False)

    def start(self) -> Endpoint:
        if self.busy_series is None:
            # Product defaults for completion: the studies stay open during the whole send.
            config = NodeConfig(workdir=self.workdir, quiet_period_s=30.0, scan_interval_s=5.0)
        else:  # the job's study must complete soon; the timed study must not (it keeps arriving)
            config = NodeConfig(workdir=self.workdir, quiet_period_s=2.0, scan_interval_s=0.5, model=self.busy_model)
        config.listener_processes = self.listener_processes
        config.max_pdu_size = self.max_pdu_size
        self.node = NodeProcess(config)  # kept before start() so stop() can reap a slow start
        try:
            self.node.start(timeout_s=START_TIMEOUT_S)
            # The worker loads its model at start: measure steady state, not start-up.
            wait_for(lambda: "worker ready" in self.node.log(), START_TIMEOUT_S, "the worker")  # type: ignore[union-attr]
        except AssertionError as exc:
            raise BenchmarkError(f"dicom-node did not start: {exc}") from exc
        endpoint = Endpoint(NODE_AE, config.port)
        if self.busy_series is not None:
            send_series([self.busy_series], endpoint)
            try:
                wait_for(lambda: self.running_jobs() > 0, JOB_TIMEOUT_S, "the 240-slice job to start", step_s=0.2)
            except AssertionError as exc:
                raise BenchmarkError(f"{exc}:\n{self.node.log()[-4000:]}") from exc
        if self.profile is not None:
            self.profiler = start_profiler(self.node.process.pid, self.profile, gil=self.profile_gil)  # type: ignore[union-attr]
        return endpoint

    def root_pid(self) -> int:
        assert self.node is not None and self.node.process is not None
        return self.node.process.pid

    def after_send(self) -> None:
        if self.busy_series is not None:
            self.job_ran_throughout = self.running_jobs() > 0

    def _database(self) -> Engine:
        assert self.node is not None
        return create_engine(self.node.config.db_url)

    def running_jobs(self) -> int:
        engine = self._database()
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT count(*) FROM job WHERE state = 'running'")).scalar_one())
        finally:
            engine.dispose()

    def stored_count(self) -> int:
        assert self.node is not None
        root = self.node.config.storage_root
        on_disk = sum(count_files(root / uid, "*.dcm") for uid in self.study_uids if (root / uid).exists())
        engine = self._database()
        try:
            with engine.connect() as connection:
                in_db = int(
                    connection.execute(
                        text(
                            "SELECT count(*) FROM instance JOIN series ON series.id = instance.series_id "
                            "JOIN study ON study.id = series.study_id WHERE study.study_instance_uid IN :uids"
                        ).bindparams(bindparam("uids", expanding=True)),
                        {"uids": self.study_uids},
                    ).scalar_one()
                )
        finally:
            engine.dispose()
        if on_disk != in_db:
            raise BenchmarkError(f"dicom-node: {on_disk} files on disk but {in_db} instances in the DB")
        return on_disk

    def stop(self) -> None:
        if self.profiler is not None:  # before the node: its shutdown is not ingest
            self.profiler.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            self.profiler.wait(timeout=60)
        if self.node is not None and self.node.process is not None:
            self.node.stop()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid`` and every descendant, alive or reaped, from /proc.

    Load-independent where the wall clock is not: on a shared machine a receiver waits for
    a core, but the CPU it burns per instance stays the same.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # exited meanwhile
        return 0.0
    total += sum(int(value) for value in fields[11:15]) / tick  # utime, stime, cutime, cstime
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        total += sum(cpu_seconds(int(child)) for child in children)
    return total


def start_profiler(pid: int, output: Path, *, gil: bool = False) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` and its children into ``output`` until they exit.

    ``gil``: only samples of the thread holding the GIL (Python's own CPU time, without
    threads that are runnable but wait for the GIL or for a core).
    """
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [
        py_spy, "record", "--pid", str(pid), "--rate", str(PROFILE_RATE_HZ), "--format", "raw",
        "--threads", "--subprocesses", "--nonblocking", "--output", str(output),
    ] + (["--gil"] if gil else [])  # fmt: skip
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


@dataclass
class StorescpReceiver:
    """DCMTK storescp in single-process mode; optionally fsyncs each file before answering."""

    workdir: Path
    fsync: bool = False
    fork: bool = False  # a process per association, for several at once
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
        command = [str(STORESCP), "-aet", STORESCP_AE, "-od", str(self.output_dir)] + (["--fork"] if self.fork else [])
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

    def root_pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def after_send(self) -> None:
        return None

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

    def root_pid(self) -> int:
        assert self.orthanc is not None and self.orthanc.process is not None
        return self.orthanc.process.pid

    def after_send(self) -> None:
        return None

    def stop(self) -> None:
        if self.orthanc is not None:
            self.orthanc.stop()


RECEIVERS = ("dicom-node", "storescp", "storescp-fsync", "orthanc")
SCENARIOS = ("one", "four", "busy")


def make_receiver(
    name: str, scenario: str, workdir: Path, study_uids: list[str], args: argparse.Namespace, busy_series: Path | None
) -> Receiver:
    if name.startswith("dicom-node"):
        return DicomNodeReceiver(
            workdir,
            study_uids,
            name=name,
            listener_processes=args.listener_processes if scenario == "four" else 1,
            max_pdu_size=args.max_pdu,
            busy_series=busy_series if name == "dicom-node busy" else None,
            busy_model=args.busy_model,
        )
    if name == "storescp":
        return StorescpReceiver(workdir, fork=scenario == "four")
    if name == "storescp-fsync":
        return StorescpReceiver(workdir, fsync=True, fork=scenario == "four")
    if name == "orthanc":
        return OrthancReceiver(workdir)
    raise ValueError(f"unknown receiver {name!r}; choose from {', '.join(RECEIVERS)}")


def send_series(series_dirs: list[Path], endpoint: Endpoint) -> float:
    """Send each folder over its own association, all at once; the wall-clock seconds until the last ends."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            [
                str(STORESCU), "-aet", SENDER_AE, "-aec", endpoint.ae_title,
                "127.0.0.1", str(endpoint.port), str(series_dir), "+sd",
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=peer_env(),
        )
        for series_dir in series_dirs
    ]
    failures = []
    for sender in senders:
        _, stderr = sender.communicate(timeout=SEND_TIMEOUT_S)
        if sender.returncode != 0:
            failures.append(f"storescu exited with {sender.returncode}:\n{stderr.decode(errors='replace')[-2000:]}")
    elapsed = time.perf_counter() - started
    if failures:
        raise BenchmarkError(f"sending to {endpoint}: " + "\n".join(failures))
    return elapsed


@dataclass(frozen=True)
class Workload:
    """What one scenario sends: folders sent in parallel, and the studies they hold."""

    series_dirs: list[Path]
    study_uids: list[str]
    n_instances: int
    n_bytes: int


def make_workloads(scratch: Path, n_instances: int, scenarios: list[str]) -> tuple[dict[str, Workload], Path | None]:
    """The series of each scenario, and the 240-slice series of the busy one."""
    def series(specs: list[SeriesSpec], name: str) -> Workload:
        dirs, paths = [], []
        for i, spec in enumerate(specs):
            dirs.append(scratch / f"{name}-{i}")
            paths += write_series(spec, dirs[-1])
        return Workload(dirs, [spec.study_instance_uid for spec in specs], len(paths), sum(p.stat().st_size for p in paths))

    one = series([SeriesSpec(n_slices=n_instances)], "one")
    workloads = {"one": one, "busy": one}
    if "four" in scenarios:
        quarter = max(1, n_instances // 4)
        workloads["four"] = series([SeriesSpec(n_slices=quarter, seed=i) for i in range(4)], "four")
    busy_dir = None
    if "busy" in scenarios:
        busy_dir = scratch / "busy-job"
        write_series(SeriesSpec(n_slices=BUSY_SLICES, slice_thickness_mm=0.625, seed=7), busy_dir)
    return {name: workloads[name] for name in scenarios}, busy_dir


def receivers_of(scenario: str, chosen: list[str]) -> list[str]:
    if scenario == "busy":
        return ["dicom-node idle", "dicom-node busy"]
    if scenario == "four":
        return [name for name in chosen if name != "storescp-fsync"]  # one fork+exec per file x4: not informative
    return chosen


def measure_once(
    name: str, scenario: str, workload: Workload, scratch: Path, args: argparse.Namespace, busy_series: Path | None, run: int
) -> tuple[float, float]:
    """Start a fresh receiver, send the workload, check it stored everything; (wall, CPU) seconds."""
    workdir = scratch / scenario / name.replace(" ", "-")
    receiver = make_receiver(name, scenario, workdir, workload.study_uids, args, busy_series)
    profile = None
    if args.profile is not None and isinstance(receiver, DicomNodeReceiver):
        profile = receiver.profile = args.profile / f"{scenario}-{name.replace(' ', '-')}-run{run}.txt"
        receiver.profile_gil = args.profile_gil
    try:
        endpoint = receiver.start()
        cpu_before = cpu_seconds(receiver.root_pid())
        seconds = send_series(workload.series_dirs, endpoint)
        cpu = cpu_seconds(receiver.root_pid()) - cpu_before
        if isinstance(receiver, DicomNodeReceiver):
            receiver.after_send()
            if receiver.job_ran_throughout is False:
                print(f"  note: the job ended before this send did ({name}, run {run})", file=sys.stderr)
        stored = receiver.stored_count()
        if stored != workload.n_instances:
            raise BenchmarkError(f"{name} stored {stored} of {workload.n_instances} instances")
    finally:
        receiver.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if profile is not None:
        print_split(profile, workload.n_instances, PROFILE_RATE_HZ)
    return seconds, cpu


@dataclass
class Result:
    """All runs of one receiver in one scenario."""

    name: str
    n_instances: int
    n_bytes: int
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)

    @property
    def cpu_ms_per_instance(self) -> float:
        """Median CPU per instance of the receiver's processes (the busy node's includes its job)."""
        return 1000 * statistics.median(self.cpu_seconds) / self.n_instances

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


SCENARIO_TITLES = {
    "one": "one association",
    "four": "four associations at once (4 studies of a quarter each)",
    "busy": f"one association, idle node vs node analysing a {BUSY_SLICES}-slice study",
}


def print_report(
    results: dict[str, dict[str, Result]], args: argparse.Namespace, loads: list[str], touches: list[float]
) -> None:
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}")
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{tool_version([str(STORESCU), '--version'])}, {tool_version([str(ORTHANC), '--version'])}"
    )
    print(f"load average (1, 5, 15 min) before and after: {loads[0]} / {loads[-1]}")
    print(
        f"memory first touch before and after: {touches[0]:.2f} / {touches[-1]:.2f} µs per page "
        "(about 1.4 on this project's VMs for memory just freed; about 10 for memory a lazily "
        "backing VM host took back, where receiving slows too)"
    )
    print(
        f"workload: {args.instances} CT instances 512x512 int16, storescu +sd, TCP_NODELAY=1 everywhere, "
        f"median of {args.runs} interleaved runs; dicom-node listener_processes = {args.listener_processes} in 'four'"
    )
    for scenario, by_name in results.items():
        print()
        print(f"== {scenario}: {SCENARIO_TITLES[scenario]}")
        header = f"{'receiver':<16} | {'median inst/s':>13} | {'runs (inst/s)':<24} | {'MB/s':>6} | {'CPU ms/inst':>11}"
        print(header)
        print("-" * len(header))
        for result in by_name.values():
            each = ", ".join(f"{rate:.0f}" for rate in result.rates)
            print(
                f"{result.name:<16} | {result.median_rate:>13.1f} | {each:<24} | {result.median_mb_per_s:>6.1f}"
                f" | {result.cpu_ms_per_instance:>11.1f}"
            )
        print_ratios(scenario, by_name)
    print()
    print("notes: dicom-node fsyncs the file and its directory and commits a DB row before answering;")
    print("       storescp does not fsync (DCMTK 3.6.7 has no option for it);")
    print("       storescp-fsync runs `/usr/bin/sync FILE` per instance (-xcr/-xs): fsync + a fork/exec;")
    print("       orthanc has SyncStorageArea=true (fsync per file) and its SQLite index;")
    print("       CPU ms/inst: user + system CPU of the receiver's processes during the send (for dicom-node:")
    print("       supervisor, listeners and worker, so 'busy' includes the job), from /proc.")


def print_ratios(scenario: str, by_name: dict[str, Result]) -> None:
    node = by_name.get("dicom-node busy" if scenario == "busy" else "dicom-node")
    if node is None:
        return
    for other, result in by_name.items():
        if result is node:
            continue
        ratio = node.median_rate / result.median_rate
        goal = GOALS.get((scenario, other))
        verdict = "" if goal is None else f"   goal >= {goal}x: {'met' if ratio >= goal else 'NOT met'}"
        print(f"{node.name} / {other:<15} = {ratio:5.2f}x{verdict}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per receiver (median reported)")
    parser.add_argument("--instances", type=int, default=300, help="CT slices to send per run")
    parser.add_argument(
        "--receivers",
        default=",".join(RECEIVERS),
        help=f"comma-separated subset of {','.join(RECEIVERS)}",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--listener-processes", type=int, default=2, help="dicom-node's [node] listener_processes in 'four'")
    parser.add_argument(
        "--max-pdu", type=int, default=1048576, help="dicom-node's [node] max_pdu_size (the product default; 0: unlimited)"
    )
    parser.add_argument("--busy-model", default="classifier+unet", help="[analysis] model of the job in 'busy'")
    parser.add_argument("--profile", type=Path, help="record each dicom-node run with py-spy into this folder")
    parser.add_argument("--profile-gil", action="store_true", help="with --profile: only the thread holding the GIL")
    args = parser.parse_args(argv)
    args.receivers = [name.strip() for name in args.receivers.split(",") if name.strip()]
    args.scenarios = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = sorted(set(args.receivers) - set(RECEIVERS))
    if unknown or not args.receivers:
        parser.error(f"--receivers: unknown {unknown}; choose from {','.join(RECEIVERS)}")
    if sorted(set(args.scenarios) - set(SCENARIOS)) or not args.scenarios:
        parser.error(f"--scenarios: choose from {','.join(SCENARIOS)}")
    if args.runs < 1 or args.instances < 1 or args.listener_processes < 1:
        parser.error("--runs, --instances and --listener-processes must be at least 1")
    return args


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


def first_touch_us_per_page(megabytes: int = 512) -> float:
    """Microseconds the kernel takes to hand this process one fresh page of memory, now.

    Printed with the figures because it moves them: on a VM whose host backs guest memory only
    when first touched (and takes free memory back: ``virtio_balloon``) this probe read 1.3-1.4
    µs for memory just freed and 10.4 µs for cold memory, and the page cache that each
    received instance is copied into comes from the same free memory (README: what bounds the
    busy ratio on this machine). Private anonymous memory, as the node's own allocations.
    """
    size = megabytes << 20
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        started = time.perf_counter()
        np.frombuffer(area, dtype=np.uint8)[:: mmap.PAGESIZE] = 1  # one write per page
        seconds = time.perf_counter() - started
    finally:
        area.close()
    return 1e6 * seconds / (size // mmap.PAGESIZE)


def run_benchmark(args: argparse.Namespace) -> None:
    # Children (the node included, which NodeProcess starts with our environment) inherit it.
    os.environ["TCP_NODELAY"] = "1"
    loads = [load_average()]
    touches = [first_touch_us_per_page()]
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as tmp:
        scratch = Path(tmp)
        workloads, busy_series = make_workloads(scratch / "series", args.instances, args.scenarios)
        results = {
            scenario: {
                name: Result(name, workload.n_instances, workload.n_bytes)
                for name in receivers_of(scenario, args.receivers)
            }
            for scenario, workload in workloads.items()
        }
        for run in range(1, args.runs + 1):
            for scenario, workload in workloads.items():
                for name, result in results[scenario].items():
                    seconds, cpu = measure_once(name, scenario, workload, scratch / f"run{run}", args, busy_series, run)
                    result.seconds.append(seconds)
                    result.cpu_seconds.append(cpu)
                    print(
                        f"run {run}: {scenario:<5} {name:<16} {workload.n_instances / seconds:7.1f} inst/s"
                        f"   (load {load_average()})",
                        file=sys.stderr,
                        flush=True,
                    )
        loads.append(load_average())
        touches.append(first_touch_us_per_page())
        print_report(results, args, loads, touches)


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
