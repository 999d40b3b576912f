"""kill -9 at random points, many times, and prove that nothing is lost or done twice.

Two deployments run side by side, as the README describes them:

- split: one ``dicom-node scp`` and two ``dicom-node worker`` processes on one PostgreSQL
  database and one storage root;
- single: one ``dicom-node run`` process on SQLite.

Each trial sends a new synthetic study and kills one process at one point:

- transfer: the listener, after a random number of instances were acknowledged;
- write-ack: the listener, at the first moment the database holds an instance the sender
  has not yet seen acknowledged (written, not yet answered);
- job: the worker holding the study's job (its pid is in the lease), while it runs;
- send: the process holding the study's outbox claim, while it sends.

The killed process is restarted, and the sender sends again what was not acknowledged, as
a PACS retries a failed association. After each kill, and again at the end:

- every instance that got a success status is in the database and on disk, readable;
- every study ends with a succeeded job for its last generation, and every succeeded job's
  result set is at the destination: the SOP Instance UIDs the job recorded, and nothing
  that no job recorded;
- no job is left queued or running.

A study gets a second generation (and a second, newer result set) only when the sender's
retry arrives after the quiet period, exactly as when a PACS sends late images; the test
counts such studies, and with a quiet period of 8 s they are rare.

The destination is DCMTK's storescp writing every copy to its own file, so an object sent
again after a kill during send shows up. Such a re-send carries the same SOP Instance UID
(C-STORE is at-least-once: a kill between the peer's store and our record of it cannot be
told from a lost store), so the PACS replaces it; the table reports how often it happened.

``DICOM_NODE_FAULT_TRIALS`` (default 50) sets the number of trials; ``-s`` prints the table.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from dicom_node.config import DatabaseSettings
from dicom_node.db.models import Delivery, DeliveryState, Instance, Job, JobState, OutputObject, Series, Study
from dicom_node.db.session import create_db_engine, session_factory
from tests.support.node import NODE_AE, NodeConfig, NodeProcess, free_port, wait_for
from tests.support.peers import StoreSCP
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

TRIALS = int(os.environ.get("DICOM_NODE_FAULT_TRIALS", "50"))
PHASES = ("transfer", "write-ack", "job", "send")
ALL_OBJECTS = ["seg", "sr", "key_images"]
SLICES = 16


@dataclass
class Deployment:
    """Processes sharing one database and one storage root."""

    name: str
    listener: NodeProcess
    workers: list[NodeProcess]
    sessions: sessionmaker[Session]
    storage_root: Path

    def processes(self) -> list[NodeProcess]:
        return [self.listener, *[w for w in self.workers if w is not self.listener]]

    def by_owner(self, owner: str) -> NodeProcess:
        """The process whose lease or claim ``owner`` ("host:pid-namespace:pid:random") is.

        `run` holds its leases in its worker child: killing the parent kills that child too.
        """
        pid = int(owner.split(":")[2])
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except FileNotFoundError:
            parent = None
        for process in self.processes():
            assert process.process is not None
            if process.process.pid in (pid, parent):
                return process
        raise AssertionError(f"no process of {self.name} has pid {pid}")


@dataclass
class Trial:
    """One kill and what it found."""

    deployment: str
    phase: str
    target: str
    study_uid: str
    paths: list[Path]
    hit: bool = False  # the kill landed inside the phase it aimed at
    acked: set[Path] = field(default_factory=set)
    acked_at_kill: int = 0  # success statuses the sender held when the process died
    recovery_s: float = 0.0
    retry_gap_s: float = 0.0  # listener kills: from the kill until the retry was acknowledged


class Sender(threading.Thread):
    """One association sending files in order, recording which were acknowledged with success."""

    def __init__(self, port: int, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.paths = paths
        self.acked: list[Path] = []
        self.failed: list[tuple[Path, int]] = []

    def run(self) -> None:
        ae = AE(ae_title="TESTSCU")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])

        def nodelay(event: evt.Event) -> None:
            event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE, evt_handlers=[(evt.EVT_CONN_OPEN, nodelay)])
        if not assoc.is_established:
            return
        try:
            for path in self.paths:
                status = assoc.send_c_store(path)
                if not assoc.is_established or "Status" not in status:
                    return  # aborted: the listener is gone
                if int(status.Status) == 0x0000:
                    self.acked.append(path)
                else:
                    self.failed.append((path, int(status.Status)))
        finally:
            if assoc.is_established:
                assoc.release()


def instance_count(sessions: sessionmaker[Session], study_uid: str) -> int:
    with sessions() as session:
        return int(
            session.scalar(
                select(func.count(Instance.id))
                .join(Series, Series.id == Instance.series_id)
                .join(Study, Study.id == Series.study_id)
                .where(Study.study_instance_uid == study_uid)
            )
            or 0
        )


def study_jobs(sessions: sessionmaker[Session], study_uid: str) -> list[Job]:
    with sessions() as session:
        return list(
            session.scalars(select(Job).join(Study, Study.id == Job.study_id).where(Study.study_instance_uid == study_uid))
        )


def study_deliveries(
    sessions: sessionmaker[Session], study_uid: str, job_id: int | None = None
) -> list[tuple[str, DeliveryState, str | None]]:
    """(SOP Instance UID, state, claimed_by) of every delivery of the study's results (of one job)."""
    query = (
        select(OutputObject.sop_instance_uid, Delivery.state, Delivery.claimed_by)
        .join(Delivery, Delivery.output_id == OutputObject.id)
        .join(Job, Job.id == OutputObject.job_id)
        .join(Study, Study.id == Job.study_id)
        .where(Study.study_instance_uid == study_uid)
    )
    with sessions() as session:
        rows = session.execute(query if job_id is None else query.where(Job.id == job_id)).all()
    return [(uid, state, owner) for uid, state, owner in rows]


