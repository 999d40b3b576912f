"""The read-only status page served at ``/`` beside ``/metrics``: one HTML page, no script.

Server-rendered with the standard library, every value escaped, so it needs no build,
no JavaScript and no asset server, and a locked-down browser on a reading-room PC opens
it. It refreshes itself every 30 s with a meta tag. It shows what ``dicom-node status``
shows (UIDs, states, the AI call, times), never a patient name or ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from html import escape
from urllib.parse import quote

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from dicom_node.admin.advice import advice
from dicom_node.admin.destinations import DestinationHealth, destination_health
from dicom_node.admin.overview import JobLine, StudyOverview, recent_studies
from dicom_node.admin.rejections import WINDOW, Rejection, advice_for, recent_rejections
from dicom_node.admin.text import node_summary, node_warning
from dicom_node.config import Settings
from dicom_node.db import state
from dicom_node.db.clock import database_now
from dicom_node.db.heartbeat import NodePresence, presence

REFRESH_S = 30

STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1b1b;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.5em 0 .4em}
.banner{background:#fff3cd;border:1px solid #e0c36b;padding:.4em .8em;display:inline-block}
table{border-collapse:collapse;background:#fff;width:100%}
th,td{border:1px solid #d0d0d0;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#eceff3}td.uid{font-family:monospace;font-size:12px;word-break:break-all}
.positive{color:#a00000;font-weight:bold}.negative{color:#1d6b1d}
.ok{color:#1d6b1d}.failing,.dead{color:#a00000;font-weight:bold}.retrying,.pending{color:#9a6700}
.muted{color:#666}
"""


@dataclass(frozen=True)
class PageData:
    """What the page shows, read in one go."""

    ae_title: str
    now: datetime
    jobs: dict[str, int]
    studies: list[StudyOverview]
    errors: list[state.RecentError]
    destinations: list[DestinationHealth]
    viewer_url: str | None
    #: Which listener and worker processes run (None: not read, e.g. in a rendering test).
    presence: NodePresence | None = None
    #: Associations turned away recently, by caller, address and reason.
    rejections: list[Rejection] = field(default_factory=list)


def collect(engine: Engine, session: Session, settings: Settings, limit: int = 50) -> PageData:
    """Read the page's data from the database (the same reads as ``dicom-node status``)."""
    now = database_now(session)
    return PageData(
        ae_title=settings.node.ae_title,
        now=now,
        jobs=state.jobs_by_state(engine),
        studies=recent_studies(session, limit),
        errors=state.recent_errors(engine, limit=10),
        destinations=destination_health(session, list(settings.destinations)),
        viewer_url=settings.observability.viewer_url,
        presence=presence(session, now=now),
        rejections=recent_rejections(session, now=now, admits=settings.node.admits),
    )


