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

from pydantic import BaseModel
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
    description: str | None = None  # the key's description in config.py, where it has one


#: Keys whose value, once read, differs from what was written, and why (shown beside the source).
NORMALISED = {"identity.uid_root": "a final '.' is added once read: every UID is this root plus numbers"}


def describe(key: str) -> str | None:
    """The description config.py gives ``key`` (a dotted name), or None."""
    model: Any = Settings
    *sections, name = key.split(".")
    for section in sections:
        field = model.model_fields.get(section)
        model = field.annotation if field is not None else None
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
    field = model.model_fields.get(name)
    return field.description if field is not None else None


def section_purpose(section: str) -> str | None:
    """The first line of a section's docstring: what the section is for."""
    field = Settings.model_fields.get(section)
    model = field.annotation if field is not None else None
    if isinstance(model, type) and issubclass(model, BaseModel) and model.__doc__:
        return model.__doc__.strip().splitlines()[0]
    return None


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
    lines = []
    for key, value in _leaves("", dump):
        source = _source(key, raw, overrides)
        if key in NORMALISED and source != "default":
            source += f"; {NORMALISED[key]}"
        lines.append(SettingLine(key, _masked(key, value), source, describe(key)))
    return lines


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


def render(lines: list[SettingLine], *, explain: bool = False) -> str:
    """``[section]`` blocks of ``key = value  # source`` lines, in the settings' own order.

    ``explain``: each section's purpose above it and each key's description (where
    config.py gives one) above the key, as TOML comments.
    """
    out: list[str] = []
    section = None
    for line in lines:
        head, _, name = line.key.rpartition(".")
        if head != section:
            out.append(f"\n[{head}]" if head else "")
            purpose = section_purpose(head.split(".")[0]) if explain and head else None
            if purpose:
                out.append(f"# {purpose}")
            section = head
        if explain and line.description:
            out.append(f"# {name}: {line.description}")
        text = f"{name} = {_toml(line.value)}"
        out.append(f"{text:<48}  # {line.source}")
    return "\n".join(out).lstrip("\n") + "\n"
