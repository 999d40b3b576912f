"""Running the jobs of an in-process node at once, as its completion tick and worker would on their schedules."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from dicom_node.config import load_settings
from dicom_node.ingest.completion import CompletionRule
from dicom_node.models.threshold import ThresholdModel
from dicom_node.pipeline import Pipeline, model_key
from dicom_node.retry import RetryPolicy
from dicom_node.ticks import completion_tick
from dicom_node.worker import Worker

if TYPE_CHECKING:
    from tests.conftest import RunningNode


def complete_and_run(node: RunningNode) -> int:
    """Complete every study received so far and run its job with the threshold model; how many jobs ran.

    Done in this process with a zero quiet period, so a test need not wait for
    the node's own schedule; results are built and recorded as in production.
    """
    settings = load_settings(node.config.write())
    model = ThresholdModel()
    completion_tick(node.sessions, CompletionRule(quiet_period=timedelta(0), max_open=timedelta(hours=1)),
                    model_key=model_key(model), max_attempts=3)
    worker = Worker(sessions=node.sessions, run_job=Pipeline(settings, node.sessions, node.store, model).run,
                    destinations={}, lease=timedelta(minutes=5), heartbeat_every=timedelta(seconds=30),
                    policy=RetryPolicy.from_settings(settings.jobs.retry))
    return worker.run_available()
