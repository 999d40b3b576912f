"""The key every result UID derives from: stable for a retry, new for a study sent again."""

from __future__ import annotations

import dataclasses

from dicom_node.config import load_settings
from dicom_node.jobs.queue import ClaimedJob
from dicom_node.models.threshold import ThresholdModel, ThresholdParameters
from dicom_node.pipeline import Pipeline
from tests.support.node import REPO

JOB = ClaimedJob(id=7, study_id=3, study_instance_uid="1.2.3", study_generation=1, model_key="threshold@1",
                 attempts=1, max_attempts=3, lease_owner="w")


def _pipeline() -> Pipeline:
    settings = load_settings(REPO / "config" / "dicom-node.toml")
    return Pipeline(settings, None, None, ThresholdModel(ThresholdParameters()))  # type: ignore[arg-type]


def test_a_retry_keeps_the_key_and_a_study_sent_again_after_retention_gets_a_new_one() -> None:
    pipeline = _pipeline()
    retry = dataclasses.replace(JOB, id=8, attempts=2, lease_owner="other")
    assert pipeline.job_key(retry) == pipeline.job_key(JOB)
    # Retention deleted the study; the same UID came back as a new row, at generation 1 again.
    sent_again = dataclasses.replace(JOB, id=9, study_id=4)
    assert pipeline.job_key(sent_again) != pipeline.job_key(JOB)
    assert pipeline.job_key(dataclasses.replace(JOB, study_generation=2)) != pipeline.job_key(JOB)
