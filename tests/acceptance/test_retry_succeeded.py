"""`jobs retry` of a succeeded job, through a real node and a real destination (DCMTK storescp).

Retrying a job whose results already went out is a choice: without `--rerun` the command
refuses and names `resend` (the same results again) and `--rerun` (analyse again). With
`--rerun` the study is analysed again, `jobs show` tells the new run from the first, and
every result goes to the destination again, with the same UIDs.
"""

from __future__ import annotations

import re
from pathlib import Path

from dicom_node.demo import write_demo_study
from tests.acceptance.test_end_to_end import send_study
from tests.support.node import NodeConfig, NodeProcess, cli, wait_for
from tests.support.peers import StoreSCP


def test_retrying_a_succeeded_job_is_explicit_and_sends_the_new_results_again(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs").start()
    config = NodeConfig(
        workdir=tmp_path / "node", quiet_period_s=1.0, destinations=[("pacs", "DEST", pacs.port, ["seg", "sr", "key_images"])]
    )
    path = str(config.write())
    node = NodeProcess(config).start()
    try:
        study = write_demo_study(tmp_path / "ct", positive=True, n_slices=16)
        send_study(config.port, tmp_path / "ct")
        show = lambda: cli("jobs", "show", "1", "--config", path).stdout  # noqa: E731
        wait_for(lambda: "succeeded" in show() and "pending" not in show() and "-> pacs: sent" in show(), 120, "job 1 delivered")
        first = show()
        results = first.count("-> pacs: sent")
        assert results >= 3 and len(pacs.files()) == results, (first, pacs.files())
        assert "job 1: succeeded, attempt 1 of 3\n" in first and "run 2" not in first

        refused = cli("jobs", "retry", "1", "--config", path)
        assert refused.returncode == 1
        assert f"`dicom-node resend {study.study_instance_uid}` sends the same results again" in refused.stderr, refused.stderr
        assert "`dicom-node jobs retry 1 --rerun` analyses the study again" in refused.stderr
        assert cli("jobs", "show", "1", "--config", path).stdout == first, "a refused retry changes nothing"

        again = cli("jobs", "retry", "1", "--rerun", "--config", path)
        assert again.returncode == 0 and again.stdout.startswith("job 1 queued; its results are sent again"), again.stdout
        wait_for(lambda: len(pacs.files()) == 2 * results, 120, "every result at the destination a second time")
        wait_for(lambda: "pending" not in show() and "succeeded" in show(), 60, "the second run recorded")
        second = show()
        assert "job 1: succeeded, attempt 1 of 3 (run 2: queued again by an operator)" in second, second
        queued = re.search(r"^  queued     (\S+ \S+) UTC by `jobs retry` \(first queued (\S+ \S+) UTC\)$", second, re.M)
        assert queued is not None and queued[1] > queued[2], second
        started = re.search(r"^  started    (\S+ \S+) UTC$", second, re.M)
        assert started is not None and started[1] >= queued[1], "the times are the new run's"
        # The same objects (UIDs) again: the destination replaces, never holds a second, different copy.
        uids = pacs.received()
        assert len(set(uids)) == results and all(uids.count(uid) == 2 for uid in set(uids))
    finally:
        node.stop()
        pacs.stop()
