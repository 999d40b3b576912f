"""The plain-text views of ``dicom-node status`` and ``dicom-node jobs show``.

Lines, not printing: the commands print them, tests read them. Times are UTC (the
database's clock), written out in full so that a line pasted into a ticket is unambiguous.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dicom_node.admin.advice import advice
from dicom_node.admin.destinations import DestinationHealth
from dicom_node.admin.overview import JobLine, StudyDetail, StudyOverview
from dicom_node.admin.rejections import WINDOW, Rejection, advice_for
from dicom_node.db.heartbeat import NodePresence, ProcessSeen
from dicom_node.db.state import RecentError
from dicom_node.send.outbox import DeliveryView


def utc(value: datetime | None) -> str:
    """``2026-12-03 20:41:07 UTC``, or ``-``."""
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value else "-"


def _short(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S}" if value else "-"


def _ago(now: datetime, then: datetime) -> str:
    return f"{max(0.0, (now - then).total_seconds()):.0f} s ago"


def node_summary(presence: NodePresence) -> str:
    """``running (listener pid 12, worker pid 13 on host; last seen 2 s ago)`` or ``not running (...)``."""
    if not presence.running:
        gone = presence.last_gone
        if gone is None:
            return "not running (no listener or worker has ever started with this database)"
        how = f"stopped at {utc(gone.stopped_at)}" if gone.stopped_at else f"no heartbeat since {utc(gone.last_seen_at)}"
        return f"not running ({how}; last: {gone.role} pid {gone.pid} on {gone.host})"
    hosts = sorted({p.host for p in presence.alive})

    def name(p: ProcessSeen) -> str:
        return f"{p.role} pid {p.pid}" + (f" on {p.host}" if len(hosts) > 1 else "")

    where = f" on {hosts[0]}" if len(hosts) == 1 else ""
    latest = max(p.last_seen_at for p in presence.alive)
    return f"running ({', '.join(name(p) for p in presence.alive)}{where}; last seen {_ago(presence.now, latest)})"


def node_warning(presence: NodePresence) -> str | None:
    """What a running node lacks: no worker (nothing analysed) or no listener (nothing received)."""
    if not presence.running:
        return None
    roles = presence.roles()
    if "worker" not in roles:
        return "no worker runs: studies are received but neither analysed nor sent (start `dicom-node worker`)"
    if "listener" not in roles:
        return "no listener runs: nothing is received (start `dicom-node scp`)"
    return None


def node_lines(presence: NodePresence) -> list[str]:
    """``NODE  running (...)`` with what it lacks, or ``NODE  not running (...)`` with how to start it."""
    lines = [f"NODE         {node_summary(presence)}"]
    if (warning := node_warning(presence)) is not None:
        lines.append(f"             {warning}")
    if not presence.running:
        lines.append("             start it: `dicom-node run --config ...`, or `systemctl start dicom-node.target` under systemd")
    return lines


def disk_lines(presence: NodePresence) -> list[str]:
    """Each running listener's disk guard (free space vs ``storage.min_free_mb``), and what to do when it refuses."""
    lines = []
    for p in presence.alive:
        if p.disk is None:
            continue
        lines.append(f"DISK         listener pid {p.pid} on {p.host}: {p.disk}")
        if p.refusing_for_disk:
            lines.append(
                "             what to do: free space under storage.root (or lower storage.min_free_mb); "
                "the PACS retries what was refused"
            )
    return lines


def other_configs(read: str, presence: NodePresence) -> list[str]:
    """The configuration files the running processes read that are not ``read`` (this command's)."""
    return sorted({p.config_path for p in presence.alive if p.config_path and p.config_path != read})


def config_lines(read: str, presence: NodePresence) -> list[str]:
    """Which file this ``status`` read, and, in one line each, another file the running node reads.

    The database, the processes and their disk guards and pages are the running node's;
    the destinations are this file's, and rejected callers are not judged by it.
    """
    lines = [f"CONFIG       {read}"]
    for other in other_configs(read, presence):
        lines.append(
            f"             the running node reads {other}: destinations below are this file's and rejected "
            f"callers are not checked against it (`dicom-node status --config {other}`)"
        )
    return lines


def page_lines(configured: str | None, presence: NodePresence) -> list[str]:
    """Where the status page is: the one the running node serves (its heartbeat says), else this file's.

    ``configured``: the page this command's file names. When the node was started from
    another file, or before the file was edited, the running page is elsewhere; both show.
    """
    if not presence.running:
        return [f"web page: {configured} (while the node runs)"] if configured else []
    served = sorted({p.page_url for p in presence.alive if p.page_url})  # none: the running node serves none
    differs = f" (this file says {configured}: the node serves it once restarted with this file)"
    return [f"web page: {url}" + (differs if configured and configured not in served else "") for url in served]


