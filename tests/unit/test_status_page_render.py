"""The status page's HTML: every value escaped, viewer links quoted, and the facts in place."""

from __future__ import annotations

from datetime import datetime

from dicom_node.admin.destinations import DestinationHealth
from dicom_node.admin.overview import DeliveryCounts, JobLine, StudyOverview
from dicom_node.admin.page import PageData, render
from dicom_node.db.models import StudyState
from dicom_node.db.state import RecentError
from dicom_node.ingest.catalog import StudySummary

NOW = datetime(2026, 12, 3, 20, 0, 0)
UID = "1.2.826.0.1.3680043.10.1476.99.7"


def _page(viewer_url: str | None, error: str) -> str:
    job = JobLine(
        id=3, state="succeeded", study_generation=1, attempts=1, max_attempts=3, model_key="m@1",
        created_at=NOW, started_at=NOW, finished_at=NOW, next_attempt_at=None, lease_owner=None,
        lease_expires_at=None, last_error=None,
        summary={"hemorrhage": True, "probability": 0.876, "total_volume_ml": 12.34, "timings_s": {"infer": 2.5}},
    )
    study = StudyOverview(
        StudySummary(UID, StudyState.COMPLETE, 1, 1, 40, NOW, NOW, "quiet"),
        job,
        [DeliveryCounts("pacs", {"sent": 3}), DeliveryCounts("b<i>", {"pending": 1}, error)],
    )
    data = PageData(
        ae_title="NODE<&>",
        now=NOW,
        jobs={"succeeded": 1},
        studies=[study],
        errors=[RecentError("delivery 9 to b<i> (pending)", error, True, UID)],
        destinations=[DestinationHealth("b<i>", "B@10.0.0.1:104", {"pending": 1}, None, error, NOW)],
        viewer_url=viewer_url,
    )
    return render(data).decode("utf-8")


def test_every_value_is_escaped() -> None:
    page = _page(None, 'failure 0xC000 <script>alert("x")</script>')
    assert "<script" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "NODE&lt;&amp;&gt;" in page and "b&lt;i&gt;" in page
    assert "<a " not in page, "no viewer configured: no links"


def test_the_call_the_volume_and_the_stages_are_shown() -> None:
    page = _page(None, "association aborted or peer unreachable (B@10.0.0.1:104)")
    assert '<td class="positive">positive</td><td>0.88</td><td>12.3 mL</td>' in page
    assert "infer 2.5 s" in page and "finished 2026-12-03 20:00:00" in page
    assert '<span class="sent">3 sent</span>' in page and '<span class="pending">1 pending</span>' in page
    assert "next try 2026-12-03 20:00:00 UTC" in page
    assert "the destination did not answer" in page, "an error comes with what to do"
    assert '<meta http-equiv="refresh" content="30">' in page and "Research use only" in page


def test_viewer_links_quote_the_uid_and_open_apart() -> None:
    page = _page("https://viewer.example/v?StudyInstanceUIDs={study_uid}&x=1", "x")
    assert f'<a href="https://viewer.example/v?StudyInstanceUIDs={UID}&amp;x=1" target="_blank" rel="noopener noreferrer">' in page


def test_a_stopped_node_and_rejected_callers_are_shown_escaped() -> None:
    from dataclasses import replace

    from dicom_node.admin.page import PageData
    from dicom_node.admin.rejections import Rejection
    from dicom_node.db.heartbeat import NodePresence, ProcessSeen

    gone = ProcessSeen("worker", "gpu-host", 42, None, NOW, NOW, None, alive=False)
    data = PageData(
        ae_title="NODE", now=NOW, jobs={}, studies=[], errors=[], destinations=[], viewer_url=None,
        presence=NodePresence(NOW, [], gone),
        rejections=[Rejection("<PACS>", "10.0.0.7", "calling AE title or host not allowed", 3, NOW, NOW)],
    )
    page = render(data).decode("utf-8")
    assert 'Node: <span class="failing">not running</span> (no heartbeat since 2026-12-03 20:00:00 UTC; last: worker pid 42 on gpu-host)' in page
    assert "<td>&lt;PACS&gt;</td><td>10.0.0.7</td><td>calling AE title or host not allowed</td><td>3</td>" in page
    assert "add it to [[node.allowed_callers]]" in page
    alone = replace(data, presence=NodePresence(NOW, [replace(gone, role="listener", alive=True)], None), rejections=[])
    page = render(alone).decode("utf-8")
    assert "no worker runs: studies are received but neither analysed nor sent" in page
    assert "No association was rejected." in page


def test_a_job_that_succeeded_with_warnings_says_so_in_status_and_on_the_page() -> None:
    """`status`'s table, `jobs show` and the page use one wording, and the page shows the first warning."""
    from dataclasses import replace

    from dicom_node.admin.text import STUDY_HEADER, job_lines, study_line

    page = _page(None, "x")
    assert "(warnings)" not in page, "a clean success is plain `succeeded`"
    job = JobLine(
        id=3, state="succeeded", study_generation=1, attempts=1, max_attempts=3, model_key="m@1",
        created_at=NOW, started_at=NOW, finished_at=NOW, next_attempt_at=None, lease_owner=None,
        lease_expires_at=None, last_error=None, summary={"hemorrhage": False},
        warnings=("SEG not created: <no frame of reference>",),
    )
    study = StudyOverview(StudySummary(UID, StudyState.COMPLETE, 1, 1, 40, NOW, NOW, "quiet"), job, [])
    line = study_line(study)
    assert line[STUDY_HEADER.index("JOB STATE"):].startswith("succeeded (warnings)  negative"), line
    assert job_lines(job)[0] == "job 3: succeeded (warnings), attempt 1 of 3"
    clean = study_line(replace(study, job=replace(job, warnings=())))
    assert clean[STUDY_HEADER.index("JOB STATE"):].startswith("succeeded             negative"), clean
    data = PageData(ae_title="N", now=NOW, jobs={"succeeded": 1}, studies=[study], errors=[], destinations=[], viewer_url=None)
    html = render(data).decode("utf-8")
    assert "3: <span class=\"succeeded\">succeeded</span> (warnings) (1/3)" in html, html
    assert "warning: SEG not created: &lt;no frame of reference&gt;" in html