def assert_acked_are_durable(deployment: Deployment, trial: Trial) -> None:
    """Every acknowledged instance is recorded, and its file is there and readable."""
    sop_uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in trial.acked}
    with deployment.sessions() as session:
        rows = dict(session.execute(select(Instance.sop_instance_uid, Instance.path).where(Instance.sop_instance_uid.in_(sop_uids))).all())
    missing = set(sop_uids) - set(rows)
    assert not missing, f"{trial.deployment}/{trial.phase}: {len(missing)} acknowledged instance(s) not in the database"
    for uid, relative in rows.items():
        stored = dcmread(deployment.storage_root / relative)
        assert str(stored.SOPInstanceUID) == uid
        assert stored.PixelData == dcmread(sop_uids[uid]).PixelData, f"{relative} differs from what was sent"


def kill_listener(deployment: Deployment, trial: Trial, sender: Sender, rng: random.Random) -> None:
    """transfer: after k acknowledgements; write-ack: when a row exists that is not yet acknowledged."""
    n = len(trial.paths)
    k = rng.randint(1, n - 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and sender.is_alive():
        acked = len(sender.acked)
        if trial.phase == "write-ack":
            if instance_count(deployment.sessions, trial.study_uid) > acked:
                trial.hit = True
                break
            if acked >= n - 1:  # the window was never seen: kill anyway, as a transfer kill
                break
            continue
        if acked >= k:
            time.sleep(rng.uniform(0, 0.01))
            trial.hit = sender.is_alive()
            break
        time.sleep(0.001)
    deployment.listener.kill9()
    sender.join(30)
    trial.acked = set(sender.acked)
    trial.acked_at_kill = len(trial.acked)
    assert not sender.failed, f"failure statuses before the kill: {sender.failed}"


def kill_worker(deployment: Deployment, trial: Trial, rng: random.Random) -> None:
    """job: the worker holding the running job; send: the process holding the outbox claim."""

    def running_owner() -> str | None:
        jobs = [j for j in study_jobs(deployment.sessions, trial.study_uid) if j.state == JobState.RUNNING]
        return jobs[0].lease_owner if jobs else None

    def claim_owner() -> str | None:
        owners = [o for _, s, o in study_deliveries(deployment.sessions, trial.study_uid) if o and s == DeliveryState.PENDING]
        return owners[0] if owners else None

    find = running_owner if trial.phase == "job" else claim_owner
    deadline = time.monotonic() + 120
    while (owner := find()) is None:
        assert time.monotonic() < deadline, f"timed out waiting for {trial.phase} to start"
        time.sleep(0.005)
    victim = deployment.by_owner(owner)
    time.sleep(rng.uniform(0, 0.2 if trial.phase == "job" else 0.02))
    victim.kill9()
    trial.target = "single" if victim is deployment.listener else f"worker-{deployment.workers.index(victim) + 1}"
    trial.hit = (running_owner() if trial.phase == "job" else claim_owner()) == owner
    victim.restart()


def retry_unacknowledged(deployment: Deployment, trial: Trial) -> None:
    """Send again what got no success status, as a PACS retries a failed association."""
    for _ in range(3):
        missing = [p for p in trial.paths if p not in trial.acked]
        if not missing:
            return
        retry = Sender(deployment.listener.config.port, missing)
        retry.run()
        assert not retry.failed, f"failure statuses on the retry: {retry.failed}"
        trial.acked |= set(retry.acked)
    assert len(trial.acked) == len(trial.paths), "instances still unacknowledged after three retries"


def run_trial(deployment: Deployment, trial: Trial, rng: random.Random) -> None:
    started = time.monotonic()
    sender = Sender(deployment.listener.config.port, trial.paths)
    sender.start()
    if trial.phase in ("transfer", "write-ack"):
        kill_listener(deployment, trial, sender, rng)
        killed = time.monotonic()
        assert_acked_are_durable(deployment, trial)
        deployment.listener.restart()
        retry_unacknowledged(deployment, trial)
        trial.retry_gap_s = time.monotonic() - killed
    else:
        sender.join(60)
        assert not sender.failed, f"failure statuses: {sender.failed}"
        # An association can end early without a kill (pynetdicom's requestor sometimes
        # loses a response to its own thread under load): then the sender retries too.
        trial.acked = set(sender.acked)
        retry_unacknowledged(deployment, trial)
        trial.acked_at_kill = len(trial.acked)
        kill_worker(deployment, trial, rng)
    assert_acked_are_durable(deployment, trial)

    def delivered() -> bool:
        jobs = study_jobs(deployment.sessions, trial.study_uid)
        deliveries = study_deliveries(deployment.sessions, trial.study_uid)
        return any(j.state == JobState.SUCCEEDED for j in jobs) and bool(deliveries) and all(
            s == DeliveryState.SENT for _, s, _ in deliveries
        )

    wait_for(delivered, 180, f"the results of trial {trial.deployment}/{trial.phase} to be delivered", 0.1)
    trial.recovery_s = time.monotonic() - started


def shared_config(workdir: Path, storage: Path, port: int, database_url: str | None, dest_port: int) -> NodeConfig:
    return NodeConfig(
        workdir=workdir,
        storage_dir=storage,
        port=port,
        database_url=database_url,
        destinations=[("pacs", "DEST", dest_port, ALL_OBJECTS)],
        quiet_period_s=8.0,  # longer than a restart plus the sender's retry, even on a loaded machine
        scan_interval_s=0.5,
        lease_s=3.0,
        heartbeat_s=1.0,
        delivery_retry_delay_s=0.5,
        job_max_attempts=10,
        delivery_timeout_s=2.0,  # a dead sender's outbox claim lapses after 4 time-outs
    )


@pytest.fixture
def deployments(tmp_path: Path, postgres_url: str) -> Iterator[tuple[list[Deployment], StoreSCP]]:
    pacs = StoreSCP(tmp_path / "pacs").start()
    started: list[NodeProcess] = []
    try:
        storage = tmp_path / "split-storage"
        port = free_port()
        listener = NodeProcess(shared_config(tmp_path / "split" / "scp", storage, port, postgres_url, pacs.port), command="scp")
        started.append(listener.start())
        workers = []
        for i in (1, 2):
            config = shared_config(tmp_path / "split" / f"worker-{i}", storage, port, postgres_url, pacs.port)
            workers.append(NodeProcess(config, command="worker"))
            started.append(workers[-1].start())
        engine = create_db_engine(DatabaseSettings(url=postgres_url))
        split = Deployment("split", listener, workers, session_factory(engine), storage)

        single_config = shared_config(tmp_path / "single", tmp_path / "single" / "storage", free_port(), None, pacs.port)
        one = NodeProcess(single_config, command="run")
        started.append(one.start())
        sqlite = create_db_engine(DatabaseSettings(url=single_config.db_url))
        single = Deployment("single", one, [one], session_factory(sqlite), single_config.storage_root)
        yield [split, single], pacs
        engine.dispose()
        sqlite.dispose()
    finally:
        for process in started:
            if process.process is not None:
                process.stop()
        pacs.stop()


@pytest.mark.timeout(1800)
def test_kill_minus_nine_at_random_points_loses_nothing_and_duplicates_nothing(
    deployments: tuple[list[Deployment], StoreSCP], tmp_path: Path
) -> None:
    (split, single), pacs = deployments
    trials: list[Trial] = []
    errors: list[BaseException] = []

    def run_deployment(deployment: Deployment, numbers: list[int]) -> None:
        rng = random.Random(20261124 + len(numbers))
        try:
            for number in numbers:
                phase = PHASES[(number // 2) % len(PHASES)]
                lesions = [Lesion(center_mm=(20.0, 10.0, 0.0), radius_mm=8.0)] if number % 3 else []
                spec = SeriesSpec(
                    n_slices=SLICES, rows=256, columns=256, pixel_spacing_mm=(0.9, 0.9), lesions=lesions, seed=number
                )
                paths = write_series(spec, tmp_path / "studies" / f"{number:02d}")
                target = "single" if deployment is single else "listener" if phase in ("transfer", "write-ack") else "worker"
                trial = Trial(deployment.name, phase, target, spec.study_instance_uid, paths)
                run_trial(deployment, trial, rng)
                trials.append(trial)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # The two deployments run their trials at the same time (most of a trial is waiting).
    numbers = list(range(TRIALS))
    runs = [
        threading.Thread(target=run_deployment, args=(split, [n for n in numbers if n % 2 == 0])),
        threading.Thread(target=run_deployment, args=(single, [n for n in numbers if n % 2 == 1])),
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=1500)
    assert not any(run.is_alive() for run in runs), "trials did not finish in time"
    if errors:
        raise errors[0]
    assert len(trials) == TRIALS

    time.sleep(3)  # anything sent twice arrives now
    received = Counter(pacs.received())
    resent = sum(n - 1 for n in received.values())
    study_of = {str(ds.SOPInstanceUID): str(ds.StudyInstanceUID) for ds in (dcmread(p, stop_before_pixels=True) for p in pacs.files())}
    lost_instances = lost_studies = extra_sets = reopened = 0
    for trial in trials:
        deployment = split if trial.deployment == "split" else single
        lost_instances += len(trial.paths) - instance_count(deployment.sessions, trial.study_uid)
        jobs = sorted(study_jobs(deployment.sessions, trial.study_uid), key=lambda j: j.study_generation)
        assert jobs[-1].state == JobState.SUCCEEDED, f"{trial.study_uid}: {[(j.state, j.last_error) for j in jobs]}"
        assert all(j.state in (JobState.SUCCEEDED, JobState.SUPERSEDED) for j in jobs), [(j.state, j.last_error) for j in jobs]
        reopened += len(jobs) > 1
        at_destination = {uid for uid, study in study_of.items() if study == trial.study_uid}
        for job in jobs:
            recorded = {uid for uid, _, _ in study_deliveries(deployment.sessions, trial.study_uid, job.id)}
            lost_studies += job.state == JobState.SUCCEEDED and not (recorded and recorded <= at_destination)
        everything = {uid for uid, _, _ in study_deliveries(deployment.sessions, trial.study_uid)}
        extra_sets += bool(at_destination - everything)
    for deployment in (split, single):
        with deployment.sessions() as session:
            open_jobs = session.scalar(select(func.count(Job.id)).where(Job.state.in_([JobState.QUEUED, JobState.RUNNING])))
        assert open_jobs == 0, f"{deployment.name}: {open_jobs} job(s) left queued or running"

    print(f"\nkill -9 fault injection: {len(trials)} trials")
    print(f"{'deployment':<10} {'killed':<9} {'phase':<10} {'trials':>6} {'in window':>9} {'acked at kill':>13} {'s to delivered (max)':>21}")
    groups: dict[tuple[str, str, str], list[Trial]] = {}
    for trial in trials:
        groups.setdefault((trial.deployment, trial.target.split("-")[0], trial.phase), []).append(trial)
    for (name, target, phase), group in sorted(groups.items()):
        print(
            f"{name:<10} {target:<9} {phase:<10} {len(group):>6} {sum(t.hit for t in group):>9} "
            f"{sum(t.acked_at_kill for t in group):>13} {max(t.recovery_s for t in group):>21.1f}"
        )
    print(f"instances lost: {lost_instances}; result sets missing: {lost_studies}; "
          f"objects at the destination that no job recorded: {extra_sets}; objects re-sent with the same UID: {resent}; "
          f"studies reopened because the sender's retry came after the quiet period: {reopened}; "
          f"longest listener restart plus retry: {max(t.retry_gap_s for t in trials):.1f} s")
    assert lost_instances == 0
    assert lost_studies == 0
    assert extra_sets == 0
    assert sum(t.hit for t in trials) >= len(trials) // 2, "most kills should land inside the phase they aim at"
