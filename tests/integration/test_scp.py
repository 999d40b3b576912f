"""The listener against a real pynetdicom SCU on loopback: statuses, storage, DB rows."""

from __future__ import annotations

import json
import os
import stat
import threading
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.uid import MRImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import func, select

from dicom_node.db.models import Instance, Series, Study
from dicom_node.dicom.storage import instance_path, temporary_prefix
from dicom_node.ingest import scp
from dicom_node.ingest.instance import ReceivedInstance
from dicom_node.metrics import Metrics
from dicom_node.ingest.scp import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    OUT_OF_RESOURCES,
    SUCCESS,
)
from tests.conftest import RunningNode, start_node
from tests.support.disk import fill_to, small_tmpfs
from tests.support.node import (
    NODE_AE,
    NodeConfig,
    dataset_bytes,
    status_code,
    store_files,
    storescu_responses,
    wait_for,
)
from tests.support.synthetic_ct import SeriesSpec, write_series


def _counts(node: RunningNode) -> tuple[int, int, int]:
    with node.sessions() as session:
        return (
            session.scalar(select(func.count(Study.id))),
            session.scalar(select(func.count(Series.id))),
            session.scalar(select(func.count(Instance.id))),
        )


def _nothing_stored(node: RunningNode) -> None:
    assert node.stored_files() == [], "a refused instance left a file behind"
    assert _counts(node) == (0, 0, 0), "a refused instance left a database row behind"


@pytest.fixture
def one_slice(tmp_path: Path) -> Path:
    return write_series(SeriesSpec(n_slices=1, rows=64, columns=64), tmp_path / "in")[0]


def _rewrite(source: Path, target: Path, **changes: object) -> Path:
    """A copy of ``source`` with attributes changed (None deletes), meta kept as is."""
    ds = dcmread(source)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=False)
    return target


def test_stores_instance_byte_identical_and_records_it(node: RunningNode, one_slice: Path) -> None:
    [status] = store_files(node.port, [one_slice])
    assert status_code(status) == SUCCESS
    [stored] = [p for p in node.stored_files()]
    assert dataset_bytes(stored) == dataset_bytes(one_slice)
    ds = dcmread(one_slice)
    relative = stored.relative_to(node.store.root).as_posix()
    assert relative == f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    with node.sessions() as session:
        row = session.scalars(select(Instance)).one()
    assert row.path == relative
    assert row.size_bytes == stored.stat().st_size
    assert row.calling_ae_title == "TESTSCU"