def rejection_lines(rejections: list[Rejection], *, reload_pids: list[int] | None = None) -> list[str]:
    """Associations turned away in the last 24 h, by caller, address and reason, with what to do."""
    hours = WINDOW.total_seconds() / 3600
    lines = []
    for r in rejections:
        lines.append(
            f"REJECTED     {r.calling_ae_title or '(none)'} from {r.peer_address or '?'}: {r.reason}; "
            f"{r.count} time(s) in {hours:g} h, last {utc(r.last_at)}"
            + (" (allowed now)" if r.allowed_now else "")
        )
        lines.append(f"             what to do: {advice_for(r, reload_pids=reload_pids)}")
    return lines


def destination_lines(destinations: list[DestinationHealth], *, node_config: str | None = None) -> list[str]:
    """One line per destination: address, health, counts; and its latest problem with the next step.

    ``node_config``: the file the running node reads when it is not the one this command
    read; a destination unknown here may then be configured there, and dropping its
    deliveries would be wrong advice.
    """
    if not destinations:
        return ["DESTINATION  none configured: results are kept, not sent (add a [[destinations]] entry)"]
    lines = []
    for d in destinations:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(d.by_state.items())) or "nothing yet"
        if node_config is not None:
            unknown = f"not in this file; the running node reads {node_config}: `dicom-node status --config {node_config}`"
        else:
            unknown = f"not configured (`dicom-node jobs cancel-deliveries --to {d.name}` drops what waits)"
        where = d.address or unknown
        lines.append(f"DESTINATION  {d.name} ({where}): {d.verdict}; {counts}; last sent {_short(d.last_sent_at)}")
        if d.last_error and d.address:  # a removed destination's old errors need no fixing
            next_try = f"; next try {utc(d.next_attempt_at)}" if d.next_attempt_at else ""
            lines.append(f"             last problem: {d.last_error.splitlines()[0][:160]}{next_try}")
            lines.append(f"             what to do: {advice(d.last_error, delivery=True)}")
    return lines


def unknown_destination_hint(config: Path | None, names: list[str]) -> str:
    """Which settings a destination name was looked up in, so that "unknown" is not misread."""
    if config is None:
        return "no settings file was read (pass --config or set DICOM_NODE_CONFIG; there is no config/dicom-node.toml here)"
    return f"configured destinations in {config}: {', '.join(names) or 'none'}"


def delivery_line(d: DeliveryView) -> str:
    """``jobs show``'s line for one delivery: state, attempts, resends and the last answer, once and whole.

    ``last_status`` holds a DICOM status (``0xA700``) or, for an attempt that got none
    (connection refused, association rejected), the start of the error; the full error is
    then the status to show, not a cut copy of it followed by the whole again.
    """
    retry = f", next try {utc(d.next_attempt_at)}" if d.state.value == "pending" and d.attempts else ""
    resent = f", resent {d.resends} time(s), last {utc(d.resent_at)}" if d.resends else ""
    status = d.last_status or "-"
    why = ""
    if d.last_error:
        if d.last_status and d.last_status.startswith("0x"):
            why = f" ({d.last_error})"
        else:
            status = d.last_error
    return (
        f"  delivery   {d.kind:<10} {d.sop_instance_uid} -> {d.destination}: {d.state.value}, "
        f"{d.attempts} attempt(s){retry}{resent}, last status {status}{why}"
    )


def error_lines(errors: list[RecentError]) -> list[str]:
    lines = []
    for error in errors:
        first = error.why.splitlines()[0][:160] if error.why else ""
        lines.append(f"ERROR        {error.what}, study {error.study_instance_uid}: {first}")
        what = advice(error.why, delivery=error.delivery, job_id=error.job_id, study_instance_uid=error.study_instance_uid)
        lines.append(f"             what to do: {what}")
    return lines


STUDY_HEADER = (
    f"{'STUDY INSTANCE UID':<64}  {'STATE':<9}  GEN  SERIES  INSTANCES  {'LAST RECEIVED (UTC)':<19}  "
    f"{'JOB':>5}  {'JOB STATE':<20}  {'CALL':<8}  {'PROB':>5}  {'VOLUME':>9}  DELIVERY"
)


def study_line(study: StudyOverview) -> str:
    """One study: received, its latest job, the AI call and where its results are."""
    s, job = study.study, study.job
    probability = f"{job.probability:.2f}" if job and job.probability is not None else "-"
    volume = f"{job.volume_ml:.1f} mL" if job and job.volume_ml is not None else "-"
    return (
        f"{s.study_instance_uid:<64}  {s.state.value:<9}  {s.generation:>3}  {s.series_count:>6}  "
        f"{s.instance_count:>9}  {_short(s.last_received_at):<19}  "
        f"{job.id if job else '-':>5}  {job.state_text if job else '-':<20}  {job.call if job else '-':<8}  "
        f"{probability:>5}  {volume:>9}  {study.delivery_text}"
    )


