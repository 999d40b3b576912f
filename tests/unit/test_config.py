"""Settings: the example runs as is, and every bad key or value is named."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node import cli as cli_module
from dicom_node.models.loading import load_configured_model
from dicom_node.config import load_settings
from dicom_node.errors import ConfigError
from tests.support.node import REPO, cli

EXAMPLE = REPO / "config" / "dicom-node.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_example_config_is_valid_and_covers_every_section() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.node.ae_title == "DICOMNODE"
    assert settings.node.allowed_callers, "the example should show how to allow a caller"
    assert settings.storage.duplicate_policy == "keep_first"
    assert settings.database.url.startswith("sqlite:///")
    assert settings.completion.quiet_period_s == 30
    assert settings.storage.min_free_mb > 0
    assert settings.tls.enabled is False


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nae_title = "X"\nallow_any_caller = true\nprot = 104\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == ["node.prot: unknown key (did you mean 'port'?)"]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[node]
ae_title = "THIS_TITLE_IS_FAR_TOO_LONG"
port = 70000
allow_any_caller = true

[storage]
duplicate_policy = "sometimes"

[completion]
quiet_period_s = -1

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "10.0.0.1"
port = "not a port"
""",
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    keys = sorted(problem.split(":")[0] for problem in info.value.problems)
    assert keys == [
        "completion.quiet_period_s",
        "destinations[0].port",
        "node.ae_title",
        "node.port",
        "storage.duplicate_policy",
    ]


def test_listener_without_allowed_callers_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, '[node]\nae_title = "NODE"\n'))
    assert "allowed_callers" in info.value.problems[0]


def test_tls_needs_its_files(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[node]\nallow_any_caller = true\n[tls]\nenabled = true\nrequire_client_certificate = true\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    [problem] = info.value.problems
    assert problem.startswith("tls:")
    assert "certificate is required" in problem and "ca_bundle is required" in problem


def test_allowed_caller_host_may_be_a_network(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[[node.allowed_callers]]\nae_title = "PACS"\nhost = "192.0.2.0/24"\n',
    )
    node = load_settings(path).node
    assert node.admits("PACS", "192.0.2.17")
    assert not node.admits("PACS", "198.51.100.1")
    assert not node.admits("OTHER", "192.0.2.17")


def test_environment_overrides_database_url_and_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path, '[node]\nallow_any_caller = true\n[database]\nurl = "sqlite:///a.db"\n')
    monkeypatch.setenv("DICOM_NODE_DATABASE__URL", "postgresql+psycopg://u:secret@db/dicom_node")
    monkeypatch.setenv("DICOM_NODE_TLS__PRIVATE_KEY_PASSWORD", "hunter2")
    settings = load_settings(path)
    assert settings.database.url == "postgresql+psycopg://u:secret@db/dicom_node"
    assert settings.tls.private_key_password is not None
    assert settings.tls.private_key_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(settings)


def test_invalid_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write(tmp_path, "[node\n"))
    assert "not valid TOML" in info.value.problems[0]


def test_config_check_command_prints_every_problem(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nallow_any_caller = true\nport = 0\n[storage]\nmin_free_mb = -5\n')
    result = cli("config", "check", str(path))
    assert result.returncode == 1
    assert "node.port:" in result.stdout
    assert "storage.min_free_mb:" in result.stdout
    assert "2 problem(s)" in result.stdout
    ok = cli("config", "check", str(EXAMPLE))
    assert ok.returncode == 0, ok.stdout + ok.stderr


def _without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))


