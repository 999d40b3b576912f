"""The conformance statement: current in the repository, and true of the listener it describes."""

from __future__ import annotations

import difflib
import os
import re
from typing import Any

import pytest
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SegmentationStorage,
)
from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_node.config import Settings, load_settings
from dicom_node.conformance import (
    VERIFICATION_TRANSFER_SYNTAXES,
    created_objects,
    render_conformance_statement,
)
from dicom_node.dicom.contexts import (
    ACCEPTED_TRANSFER_SYNTAXES,
    STORAGE_CLASSES,
    VERIFICATION_CLASS,
)
from dicom_node.dicom.statuses import STORE_REFUSALS
from dicom_node.ingest.scp import StorageSCP
from tests.support.node import REPO

EXAMPLE = REPO / "config" / "dicom-node.toml"
COMMITTED = REPO / "config" / "conformance-statement.md"
REGENERATE = (
    ".venv/bin/dicom-node conformance --config config/dicom-node.toml "
    "--output config/conformance-statement.md"
)


@pytest.fixture(autouse=True)
def _no_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed copy is of the example file alone: no DICOM_NODE_* overrides."""
    for name in [n for n in os.environ if n.upper().startswith("DICOM_NODE_")]:
        monkeypatch.delenv(name)


def _section(text: str, heading: str) -> str:
    """The body of the section whose heading contains ``heading``, up to the next heading."""
    match = re.search(rf"^#+ [\d.]+ {re.escape(heading)}\n(.*?)(?=^#)", text, re.S | re.M)
    assert match, f"no section {heading!r}"
    return match[1]


def test_committed_statement_is_current() -> None:
    rendered = render_conformance_statement(load_settings(EXAMPLE))
    committed = COMMITTED.read_text(encoding="utf-8") if COMMITTED.exists() else ""
    if rendered != committed:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    rendered.splitlines(keepends=True),
                    str(COMMITTED.relative_to(REPO)),
                    "rendered",
                )
            )[:40]
        )
        pytest.fail(
            f"config/conformance-statement.md is stale; regenerate it (without DICOM_NODE_* "
            f"variables set) with:\n    {REGENERATE}\n\n{diff}"
        )


def test_every_context_the_listener_offers_is_stated() -> None:
    settings = load_settings(EXAMPLE)
    # application_entity() reads only the node settings; store, catalog and committer are unused.
    nothing: Any = None
    ae = StorageSCP(settings.node, nothing, nothing, nothing).application_entity()
    offered = {cx.abstract_syntax: list(cx.transfer_syntax) for cx in ae.supported_contexts}
    text = render_conformance_statement(settings)
    accepted = _section(text, "Activity: Receive Images")

    assert offered.pop(VERIFICATION_CLASS) == list(VERIFICATION_TRANSFER_SYNTAXES)
    assert set(offered) == {row.uid for row in STORAGE_CLASSES}
    for uid, syntaxes in offered.items():
        assert f"| {uid} |" in accepted
        assert syntaxes == list(ACCEPTED_TRANSFER_SYNTAXES)
    stated_order = re.findall(r"^\| [^|]+ \| (1\.2\.840\.10008\.1\.2[\d.]*) \|$", accepted, re.M)
    assert stated_order == list(ACCEPTED_TRANSFER_SYNTAXES), "the order is the node's preference"


def test_sender_states_only_the_objects_the_node_creates() -> None:
    settings = load_settings(EXAMPLE)
    proposed = _section(render_conformance_statement(settings), "Activity: Send Results")
    rows = re.findall(r"^\| [^|]+ \| ([\d.]+) \| [^|]+ \| ([\d.]+) \| SCU \|", proposed, re.M)
    # What the sender really proposes: the stored Explicit VR LE, and the default Implicit VR LE.
    assert rows == [
        (str(obj.sop_class_uid), syntax)
        for obj in created_objects(settings)
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    ]
    assert ACCEPTED_TRANSFER_SYNTAXES[0] == ExplicitVRLittleEndian
    assert {SegmentationStorage, Comprehensive3DSRStorage} <= {uid for uid, _ in rows}


def test_every_refusal_status_is_stated() -> None:
    text = render_conformance_statement(load_settings(EXAMPLE))
    for refusal in STORE_REFUSALS:
        assert f"| 0x{refusal.code:04X} | {refusal.service_status} | {refusal.description()} |" in text
    assert "| 0x0000 | Success |" in text
    assert "| 0xB000, 0xB006, 0xB007 and any other warning | Warning |" in text


def test_implementation_identity_is_pynetdicoms() -> None:
    text = render_conformance_statement(load_settings(EXAMPLE))
    assert f"| Implementation Class UID | {PYNETDICOM_IMPLEMENTATION_UID} |" in text
    assert f"| Implementation Version Name | {PYNETDICOM_IMPLEMENTATION_VERSION} |" in text


def test_settings_shape_the_statement() -> None:
    settings = Settings(
        node={
            "ae_title": "ICHNODE",
            "bind_address": "0.0.0.0",
            "port": 104,
            "allowed_callers": [{"ae_title": "MAINPACS", "host": "10.1.0.0/16"}],
            "max_associations": 4,
        },
        storage={"duplicate_policy": "overwrite"},
        destinations=[{"name": "pacs", "ae_title": "MAINPACS", "host": "10.1.2.3", "port": 104, "objects": ["sr"]}],
        outputs={"send_empty_seg": True},
    )
    text = render_conformance_statement(settings)
    assert "| dicom-node | ICHNODE | 0.0.0.0 | 104 |" in text
    assert "| MAINPACS | 10.1.0.0/16 |" in text
    assert "| pacs | MAINPACS | 10.1.2.3 | 104 | No | Comprehensive 3D SR Storage |" in text
    assert "at most 4 concurrent associations" in text
    assert "the new copy replaces the stored one" in text
    assert "A negative study also gets a SEG with an empty segment" in text
    assert "#### 4.2.1 ICHNODE AE Specification" in text


def test_table_of_contents_links_resolve_and_sections_cited_exist() -> None:
    text = render_conformance_statement(load_settings(EXAMPLE))
    headings = re.findall(r"^#{2,6} (\d[\d.]* .+)$", text, re.M)
    anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
    links = re.findall(r"^\s*- \[[^\]]+\]\(#([^)]+)\)$", text, re.M)
    assert len(links) == len(headings)
    assert set(links) == anchors
    numbers = {h.split(" ", 1)[0] for h in headings}
    for cited in re.findall(r"section (\d[\d.]*\d)", text):
        assert cited in numbers, f"section {cited} is cited but does not exist"
