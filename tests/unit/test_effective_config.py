"""`dicom-node config show`: every key with its value and where it came from, secrets masked."""

from __future__ import annotations

import os
from pathlib import Path
from typing import get_args

from pydantic import BaseModel

from dicom_node.config import Settings, load_settings
from dicom_node.effective_config import MASK, describe, effective_settings, render
from tests.support.node import REPO, cli

TOML = """
[node]
ae_title = "FROMFILE"
allow_any_caller = true

[tls]
private_key_password = "hunter2"

[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "127.0.0.1"
port = 104
"""


def _lines(tmp_path: Path, environ: dict[str, str]) -> dict[str, tuple[object, str]]:
    path = tmp_path / "node.toml"
    path.write_text(TOML, encoding="utf-8")
    old = dict(os.environ)
    os.environ.update(environ)
    try:
        settings = load_settings(path)
    finally:
        os.environ.clear()
        os.environ.update(old)
    return {line.key: (line.value, line.source) for line in effective_settings(path, settings, environ)}


def test_each_key_says_whether_it_came_from_the_file_the_environment_or_the_default(tmp_path: Path) -> None:
    env = {"DICOM_NODE_DATABASE__URL": "postgresql+psycopg://node:s3cret@db.example/node", "DICOM_NODE_NODE__PORT": "11113"}
    lines = _lines(tmp_path, env)
    assert lines["node.ae_title"] == ("FROMFILE", "file")
    assert lines["node.port"] == (11113, "environment (DICOM_NODE_NODE__PORT)")
    assert lines["completion.quiet_period_s"] == (30.0, "default")
    assert lines["destinations"][1] == "file"
    # Secrets never show: the TLS key password and the password inside the database URL.
    assert lines["tls.private_key_password"] == (MASK, "file")
    assert lines["database.url"] == ("postgresql+psycopg://node:***@db.example/node", "environment (DICOM_NODE_DATABASE__URL)")


def test_config_show_prints_the_effective_settings_without_secrets(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(TOML, encoding="utf-8")
    env = {**os.environ, "DICOM_NODE_CONFIG": str(path), "DICOM_NODE_DATABASE__URL": "postgresql+psycopg://n:s3cret@db/n"}
    result = cli("config", "show", env=env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "hunter2" not in out and "s3cret" not in out
    assert f"# settings file: {path}" in out
    assert "# environment overrides: DICOM_NODE_DATABASE__URL" in out
    assert '[node]\nae_title = "FROMFILE"' in out and "# file" in out
    assert "# environment (DICOM_NODE_DATABASE__URL)" in out
    assert "quiet_period_s = 30.0" in out
    # What it prints is TOML a reader recognises: [section] headers in the settings' order.
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert headers[:3] == ["[node]", "[storage]", "[database]"]


def test_render_aligns_values_and_sources() -> None:
    from dicom_node.effective_config import SettingLine

    text = render([SettingLine("a.x", 1, "file"), SettingLine("a.y", None, "default"), SettingLine("b.z", True, "default")])
    assert text.splitlines() == [
        "[a]",
        f"{'x = 1':<48}  # file",
        f"{'y = (not set)':<48}  # default",
        "",
        "[b]",
        f"{'z = true':<48}  # default",
    ]


def test_only_variables_of_a_settings_section_count_as_overrides() -> None:
    from dicom_node.effective_config import environment_overrides

    environ = {"DICOM_NODE_CONFIG": "/x.toml", "DICOM_NODE_FAULT_TRIALS": "4", "DICOM_NODE_TLS__ENABLED": "1", "HOME": "/"}
    assert environment_overrides(environ) == {"tls.enabled": "DICOM_NODE_TLS__ENABLED"}


def test_config_show_explain_says_what_sections_and_keys_are_for_and_why_uid_root_ends_in_a_dot() -> None:
    """Each section's purpose and each described key's description as TOML comments; the
    dot that reading adds to uid_root is explained, not left to look like the file's."""
    example = str(Path(__file__).resolve().parents[2] / "config" / "dicom-node.toml")
    plain = cli("config", "show", "--config", example)
    explained = cli("config", "show", "--explain", "--config", example)
    assert plain.returncode == explained.returncode == 0, plain.stderr + explained.stderr
    assert "# min_free_mb: refuse C-STORE with 0xA700 below this free space" in explained.stdout
    assert "# Where received instances live" in explained.stdout
    assert "# min_free_mb:" not in plain.stdout
    uid_line = next(line for line in plain.stdout.splitlines() if line.startswith("uid_root = "))
    assert uid_line.split("#", 1)[1].strip() == "file; a final '.' is added once read: every UID is this root plus numbers"


def _fields_without_description(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Dotted names of the fields of ``model`` and of every section inside it that have no description
    (a section itself is described by its docstring, the purpose ``--explain`` prints above it)."""
    missing = []
    for name, field in model.model_fields.items():
        section = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if not (field.description or (section.__doc__ if section else "") or "").strip():
            missing.append(prefix + name)
        annotation = field.annotation
        for inner in (annotation, *get_args(annotation)):  # list[Destination], Path | None
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                missing.extend(_fields_without_description(inner, f"{prefix}{name}."))
    return missing


def test_every_key_has_a_description_in_the_settings_models() -> None:
    """`config show --explain` reads the Field descriptions: one source, and none left out,
    including the keys inside [[destinations]] and [[node.allowed_callers]]."""
    assert _fields_without_description(Settings) == []
    path = REPO / "config" / "dicom-node.toml"
    lines = effective_settings(path, load_settings(path))
    assert len(lines) > 80 and [line.key for line in lines if not line.description] == []
    assert describe("delivery.retry.max_delay_s") == "the longest wait between two tries, in seconds"
    shown = render(lines, explain=True)
    assert "# port: TCP port of the DICOM listener (104 is the well-known one)" in shown