def job_lines(job: JobLine, *, now: datetime | None = None) -> list[str]:
    """A job in full: times in UTC, the lease and its expiry, the error with the next step, the result."""
    run = f" (run {job.retries + 1}: queued again by an operator)" if job.retries else ""
    queued = utc(job.created_at)
    if job.retried_at is not None:
        queued = f"{utc(job.retried_at)} by `jobs retry` (first queued {utc(job.created_at)})"
    lines = [
        f"job {job.id}: {job.state_text}, attempt {job.attempts} of {job.max_attempts}{run}",
        f"  model      {job.model_key}",
        f"  queued     {queued}",
        f"  started    {utc(job.started_at)}",
        f"  finished   {utc(job.finished_at)}",
    ]
    if job.state == "queued" and job.attempts:
        lines.append(f"  next try   {utc(job.next_attempt_at)}")
    if job.lease_owner:
        left = ""
        if now is not None and job.lease_expires_at is not None:
            seconds = (job.lease_expires_at - now).total_seconds()
            left = f" (in {seconds:.0f} s)" if seconds >= 0 else f" (expired {-seconds:.0f} s ago: the lease scan reclaims it)"
        lines.append(f"  worker     {job.lease_owner}, lease until {utc(job.lease_expires_at)}{left}")
    if job.reason:
        lines.append(f"  skipped    {job.reason}")
    if job.last_error:
        lines.append(f"  error      {job.last_error}")
        lines.append(f"  what to do {_job_advice(job)}")
    lines.extend(f"  warning    {warning}" for warning in job.warnings)
    if job.summary:
        call = f"{job.call}, probability {job.probability}, volume {job.volume_ml} mL, {job.summary.get('lesions', '?')} lesion(s)"
        lines.append(f"  result     {call}")
        stages = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in job.stage_seconds.items())
        if stages:
            lines.append(f"  stages     {stages}")
        if "series_instance_uid" in job.summary:
            lines.append(f"  series     {job.summary['series_instance_uid']} ({job.summary.get('slices', '?')} slices)")
        if job.summary.get("selection"):
            lines.append(f"  selected   {job.summary['selection']}")
    return lines


def _job_advice(job: JobLine) -> str:
    """A job's next step; a job queued or running again needs none from the operator."""
    if job.state in ("queued", "running"):
        return (
            f"none: it runs again by itself; the run that failed used one of its attempts "
            f"({job.attempts} of {job.max_attempts} used)"
        )
    step = advice(job.last_error or "", job_id=job.id)
    if "by itself" in step:  # a lost worker, but the job had no attempt left
        return f"it used its last attempt ({job.attempts} of {job.max_attempts}): `dicom-node jobs retry {job.id}` runs it again"
    return step


def study_detail_lines(detail: StudyDetail, *, now: datetime | None = None) -> list[str]:
    """``dicom-node status STUDY_UID``: the study, each job (newest first) and its deliveries."""
    s = detail.overview.study
    completed = f"{utc(s.completed_at)} ({s.completion_reason})" if s.completed_at else "not yet"
    lines = [
        f"study {s.study_instance_uid}",
        f"  state      {s.state.value}, generation {s.generation}",
        f"  received   {s.series_count} series, {s.instance_count} instances; last {utc(s.last_received_at)}",
        f"  complete   {completed}",
    ]
    if not detail.jobs:
        lines.append("  no job yet: a job is queued when the study completes")
    for job in detail.jobs:
        lines.append("")
        lines.extend(job_lines(job, now=now))
        for d in detail.deliveries.get(job.id, []):
            lines.append(f"  delivery   {d.destination}: {d.text}")
            if d.last_error:
                lines.append(f"             last problem: {d.last_error.splitlines()[0][:160]}")
    return lines


def retry_refusal(job_id: int, found: tuple[JobLine, str] | None) -> str:
    """Why ``jobs retry ID`` did nothing, and the command that does what was probably meant."""
    if found is None:
        return f"no job {job_id}: `dicom-node jobs list` shows the jobs there are"
    job, study_instance_uid = found
    if job.state == "succeeded":
        return (
            f"job {job_id} succeeded, and its results went to the destinations: "
            f"`dicom-node resend {study_instance_uid}` sends the same results again; "
            f"`dicom-node jobs retry {job_id} --rerun` analyses the study again and sends the new results "
            "in place of the old (same UIDs, so the destinations replace them)"
        )
    if job.state in ("queued", "running"):
        return f"job {job_id} is {job.state}: nothing to retry yet (`dicom-node jobs cancel {job_id}` stops it)"
    if job.state == "superseded":
        return (
            f"job {job_id} was superseded: the study received more images and a newer job analyses it "
            f"(`dicom-node jobs list --study {study_instance_uid}`)"
        )
    return f"job {job_id} is {job.state}: only dead, cancelled, skipped or (with --rerun) succeeded jobs are retried"