def test_a_model_without_pytorch_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit status 2, which the units do not restart: a restart loop cannot install PyTorch."""
    _without_torch(monkeypatch)
    settings = load_settings(EXAMPLE)
    assert settings.analysis.model == "classifier+unet"
    with pytest.raises(ConfigError, match="needs PyTorch"):
        load_configured_model(settings.analysis)
    monkeypatch.setattr(cli_module.model_commands, "register", lambda *_: None)
    monkeypatch.setattr(cli_module, "app", lambda: load_configured_model(settings.analysis))
    with pytest.raises(SystemExit) as info:
        cli_module.main()
    assert info.value.code == 2
    assert "RestartPreventExitStatus=2" in (REPO / "systemd" / "dicom-node-worker.service").read_text()


def test_every_unit_refuses_to_restart_into_a_configuration_or_migration_error() -> None:
    """Exit 2 (bad configuration) and 3 (database not migrated) need an operator, not a restart loop."""
    units = sorted((REPO / "systemd").glob("*.service"))
    assert units
    for unit in units:
        lines = [line for line in unit.read_text().splitlines() if line.startswith("RestartPreventExitStatus=")]
        assert lines and set(lines[0].split("=", 1)[1].split()) == {"2", "3"}, unit.name


def test_config_check_warns_when_the_model_needs_pytorch_that_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    _without_torch(monkeypatch)
    result = CliRunner().invoke(cli_module.app, ["config", "check", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert "warning: [analysis] model = 'classifier+unet' needs PyTorch" in result.output
    assert result.output.rstrip().endswith(": OK")


def test_config_check_names_the_environment_when_an_override_is_set() -> None:
    env = {**os.environ, "DICOM_NODE_NODE__PORT": "notaport"}
    result = cli("config", "check", str(EXAMPLE), env=env)
    assert result.returncode == 1
    assert "node.port (environment variable DICOM_NODE_NODE__PORT):" in result.stdout, result.stdout
    assert "or the environment (DICOM_NODE_NODE__PORT)" in result.stdout, result.stdout


def test_a_misspelt_environment_variable_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in a variable of the service's environment file is named as the administrator wrote it."""
    path = _write(tmp_path, "[node]\nallow_any_caller = true\n")
    monkeypatch.setenv("DICOM_NODE_NODE__PROT", "104")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        "node.prot (environment variable DICOM_NODE_NODE__PROT): unknown key (did you mean 'port'?)"
    ]
    # A misspelt section would otherwise be ignored without a word (pydantic-settings skips it).
    monkeypatch.delenv("DICOM_NODE_NODE__PROT")
    monkeypatch.setenv("DICOM_NODE_NODEE__PORT", "104")
    monkeypatch.setenv("DICOM_NODE_FAULT_TRIALS", "3")  # no section part: not a setting, not a problem
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == [
        "environment variable DICOM_NODE_NODEE__PORT: no settings section 'nodee' (did you mean DICOM_NODE_NODE__...?)"
    ]


