"""The next step for an error an administrator reads in ``status``, ``jobs show`` or the web page.

The errors themselves are written where they happen (the pipeline, the sender); this
table only adds what to do about the usual ones, matched on their stable wording.
"""

from __future__ import annotations

#: (words in the error, what to do), first match wins.
ADVICE: tuple[tuple[str, str], ...] = (
    ("no series qualifies", "the study has no series the model can use (reasons above); nothing to do unless a series was misjudged: check [selection]"),
    ("cannot be assembled", "the series is incomplete or inconsistent; have the PACS send it again, then `dicom-node jobs retry ID`"),
    ("lease of worker", "the worker stopped mid-job (crash, kill or host lost); the job is retried by itself (the lost run counts as one attempt)"),
    ("died (its process is gone", "the worker process was killed or crashed mid-job; the job is retried by itself (the lost run counts as one attempt)"),
    ("association rejected", "the destination refused us: check its AE title in [[destinations]] and that it accepts our AE title ([node] ae_title)"),
    ("presentation context refused", "the destination does not accept this kind of object: enable SEG/SR/Secondary Capture there, or drop it from the destination's objects"),
    ("connection refused", "the destination did not answer: check that it runs and its host and port; deliveries retry by themselves"),
    ("(timed out)", "no answer in time: check the host, the port and any firewall in between (`dicom-node echo NAME`); deliveries retry by themselves"),
    ("cannot connect", "the destination cannot be reached: check its host name and the network; deliveries retry by themselves"),
    ("unreachable", "the destination did not answer: check that it runs and its host and port; deliveries retry by themselves"),
    ("aborted", "the destination dropped the association: check its log (a TLS port drops a plain connection); deliveries retry by themselves"),
    ("failure 0xA7", "the destination is out of resources (disk full?); deliveries retry by themselves"),
    ("failure 0x", "the destination refused the object (status above): check its log, then `dicom-node resend STUDY_UID`"),
    ("needs PyTorch", "install the inference extra (pip install -e '.[inference]') or set [analysis] model = \"threshold\""),
)

DEFAULT_JOB = "see `dicom-node jobs show ID`; `dicom-node jobs retry ID` runs it again"
DEFAULT_DELIVERY = "see `dicom-node status STUDY_UID`; `dicom-node resend STUDY_UID` sends again"


def advice(
    error: str, *, delivery: bool = False, job_id: int | None = None, study_instance_uid: str | None = None
) -> str:
    """What to do about ``error`` (a job's or a delivery's last error).

    With the job's id and study's UID, the commands are written out to be pasted as they
    are, not with ``ID`` and ``STUDY_UID`` to fill in.
    """
    lowered = error.lower()
    step = next((step for words, step in ADVICE if words.lower() in lowered), None)
    step = step or (DEFAULT_DELIVERY if delivery else DEFAULT_JOB)
    if job_id is not None:
        step = step.replace("jobs retry ID`", f"jobs retry {job_id}`").replace("jobs show ID`", f"jobs show {job_id}`")
    if study_instance_uid is not None:
        step = step.replace("STUDY_UID`", f"{study_instance_uid}`")
    return step