def test_a_data_set_is_spooled_into_the_storage_and_linked_into_place(
    node: RunningNode, one_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spooled beside the storage, not in /tmp: under PrivateTmp with the storage on its own
    # volume, /tmp is another file system and each instance would be written twice.
    seen: list[tuple[Path, int]] = []
    read_received = scp.read_received

    def watching(source: Path, **kwargs: Any) -> ReceivedInstance:
        seen.append((source, source.stat().st_ino))
        return read_received(source, **kwargs)

    monkeypatch.setattr(scp, "read_received", watching)
    [status] = store_files(node.port, [one_slice])
    assert status_code(status) == SUCCESS
    [(spooled, inode)] = seen
    assert spooled.parent == node.store.incoming
    assert spooled.name.startswith(temporary_prefix())  # so the sweep knows whose it is
    [stored] = node.stored_files()  # the spooled name is gone, the stored one is the same file
    assert stored.stat().st_ino == inode
    assert stored.parent != node.store.incoming
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(stored.stat().st_mode) == 0o666 & ~umask  # as other files are made, not 0600


def test_a_handler_that_fails_unexpectedly_leaves_no_spool_file(
    node: RunningNode, one_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pynetdicom removes the spool file only after a handler that returned; ours removes it itself.
    def broken(source: Path, **kwargs: Any) -> ReceivedInstance:
        raise RuntimeError("a bug")

    monkeypatch.setattr(scp, "read_received", broken)
    [status] = store_files(node.port, [one_slice])
    assert status_code(status) == 0xC211  # pynetdicom's answer to a handler that raised
    _nothing_stored(node)


def test_a_request_pynetdicom_drops_leaves_no_spool_file(node: RunningNode, one_slice: Path) -> None:
    # A C-STORE whose command names a SOP Class no service knows: its data set is spooled in
    # full, then pynetdicom fails to serve it (and aborts) without calling the handler, which
    # is what would have removed the spool file.
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        request = C_STORE()
        request.MessageID = 1
        request.AffectedSOPClassUID = "1.2.826.0.1.3680043.10.1476.99.1"  # no such SOP Class
        request.AffectedSOPInstanceUID = dcmread(one_slice).SOPInstanceUID
        request.Priority = 2
        request.DataSet = BytesIO(dataset_bytes(one_slice))
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        for fragment in message.encode_msg(assoc.accepted_contexts[0].context_id, 16384):
            assoc.dul.send_pdu(fragment)
        wait_for(lambda: not assoc.is_established, 5.0, "the listener to end the association")
    finally:
        if assoc.is_established:
            assoc.abort()
    incoming = node.store.incoming
    wait_for(lambda: not any(incoming.iterdir()), 5.0, ".incoming to be empty")
    _nothing_stored(node)


@pytest.mark.parametrize("missing", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_refused_with_a900(
    node: RunningNode, one_slice: Path, tmp_path: Path, missing: str
) -> None:
    bad = _rewrite(one_slice, tmp_path / "bad.dcm", **{missing: None})
    [status] = store_files(node.port, [bad])
    assert status_code(status) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert missing in status.ErrorComment
    _nothing_stored(node)


def test_sop_class_not_matching_the_context_is_refused_with_a900(
    node: RunningNode, one_slice: Path, tmp_path: Path
) -> None:
    # The file meta (and so the C-STORE command and context) say CT; the data set says MR.
    bad = _rewrite(one_slice, tmp_path / "mr.dcm", SOPClassUID=MRImageStorage)
    [status] = store_files(node.port, [bad])
    assert status_code(status) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOP Class" in status.ErrorComment
    _nothing_stored(node)


def test_sop_instance_uid_differing_from_the_command_is_refused(
    node: RunningNode, one_slice: Path, tmp_path: Path
) -> None:
    bad = _rewrite(one_slice, tmp_path / "other.dcm", SOPInstanceUID=generate_uid())
    [status] = store_files(node.port, [bad])
    assert status_code(status) == DATASET_DOES_NOT_MATCH_SOP_CLASS
    _nothing_stored(node)


def test_truncated_stream_is_refused_with_c000(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(one_slice.read_bytes()[:-1000])
    [status] = store_files(node.port, [truncated])
    assert status_code(status) == CANNOT_UNDERSTAND
    assert "truncated" in status.ErrorComment
    _nothing_stored(node)


def test_unparseable_stream_is_refused_with_c000(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    raw = one_slice.read_bytes()
    meta_end = len(raw) - len(dataset_bytes(one_slice))
    garbage = tmp_path / "garbage.dcm"
    # A valid file meta followed by a data element header declaring a length past the end.
    garbage.write_bytes(raw[:meta_end] + b"\x08\x00\x18\x00UI\xff\x7f" + b"1.2.3")
    [status] = store_files(node.port, [garbage])
    assert status_code(status) == CANNOT_UNDERSTAND
    _nothing_stored(node)


def test_disk_guard_refuses_with_a700_and_leaves_no_file(tmp_path: Path, one_slice: Path) -> None:
    # A guard larger than any disk: the real free-space check trips.
    config = NodeConfig(workdir=tmp_path / "full", min_free_mb=2**40)
    running, stop = start_node(config)
    try:
        [status] = store_files(running.port, [one_slice])
        assert status_code(status) == OUT_OF_RESOURCES
        assert "guard" in status.ErrorComment
        _nothing_stored(running)
        # ...and the process still serves other associations.
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", running.port, ae_title=NODE_AE)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == SUCCESS
        assoc.release()
    finally:
        stop()  # type: ignore[operator]


def test_node_keeps_serving_after_each_bad_input(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "t.dcm"
    truncated.write_bytes(one_slice.read_bytes()[:-10])
    no_study = _rewrite(one_slice, tmp_path / "n.dcm", StudyInstanceUID=None)
    statuses = store_files(node.port, [truncated, no_study, one_slice])
    assert [status_code(s) for s in statuses] == [
        CANNOT_UNDERSTAND,
        DATASET_DOES_NOT_MATCH_SOP_CLASS,
        SUCCESS,
    ]
    assert _counts(node) == (1, 1, 1)
    assert len(node.stored_files()) == 1


def test_caller_not_allowed_is_rejected(node: RunningNode, caplog: pytest.LogCaptureFixture) -> None:
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (0x01, 0x03)
    # Recorded after the A-ASSOCIATE-RJ is out (the caller is not kept waiting on the audit).
    wait_for(
        lambda: any(
            r.getMessage() == "association rejected: calling AE title or host not allowed"
            and r.calling_ae_title == "INTRUDER"
            for r in caplog.records
        ),
        5,
        "the rejection's log line",
    )


def test_caller_from_wrong_host_is_rejected(tmp_path: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "n", allowed_callers=[("TESTSCU", "10.0.0.0/8")])
    running, stop = start_node(config)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", running.port, ae_title=NODE_AE)
        assert assoc.is_rejected
    finally:
        stop()  # type: ignore[operator]


def test_wrong_called_ae_title_is_rejected_logged_counted_and_audited(
    node_config: NodeConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The commonest PACS misconfiguration (a mistyped AE title) leaves a trace everywhere."""
    metrics = Metrics()
    running, stop = start_node(node_config, metrics=metrics, audit_file=tmp_path / "audit.log")
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", running.port, ae_title="SOMEONEELSE")
        assert assoc.is_rejected
        assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.diagnostic) == (0x01, 0x07)
        audit = tmp_path / "audit.log"
        wait_for(lambda: audit.exists() and audit.read_text().strip() != "", 5, "the rejection's audit line")
    finally:
        stop()  # type: ignore[operator]
    why = "called AE title 'SOMEONEELSE' is not ours"
    assert any(r.getMessage() == f"association rejected: {why}" and r.calling_ae_title == "TESTSCU" for r in caplog.records)
    assert metrics.associations.labels("rejected")._value.get() == 1
    (event,) = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert (event["event"], event["calling_ae_title"], event["detail"]) == ("rejected", "TESTSCU", why)


def test_the_association_limit_is_logged_and_counted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    running, stop = start_node(NodeConfig(workdir=tmp_path / "n", max_associations=1), metrics=metrics)
    try:
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", running.port, ae_title=NODE_AE)
        assert first.is_established
        second = ae.associate("127.0.0.1", running.port, ae_title=NODE_AE)
        assert second.is_rejected
        assert (second.acceptor.primitive.result, second.acceptor.primitive.result_source) == (0x02, 0x03)  # transient, limit
        first.release()
        wait_for(lambda: metrics.associations.labels("rejected")._value.get() == 1, 5, "the rejection's count")
    finally:
        stop()  # type: ignore[operator]
    assert any(
        r.getMessage() == "association rejected: association limit reached (node.max_associations = 1)"
        for r in caplog.records
    )
    assert metrics.associations.labels("rejected")._value.get() == 1


def test_uid_that_tries_to_escape_the_root_stays_inside(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        hostile = _rewrite(one_slice, tmp_path / "h.dcm", StudyInstanceUID="../../x", SeriesInstanceUID="..")
    [status] = store_files(node.port, [hostile])
    assert status_code(status) == SUCCESS
    [stored] = node.stored_files()
    assert stored.is_relative_to(node.store.root)
    assert ".." not in stored.relative_to(node.store.root).parts
    assert not (tmp_path / "x").exists()


def test_duplicate_keep_first_keeps_one_copy(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    changed = _rewrite(one_slice, tmp_path / "changed.dcm", SeriesDescription="RESENT")
    statuses = store_files(node.port, [one_slice, changed])
    assert [status_code(s) for s in statuses] == [SUCCESS, SUCCESS]
    [stored] = node.stored_files()
    assert dataset_bytes(stored) == dataset_bytes(one_slice)
    assert _counts(node)[2] == 1


def test_a_file_left_without_a_row_is_replaced_by_the_resend(node: RunningNode, one_slice: Path) -> None:
    """A crash after the link but before the data was durable leaves a final-named file that
    is incomplete and has no row (keep_first links a new name before fsyncing it): the
    sender got no success and resends, and the resend must replace that file, not be
    answered 'duplicate' and leave it there."""
    ds = dcmread(one_slice, stop_before_pixels=True)
    leftover = node.store.absolute(
        instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    )
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\x00" * 100)  # a crash before the data reached the disk
    [status] = store_files(node.port, [one_slice])
    assert status_code(status) == SUCCESS
    assert node.stored_files() == [leftover]
    assert dataset_bytes(leftover) == dataset_bytes(one_slice)
    assert _counts(node) == (1, 1, 1)


def test_duplicate_overwrite_replaces_the_copy(tmp_path: Path, one_slice: Path) -> None:
    config = NodeConfig(workdir=tmp_path / "ow", duplicate_policy="overwrite")
    running, stop = start_node(config)
    try:
        changed = _rewrite(one_slice, tmp_path / "changed.dcm", SeriesDescription="RESENT")
        statuses = store_files(running.port, [one_slice, changed])
        assert [status_code(s) for s in statuses] == [SUCCESS, SUCCESS]
        [stored] = running.stored_files()
        assert dataset_bytes(stored) == dataset_bytes(changed)
        assert _counts(running)[2] == 1
    finally:
        stop()  # type: ignore[operator]


def test_four_concurrent_associations(node: RunningNode, tmp_path: Path) -> None:
    studies = [
        write_series(SeriesSpec(n_slices=12, rows=128, columns=128, seed=i), tmp_path / f"s{i}")
        for i in range(4)
    ]
    results: dict[int, list[int | None]] = {}

    def send(index: int) -> None:
        results[index] = [status_code(s) for s in store_files(node.port, studies[index])]

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(results[i] == [SUCCESS] * 12 for i in range(4)), results
    assert _counts(node) == (4, 4, 48)
    stored = {p.name for p in node.stored_files()}
    sent = {f"{dcmread(p, stop_before_pixels=True).SOPInstanceUID}.dcm" for paths in studies for p in paths}
    assert stored == sent


def test_series_uid_of_another_study_is_refused(node: RunningNode, one_slice: Path, tmp_path: Path) -> None:
    [ok] = store_files(node.port, [one_slice])
    other = _rewrite(one_slice, tmp_path / "other.dcm", StudyInstanceUID=generate_uid(), SOPInstanceUID=generate_uid())
    ds = dcmread(other)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(other, enforce_file_format=False)
    [status] = store_files(node.port, [other])
    assert (status_code(ok), status_code(status)) == (SUCCESS, DATASET_DOES_NOT_MATCH_SOP_CLASS)
    assert "another study" in status.ErrorComment
    assert _counts(node) == (1, 1, 1) and len(node.stored_files()) == 1


def test_a_disk_that_fills_while_a_data_set_arrives_gets_a700_and_the_association_goes_on(tmp_path: Path) -> None:
    # The guard is off (0 MB), so only the spool write itself meets the full disk: pynetdicom
    # would abort the association there; the sender must get a status, and nothing may stay.
    big = write_series(SeriesSpec(n_slices=2, rows=512, columns=512, seed=3), tmp_path / "big")
    small = write_series(SeriesSpec(n_slices=1, rows=64, columns=64, seed=4), tmp_path / "small")[0]
    with small_tmpfs(tmp_path / "disk", 8) as disk:
        config = NodeConfig(workdir=tmp_path / "node", min_free_mb=0, storage_dir=disk / "storage")
        running, stop = start_node(config)
        try:
            ballast = fill_to(disk, 200 * 1024)  # room for a 64² slice, not for a 512² one (0.5 MB)
            statuses = store_files(running.port, [big[0], small])  # one association
            assert [status_code(s) for s in statuses] == [OUT_OF_RESOURCES, SUCCESS]
            assert statuses[0].ErrorComment.startswith("disk full while receiving")
            assert list(running.store.incoming.iterdir()) == [], "the partial spool file stayed"
            assert _counts(running) == (1, 1, 1) and len(running.stored_files()) == 1
            # The same from DCMTK's storescu, as a PACS sends: a status per file, the association goes on.
            answers = storescu_responses(running.port, [big[0], small])
            assert answers == {big[0]: "Refused: OutOfResources", small: "Success"}
            assert list(running.store.incoming.iterdir()) == []
            ballast.unlink()  # the operator frees space: the same instance is taken now
            assert [status_code(s) for s in store_files(running.port, big)] == [SUCCESS, SUCCESS]
            assert _counts(running) == (2, 2, 3) and len(running.stored_files()) == 3
            assert list(running.store.incoming.iterdir()) == []
        finally:
            stop()  # type: ignore[operator]