def test_relative_paths_are_relative_to_the_settings_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same --config finds the same database and storage from any directory."""
    folder = tmp_path / "site" / "etc"
    folder.mkdir(parents=True)
    (folder / "ca.pem").write_text("not checked until used", encoding="utf-8")
    path = folder / "node.toml"
    path.write_text(
        '[node]\nallow_any_caller = true\n[storage]\nroot = "../data/storage"\n'
        '[database]\nurl = "sqlite:///../data/node.db"\n[tls]\nca_bundle = "ca.pem"\n',
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("..") / "site" / "etc" / "node.toml")
    assert settings.storage.root == tmp_path / "site" / "data" / "storage"
    assert settings.database.url == f"sqlite:///{tmp_path / 'site' / 'data' / 'node.db'}"
    assert settings.tls.ca_bundle == folder / "ca.pem"  # checked to exist relative to the file, too
    # A default is anchored the same way: the audit file was not in the file.
    assert settings.audit.file == folder / ".dicom-node" / "audit.log"
    # A path given in the environment is read as a shell reads it: from the working directory.
    monkeypatch.setenv("DICOM_NODE_STORAGE__ROOT", "here")
    monkeypatch.setenv("DICOM_NODE_DATABASE__URL", "sqlite:///db/x.db")
    settings = load_settings(path)
    assert settings.storage.root == elsewhere / "here"
    assert settings.database.url == f"sqlite:///{elsewhere / 'db' / 'x.db'}"
    # Absolute paths, other databases and in-memory SQLite are left as they are.
    monkeypatch.setenv("DICOM_NODE_DATABASE__URL", "postgresql+psycopg://u:p@db/n")
    assert load_settings(path).database.url == "postgresql+psycopg://u:p@db/n"
    monkeypatch.setenv("DICOM_NODE_DATABASE__URL", "sqlite://")
    assert load_settings(path).database.url == "sqlite://"


def test_the_example_puts_its_files_in_the_checkouts_dicom_node_folder(tmp_path: Path) -> None:
    """config/dicom-node.toml and a copy of it in .dicom-node/ (the README's first study) name the same files."""
    in_place = load_settings(EXAMPLE)
    assert in_place.storage.root == REPO / ".dicom-node" / "storage"
    assert in_place.database.url == f"sqlite:///{REPO / '.dicom-node' / 'dicom-node.db'}"
    assert in_place.audit.file == REPO / ".dicom-node" / "audit.log"
    checkout = tmp_path / "checkout"
    names = []
    for folder in ("config", ".dicom-node"):
        copy = checkout / folder / "dicom-node.toml"
        copy.parent.mkdir(parents=True)
        copy.write_text(EXAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
        settings = load_settings(copy)
        names.append((settings.storage.root, settings.database.url, settings.audit.file))
    assert names[0] == names[1] == (
        checkout / ".dicom-node" / "storage",
        f"sqlite:///{checkout / '.dicom-node' / 'dicom-node.db'}",
        checkout / ".dicom-node" / "audit.log",
    )


def test_a_misspelt_key_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[node]\nallow_any_caller = true\nprot = 104\n[jobs.retry]\nmax_atempts = 3\n'
        '[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = 104\nobjcts = ["sr"]\n'
        '[observabilty]\nport = 9110\n[storage]\nzzz = 1\n',
    )
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert sorted(info.value.problems) == [
        "destinations[0].objcts: unknown key (did you mean 'objects'?)",
        "jobs.retry.max_atempts: unknown key (did you mean 'max_attempts'?)",
        "node.prot: unknown key (did you mean 'port'?)",
        "observabilty: unknown key (did you mean 'observability'?)",
        "storage.zzz: unknown key",  # nothing close: no guess
    ]


def test_a_missing_settings_file_says_where_it_looked_and_how_to_point_at_it(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "status"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert f"config/dicom-node.toml in {tmp_path}" in result.stderr, result.stderr
    assert "--config PATH or set DICOM_NODE_CONFIG=PATH" in result.stderr
    assert list(tmp_path.iterdir()) == [], "a read-only command created something"


def test_config_check_takes_the_file_from_config_or_the_environment(tmp_path: Path) -> None:
    bad = _write(tmp_path, "[node]\nallow_any_caller = true\nport = 0\n")
    by_option = cli("config", "check", "--config", str(bad))
    assert by_option.returncode == 1 and "node.port:" in by_option.stdout, by_option.stdout + by_option.stderr
    by_environment = cli("config", "check", env={**os.environ, "DICOM_NODE_CONFIG": str(EXAMPLE)})
    assert by_environment.returncode == 0 and by_environment.stdout.rstrip().endswith(f"{EXAMPLE}: OK")
    # A path given as the argument wins over the environment.
    both = cli("config", "check", str(bad), env={**os.environ, "DICOM_NODE_CONFIG": str(EXAMPLE)})
    assert both.returncode == 1


def test_viewer_url_must_be_an_http_template_with_the_study_uid(tmp_path: Path) -> None:
    base = '[node]\nallow_any_caller = true\n[observability]\nviewer_url = "{}"\n'
    ok = load_settings(_write(tmp_path, base.format("https://ohif.example/viewer?StudyInstanceUIDs={study_uid}")))
    assert ok.observability.viewer_url is not None
    for bad, why in (("https://ohif.example/viewer", "must contain {study_uid}"), ("javascript:{study_uid}", "http:// or https://")):
        with pytest.raises(ConfigError) as info:
            load_settings(_write(tmp_path, base.format(bad)))
        assert why in info.value.problems[0], info.value.problems


def test_a_database_url_that_is_not_a_url_is_a_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nallow_any_caller = true\n[database]\nurl = "not a url"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert info.value.problems == ["database: url must be a sqlite:/// or postgresql+psycopg:// URL"]
