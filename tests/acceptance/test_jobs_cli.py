"""`dicom-node jobs` and `retention` as an operator uses them: list, show, retry, cancel, delete."""

from __future__ import annotations

from pathlib import Path

from dicom_node.config import load_settings
from dicom_node.db import migrate
from dicom_node.db.models import Job, JobState, Study, StudyState, utcnow
from dicom_node.db.session import create_db_engine, session_factory
from tests.support.node import NodeConfig, cli


def test_retry_and_cancel_through_the_cli(tmp_path: Path) -> None:
    path = NodeConfig(workdir=tmp_path).write()
    engine = create_db_engine(load_settings(path).database)
    migrate.upgrade(engine)
    with session_factory(engine).begin() as session:
        study = Study(study_instance_uid="1.2.3", state=StudyState.COMPLETE, generation=1,
                      opened_at=utcnow(), last_received_at=utcnow())
        session.add(study)
        session.flush()
        session.add(Job(study_id=study.id, study_generation=1, model_key="m@1", state=JobState.DEAD,
                        attempts=3, max_attempts=3, last_error="no series qualifies for analysis (modality SR)"))
    engine.dispose()
    config = ("--config", str(path))
    listed = cli("jobs", "list", *config)
    assert "dead" in listed.stdout and "no series qualifies" in listed.stdout, listed.stdout
    assert "error      no series qualifies" in cli("jobs", "show", "1", *config).stdout
    refused = cli("jobs", "cancel", "1", *config)
    assert refused.returncode == 1 and "is not queued or running" in refused.stderr
    assert cli("jobs", "retry", "1", *config).stdout.strip() == "job 1 queued"
    assert "queued" in cli("jobs", "list", *config).stdout
    assert cli("jobs", "cancel", "1", *config).stdout.strip() == "job 1 cancelled"
    assert cli("jobs", "show", "7", *config).returncode == 1


def test_retention_by_hand_refuses_while_retention_is_disabled(tmp_path: Path) -> None:
    """A node that never chose a retention period must not lose studies to the default one."""
    path = NodeConfig(workdir=tmp_path).write()
    engine = create_db_engine(load_settings(path).database)
    migrate.upgrade(engine)
    engine.dispose()
    assert load_settings(path).retention.enabled is False
    refused = cli("retention", "--config", str(path))
    assert refused.returncode == 1 and "retention is disabled" in refused.stderr
    preview = cli("retention", "--dry-run", "--config", str(path))
    assert preview.returncode == 0
    assert "retention is disabled" in preview.stdout and "nothing is due for deletion" in preview.stdout
