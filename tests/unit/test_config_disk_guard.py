"""A disk guard that refuses every C-STORE from the first is said at start-up and by `config check`."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node import cli as cli_module
from dicom_node.config import load_settings
from dicom_node.db import migrate
from dicom_node.db.session import create_db_engine
from dicom_node.disk_guard import DiskGuardCheck, check_disk_guard, disk_guard_warning
from dicom_node.node import Node, SupervisingNode
from tests.support.node import NodeConfig


def test_a_guard_larger_than_the_disk_or_its_free_space_is_a_warning_with_the_numbers_and_the_key() -> None:
    where = Path("/srv/dicom")
    larger_than_disk = DiskGuardCheck(guard_mb=5000, total_mb=4000, free_mb=3000, measured=where)
    assert larger_than_disk.warning() == (
        "storage.min_free_mb = 5000 MiB is more than the whole file system under /srv/dicom (4000 MiB): "
        "every C-STORE will be refused (A700); lower storage.min_free_mb"
    )
    larger_than_free = DiskGuardCheck(guard_mb=3500, total_mb=4000, free_mb=3000, measured=where)
    assert larger_than_free.warning() == (
        "storage.min_free_mb = 3500 MiB is more than the free space under /srv/dicom (3000 MiB free of 4000 MiB): "
        "every C-STORE is refused (A700) until space is freed there or storage.min_free_mb is lowered"
    )
    assert DiskGuardCheck(guard_mb=3000, total_mb=4000, free_mb=3000, measured=where).warning() is None  # at the guard: stores


def test_a_storage_root_not_made_yet_is_measured_on_its_nearest_parent_and_not_created(tmp_path: Path) -> None:
    root = tmp_path / "not" / "yet"
    check = check_disk_guard(root, 1)
    assert check.measured == tmp_path and not (tmp_path / "not").exists()
    assert check.free_mb == shutil.disk_usage(tmp_path).free // 2**20
    assert disk_guard_warning(root, 1) is None
    assert "more than the whole file system" in (disk_guard_warning(root, 2**40) or "")


def test_config_check_warns_of_a_guard_no_disk_can_meet_and_still_passes(tmp_path: Path) -> None:
    path = NodeConfig(workdir=tmp_path / "node", min_free_mb=2**40).write()
    result = CliRunner().invoke(cli_module.app, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert f"warning: storage.min_free_mb = {2**40} MiB is more than the whole file system under " in result.output
    assert result.output.rstrip().endswith(f"{path}: OK")
    fine = CliRunner().invoke(cli_module.app, ["config", "check", str(NodeConfig(workdir=tmp_path / "ok").write())])
    assert fine.exit_code == 0 and "warning" not in fine.output, fine.output


@pytest.mark.parametrize("supervising", [False, True], ids=["scp", "run"])
def test_the_start_up_log_warns_once_of_a_guard_larger_than_the_free_space(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, supervising: bool
) -> None:
    free_mb = shutil.disk_usage(tmp_path).free // 2**20
    path = NodeConfig(workdir=tmp_path / "node", min_free_mb=free_mb + 1024).write()
    settings = load_settings(path)
    engine = create_db_engine(settings.database)
    migrate.upgrade(engine, "head")
    caplog.set_level(logging.WARNING)
    if supervising:
        SupervisingNode.build(path, settings, engine, worker=False)
    else:
        node = Node.build(path, settings, engine, listener=True, worker=False)
        node.start()
        node.stop()
    engine.dispose()
    warnings = [r.getMessage() for r in caplog.records if "storage.min_free_mb" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"storage.min_free_mb = {free_mb + 1024} MiB is more than the free space under ")
