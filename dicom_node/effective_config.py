"""The configuration a command actually runs with, and where each value came from.

A value can come from three places (the environment wins over the file, the file over
the default; see :class:`dicom_node.config.Settings`). An administrator who set
``DICOM_NODE_DATABASE__URL`` in a systemd environment file months ago cannot see it in
the TOML file, so ``dicom-node config show`` prints every key with its source. Secrets
are masked: the output is meant to be pasted into a ticket.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from dicom_node.config import Settings, environment_keys

MASK = "********"
#: Keys whose values are never printed, wherever they come from.
SECRET_WORDS = ("password", "secret", "token")


@dataclass(frozen=True)
class SettingLine:
    """One key of the effective configuration: its dotted name, its value and its source."""

    key: str
    value: Any
    source: str  # "file", "default" or "environment (NAME)"


def environment_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """Dotted key -> variable name for every ``DICOM_NODE_<SECTION>__<KEY>`` set (see :func:`environment_keys`)."""
    return environment_keys(environ)


def _in_file(raw: Mapping[str, Any], key: str) -> bool:
    node: Any = raw
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def _source(key: str, raw: Mapping[str, Any], overrides: dict[str, str]) -> str:
    # DICOM_NODE_DATABASE (a JSON object) overrides the whole section, so a prefix counts.
    parts = key.split(".")
    for depth in range(len(parts), 0, -1):
        name = overrides.get(".".join(parts[:depth]))
        if name is not None:
            return f"environment ({name})"
    return "file" if _in_file(raw, key) else "default"


def _masked(key: str, value: Any) -> Any:
    if value is None:
        return None
    if any(word in key.rsplit(".", 1)[-1] for word in SECRET_WORDS):
        return MASK
    if key == "database.url":
        return make_url(str(value)).render_as_string(hide_password=True)
    return value


def _leaves(prefix: str, value: Any) -> list[tuple[str, Any]]:
    """Dotted keys of scalar values; a list (destinations, allowed callers) is one value."""
    if isinstance(value, dict):
        return [leaf for key, inner in value.items() for leaf in _leaves(f"{prefix}{key}.", inner)]
    return [(prefix.rstrip("."), value)]


def effective_settings(path: Path, settings: Settings, environ: Mapping[str, str] | None = None) -> list[SettingLine]:
    """Every key of ``settings`` (loaded from ``path``) with its masked value and source."""
    environ = os.environ if environ is None else environ
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    overrides = environment_overrides(environ)
    dump = settings.model_dump(mode="json")
    return [
        SettingLine(key, _masked(key, value), _source(key, raw, overrides))
        for key, value in _leaves("", dump)
    ]


def _toml(value: Any) -> str:
    """A TOML rendering of one value (inline tables for lists of sections)."""
    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def render(lines: list[SettingLine]) -> str:
    """``[section]`` blocks of ``key = value  # source`` lines, in the settings' own order."""
    out: list[str] = []
    section = None
    for line in lines:
        head, _, name = line.key.rpartition(".")
        if head != section:
            out.append(f"\n[{head}]" if head else "")
            section = head
        text = f"{name} = {_toml(line.value)}"
        out.append(f"{text:<48}  # {line.source}")
    return "\n".join(out).lstrip("\n") + "\n"
