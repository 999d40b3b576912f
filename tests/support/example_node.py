"""`dicom-node run` on the shipped example settings, as a new user starts it.

``config/dicom-node.toml`` is used unchanged, copied into ``config/`` of the node's own
folder as a checkout has it: its relative paths (``../.dicom-node/storage``, its SQLite
database and audit log) are relative to the file's folder, so they land in that
folder's ``.dicom-node/``, not in the real checkout. Only what a test machine must change is
overridden, through the ``DICOM_NODE_<SECTION>__<KEY>`` environment variables the
example's header documents: the listening and metrics ports (free ones, so tests
can run side by side), the quiet period (30 s in the example; a test need not wait
that long), and the destination the results go to.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.support.node import REPO, echo_ok, free_port, terminate

EXAMPLE_CONFIG = REPO / "config" / "dicom-node.toml"
#: Where the example puts its database, relative to the folder that holds its config/.
EXAMPLE_DATABASE = Path(".dicom-node") / "dicom-node.db"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class JobRow:
    """One job as the node's database has it."""

    id: int
    study_instance_uid: str
    state: str
    attempts: int
    last_error: str | None
    #: why a skipped job was not analysed
    reason: str | None
    #: what a succeeded job's results lack, and why
    warnings: str | None
    summary: dict[str, object]
    #: result objects queued for a destination (not cancelled)
    deliveries: int
    #: seconds since the epoch (the node's clock, UTC): study completed, job started, job finished
    completed_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None


def _epoch(value: object) -> float | None:
    """A naive-UTC timestamp from the database as seconds since the epoch."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=datetime.UTC).timestamp()


@dataclass
class ExampleNode:
    """The node as ``dicom-node run --config config/dicom-node.toml`` in ``workdir``."""

    workdir: Path
    #: (AE title, port) of the destination on 127.0.0.1 that receives every result object
    destination: tuple[str, int]
    #: None keeps the example's quiet period
    quiet_period_s: float | None = 2.0
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    worker_metrics_port: int = field(default_factory=free_port)
    #: further ``DICOM_NODE_...`` settings (a benchmark's analysis device, say); tests leave it empty
    overrides: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config(self) -> Path:
        """The node's copy of the example, as ``config/dicom-node.toml`` of a checkout."""
        return self.workdir / "config" / EXAMPLE_CONFIG.name

    @property
    def log_path(self) -> Path:
        return self.workdir / "node.log"

    def env(self) -> dict[str, str]:
        ae_title, port = self.destination
        overrides = {
            "DICOM_NODE_NODE__PORT": str(self.port),
            "DICOM_NODE_OBSERVABILITY__PORT": str(self.metrics_port),
            "DICOM_NODE_OBSERVABILITY__WORKER_PORT": str(self.worker_metrics_port),
            "DICOM_NODE_DESTINATIONS": json.dumps(
                [{"name": "pacs", "ae_title": ae_title, "host": "127.0.0.1", "port": port}]
            ),
        }
        if self.quiet_period_s is not None:
            overrides["DICOM_NODE_COMPLETION__QUIET_PERIOD_S"] = f"{self.quiet_period_s:g}"
        pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        return {**os.environ, "PYTHONPATH": pythonpath, **overrides, **self.overrides}

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``dicom-node ARGS --config config/dicom-node.toml`` in the node's folder."""
        return subprocess.run(
            [sys.executable, "-m", "dicom_node", *args, "--config", str(self.config)],
            capture_output=True, text=True, timeout=timeout, env=self.env(), cwd=self.workdir,
        )

    def start(self) -> ExampleNode:
        """Create the database as the README says (``db upgrade``), then ``run``; ready when it answers C-ECHO."""
        self.config.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(EXAMPLE_CONFIG, self.config)
        upgraded = self.cli("db", "upgrade")
        assert upgraded.returncode == 0, upgraded.stderr
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "run", "--config", str(self.config)],
                stdout=log, stderr=log, env=self.env(), cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"node exited with {self.process.returncode}: {self.log()[-3000:]}")
            if echo_ok(self.port):  # STORESCU and ECHOSCU on 127.0.0.1 are the example's allowed callers
                return self
            time.sleep(0.2)
        self.stop()  # not left running into the tests after this one
        raise AssertionError(f"node did not answer C-ECHO within {START_TIMEOUT_S} s: {self.log()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, as systemd stops it; the exit code."""
        if self.process is None:
            return 0
        return terminate(self.process, STOP_TIMEOUT_S)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def jobs(self) -> dict[str, JobRow]:
        """The newest job of each study, by Study Instance UID."""
        engine = create_engine(f"sqlite:///{self.workdir / EXAMPLE_DATABASE}")
        try:
            with engine.connect() as connection:
                rows = connection.execute(
                    text(
                        "SELECT job.id, study.study_instance_uid, job.state, job.attempts, job.last_error, job.reason,"
                        " job.warnings, job.summary, study.completed_at, job.started_at, job.finished_at,"
                        " (SELECT count(*) FROM delivery JOIN output_object ON output_object.id = delivery.output_id"
                        "  WHERE output_object.job_id = job.id AND delivery.state != 'cancelled')"
                        " FROM job JOIN study ON study.id = job.study_id ORDER BY job.id"
                    )
                ).all()
        finally:
            engine.dispose()
        return {
            row[1]: JobRow(
                id=row[0], study_instance_uid=row[1], state=str(row[2]), attempts=int(row[3]), last_error=row[4],
                reason=row[5], warnings=row[6], summary=json.loads(row[7]) if row[7] else {}, deliveries=int(row[11]),
                completed_at=_epoch(row[8]), started_at=_epoch(row[9]), finished_at=_epoch(row[10]),
            )
            for row in rows
        }
