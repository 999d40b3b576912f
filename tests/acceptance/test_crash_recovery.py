"""kill -9 of `dicom-node run` in the middle of a job, then a restart: the job runs again in seconds.

The lease is 600 s, as in production, so only the start-up reclaim of a dead process of
this host (not the lease scan) can bring the job back within the test's bounds.
"""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, select

from dicom_node.db.models import Job
from tests.acceptance.test_end_to_end import send_study
from tests.support.node import NodeConfig, NodeProcess, wait_for
from tests.support.synthetic_ct import Lesion, SeriesSpec, write_series

LEASE_S = 600.0
#: From the restart command to "running again" (process start-up included): the reclaim
#: happens before the first dispatch tick.
BACK_WITHIN_S = 15.0


def test_a_killed_run_gets_its_job_back_at_restart_not_after_the_lease(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "node", quiet_period_s=1.0, lease_s=LEASE_S, heartbeat_s=5.0)
    node = NodeProcess(config).start()
    engine = create_engine(config.db_url)

    def job() -> Job | None:
        with engine.connect() as connection:
            return connection.execute(select(Job).order_by(Job.id)).first()  # type: ignore[return-value]

    try:
        # Big enough that the job runs for seconds on 2 shared cores, so the kill lands mid-job.
        spec = SeriesSpec(n_slices=160, lesions=[Lesion((20.0, 10.0, 0.0), 12.0)])
        write_series(spec, tmp_path / "ct")
        send_study(config.port, tmp_path / "ct")
        wait_for(lambda: (row := job()) is not None and row.state == "running", 120, "the job to start", step_s=0.05)
        first = job()
        assert first is not None and first.lease_owner is not None
        node.kill9()
        assert job().state == "running", "the job finished before the kill; make the study bigger"  # type: ignore[union-attr]

        restarted = time.monotonic()  # the process start-up (imports, migrations check) counts too
        node.restart()
        wait_for(
            lambda: (row := job()) is not None and row.attempts == 2 and row.state in ("running", "succeeded"),
            BACK_WITHIN_S,
            "the job to run again after the restart",
            step_s=0.1,
        )
        back_after_s = time.monotonic() - restarted
        wait_for(lambda: job().state == "succeeded", 180, "the job to succeed")  # type: ignore[union-attr]
        assert back_after_s < BACK_WITHIN_S < LEASE_S
        log = node.log()
        assert "reclaimed from dead process(es) of this host" in log and first.lease_owner in log
        print(f"job running again {back_after_s:.1f} s after the restart (lease {LEASE_S:.0f} s)")
    finally:
        node.stop()
        engine.dispose()