def _t(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _study_cell(uid: str, viewer_url: str | None) -> str:
    if viewer_url is None:
        return _e(uid)
    href = viewer_url.replace("{study_uid}", quote(uid, safe=""))
    return f'<a href="{_e(href)}" target="_blank" rel="noopener noreferrer">{_e(uid)}</a>'


def _stages(study: StudyOverview) -> str:
    job = study.job
    if job is None:
        return "-"
    stages = " · ".join(f"{_e(name)} {seconds:.1f} s" for name, seconds in job.stage_seconds.items())
    times = f"queued {_t(job.created_at)}<br>started {_t(job.started_at)}<br>finished {_t(job.finished_at)}"
    return (stages + "<br>" if stages else "") + f'<span class="muted">{times}</span>'


def _state(name: str, count: int | None = None) -> str:
    """A state as a coloured word (the stylesheet has a class per state), with its count."""
    return f'<span class="{_e(name)}">{"" if count is None else f"{count} "}{_e(name)}</span>'


def _counts(by_state: dict[str, int]) -> str:
    return " ".join(_state(k, n) for k, n in sorted(by_state.items()))


def _job_cell(job: JobLine) -> str:
    """The job's state in the words of ``status`` (``succeeded (warnings)``), and its error or first warning."""
    flag = _e(job.state_text.removeprefix(job.state))  # " (warnings)" or nothing
    cell = f"{job.id}: {_state(job.state)}{flag} ({job.attempts}/{job.max_attempts})"
    if job.last_error and job.state != "succeeded":
        note = job.last_error.splitlines()[0]
    elif job.state == "succeeded" and job.warnings:
        note = f"warning: {job.warnings[0]}"
    else:
        return cell
    return cell + f"<br><span class='muted'>{_e(note[:160])}</span>"


def _study_row(study: StudyOverview, viewer_url: str | None) -> str:
    s, job = study.study, study.job
    call = job.call if job else "-"
    probability = f"{job.probability:.2f}" if job and job.probability is not None else "-"
    volume = f"{job.volume_ml:.1f} mL" if job and job.volume_ml is not None else "-"
    job_text = _job_cell(job) if job else "-"
    deliveries = "<br>".join(f"{_e(d.destination)}: {_counts(d.by_state)}" for d in study.deliveries) or "-"
    return (
        "<tr>"
        f'<td class="uid">{_study_cell(s.study_instance_uid, viewer_url)}</td>'
        f"<td>{_e(s.state.value)}<br><span class='muted'>{s.series_count} series, {s.instance_count} instances<br>"
        f"last received {_t(s.last_received_at)}</span></td>"
        f"<td>{job_text}</td>"
        f'<td class="{_e(call)}">{_e(call)}</td><td>{probability}</td><td>{volume}</td>'
        f"<td>{_stages(study)}</td><td>{deliveries}</td>"
        "</tr>"
    )


def _destination_row(d: DestinationHealth) -> str:
    counts = ", ".join(f"{n} {_e(k)}" for k, n in sorted(d.by_state.items())) or "nothing yet"
    problem = "-"
    if d.last_error:
        next_try = f"<br>next try {_t(d.next_attempt_at)} UTC" if d.next_attempt_at else ""
        problem = f"{_e(d.last_error)}{next_try}<br><em>{_e(advice(d.last_error, delivery=True))}</em>"
    return (
        f"<tr><td>{_e(d.name)}</td><td>{_e(d.address or 'removed from the configuration')}</td>"
        f'<td class="{_e(d.verdict)}">{_e(d.verdict)}</td><td>{counts}</td>'
        f"<td>{_t(d.last_sent_at)}</td><td>{problem}</td></tr>"
    )


def _error_row(error: state.RecentError) -> str:
    first = error.why.splitlines()[0][:300] if error.why else ""
    return (
        f"<tr><td>{_e(error.what)}</td><td class='uid'>{_e(error.study_instance_uid)}</td>"
        f"<td>{_e(first)}</td><td>{_e(advice(error.why, delivery=error.delivery, job_id=error.job_id, study_instance_uid=error.study_instance_uid))}</td></tr>"
    )


def _rejection_row(r: Rejection) -> str:
    return (
        f"<tr><td>{_e(r.calling_ae_title)}</td><td>{_e(r.peer_address)}</td><td>{_e(r.reason)}</td>"
        f"<td>{r.count}</td><td>{_t(r.last_at)}</td><td>{_e(advice_for(r))}</td></tr>"
    )


def _node(data: PageData) -> str:
    """The node's processes in one line: running or not, and what it lacks."""
    if data.presence is None:
        return ""
    word = "running" if data.presence.running else "not running"
    summary = node_summary(data.presence).removeprefix(word)
    warning = node_warning(data.presence)
    extra = f'<br><em class="failing">{_e(warning)}</em>' if warning else ""
    css = "ok" if data.presence.running and warning is None else "failing"
    disks = "".join(
        f'<br><span id="disk" class="{"failing" if p.refusing_for_disk else "ok"}">'
        f"Disk (listener pid {p.pid} on {_e(p.host)}): {_e(p.disk)}</span>"
        for p in data.presence.alive
        if p.disk is not None
    )
    return f'<p id="node">Node: <span class="{css}">{_e(word)}</span>{_e(summary)}{extra}{disks}</p>'


def _table(headers: list[str], rows: list[str], empty: str) -> str:
    if not rows:
        return f'<p class="muted">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def render(data: PageData) -> bytes:
    """The whole page as UTF-8 HTML."""
    jobs = ", ".join(f"{n} {_e(k)}" for k, n in sorted(data.jobs.items())) or "none"
    body = [
        f"<h1>dicom-node {_e(data.ae_title)}</h1>",
        '<p class="banner">Research use only: these results are not for diagnostic use.</p>',
        f'<p class="muted">As of {_t(data.now)} UTC (database clock); refreshes every {REFRESH_S} s. Jobs: {jobs}.</p>',
        _node(data),
        "<h2>Destinations</h2>",
        _table(
            ["name", "address", "health", "deliveries", "last sent (UTC)", "latest problem and what to do"],
            [_destination_row(d) for d in data.destinations],
            "No destination is configured: results are kept, not sent. Add a [[destinations]] entry.",
        ),
        "<h2>Recent errors</h2>",
        _table(
            ["what", "study", "error", "what to do"],
            [_error_row(e) for e in data.errors],
            "No errors.",
        ),
        f"<h2>Rejected associations (last {WINDOW.total_seconds() / 3600:g} h)</h2>",
        _table(
            ["calling AE title", "from", "reason", "times", "last (UTC)", "what to do"],
            [_rejection_row(r) for r in data.rejections],
            "No association was rejected.",
        ),
        "<h2>Recent studies</h2>",
        _table(
            ["study instance UID", "received", "job", "AI call", "probability", "volume", "stages and times (UTC)", "delivery"],
            [_study_row(s, data.viewer_url) for s in data.studies],
            "No study received yet.",
        ),
    ]
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="{REFRESH_S}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dicom-node {_e(data.ae_title)}: status</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    return page.encode("utf-8")
