"""UID-safe paths, atomic durable publishing and the disk guard."""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path, PurePosixPath

import pytest

from dicom_node.dicom.storage import InstanceStore, instance_path, path_component
from dicom_node.errors import DiskFullError, StorageError


def test_plain_uids_are_used_as_they_are() -> None:
    assert path_component("1.2.840.10008.5.1.4.1.1.2") == "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.parametrize(
    "uid", ["../../x", "..", ".", "1.2/3", "1.2 3", "a" * 10, "1." * 40, "/etc/passwd", "1.2\x00", ""]
)
def test_unsafe_uids_become_hashes(uid: str) -> None:
    component = path_component(uid)
    assert component.startswith("x") and len(component) == 41
    assert "/" not in component and component not in (".", "..")


def test_hashes_are_stable_and_distinct() -> None:
    assert path_component("../a") == path_component("../a")
    assert path_component("../a") != path_component("../b")


def test_instance_path_never_leaves_the_root(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    relative = instance_path("../../x", "..", "../../../etc/passwd")
    assert store.absolute(relative).is_relative_to(store.root)
    with pytest.raises(StorageError):
        store.absolute(PurePosixPath("../outside.dcm"))


def test_publish_moves_the_file_into_place(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    source = tmp_path / "incoming.dcm"
    source.write_bytes(b"DICM-bytes")
    size = store.publish(source, instance_path("1.2", "1.2.3", "1.2.3.4")).size
    final = store.root / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert size == 10 and final.read_bytes() == b"DICM-bytes"
    assert not source.exists()
    assert list(store.incoming.iterdir()) == []


def _dead_pid() -> int:
    """A pid no process has now."""
    pid = 4_000_000
    while Path(f"/proc/{pid}").exists():
        pid -= 1
    return pid


def test_prepare_sweeps_only_what_a_dead_process_left(tmp_path: Path) -> None:
    """Processes sharing the root must not delete each other's files in flight."""
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    me = f"{socket.gethostname()}~{os.stat('/proc/self/ns/pid').st_ino}"
    names = {
        "dead": f"{me}~{_dead_pid()}~a.part",  # a crashed process of this host
        "mine": f"{me}~{os.getpid()}~b.part",  # this process, restarted under the same pid
        "live": f"{me}~{os.getppid()}~c.part",  # another live process of this host
        "other host": f"elsewhere~{os.stat('/proc/self/ns/pid').st_ino}~{_dead_pid()}~d.part",
        "other container": f"{socket.gethostname()}~1~{_dead_pid()}~e.part",  # same host name, own pid space
        "old": "tmp-unknown.part",  # unknown name, but two days old
        "new": "tmp-unknown-new.part",  # unknown name, recent
    }
    for name in names.values():
        (store.incoming / name).write_bytes(b"half")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(store.incoming / names["old"], (two_days_ago, two_days_ago))
    (store.incoming / "sub").mkdir()  # not a temporary file, however old: left alone
    os.utime(store.incoming / "sub", (two_days_ago, two_days_ago))
    store.prepare()
    left = sorted(p.name for p in store.incoming.iterdir())
    assert left == sorted([names["live"], names["other host"], names["other container"], names["new"], "sub"])


def test_a_listener_that_exited_unreaped_left_its_file_to_the_sweep(tmp_path: Path) -> None:
    """After kill -9 of `run` its listener is a zombie of a pid 1 that may never reap it (many
    containers, CI's included): the restarted node must still sweep the file it was writing."""
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, left unreaped
        me = f"{socket.gethostname()}~{os.stat('/proc/self/ns/pid').st_ino}"
        (store.incoming / f"{me}~{zombie.pid}~a.part").write_bytes(b"half")
        store.prepare()
        assert list(store.incoming.iterdir()) == []
    finally:
        zombie.wait()


def test_a_running_process_sweeps_periodically_but_never_its_own_files(tmp_path: Path) -> None:
    """The hourly sweep removes what the start-up sweep would, except this process's transfers."""
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    me = f"{socket.gethostname()}~{os.stat('/proc/self/ns/pid').st_ino}"
    dead = store.incoming / f"{me}~{_dead_pid()}~a.part"
    mine = store.incoming / f"{me}~{os.getpid()}~b.part"
    stale = store.incoming / "elsewhere~1~2~c.part"
    stop = threading.Event()
    thread = store.sweep_periodically(stop, interval_s=0.05)
    try:
        for path in (dead, mine, stale):
            path.write_bytes(b"half")
        two_days_ago = time.time() - 2 * 24 * 3600
        os.utime(stale, (two_days_ago, two_days_ago))
        deadline = time.monotonic() + 10
        while (dead.exists() or stale.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not dead.exists() and not stale.exists()
        assert mine.exists()
        assert store.sweep_incoming() == 0
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


def test_disk_guard(tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "root", min_free_bytes=2**62)
    store.prepare()
    with pytest.raises(DiskFullError, match="guard"):
        store.check_free_space(1)
    InstanceStore(tmp_path / "root", min_free_bytes=0).check_free_space(1)


def test_the_guard_s_flag_and_words_come_from_one_reading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the instant the guard is crossed, status must not say "ok" beside a refusing flag."""
    store = InstanceStore(tmp_path / "root", min_free_bytes=100 * 2**20)
    store.prepare()
    readings = iter([99 * 2**20, 101 * 2**20])  # a second reading would see the other side
    monkeypatch.setattr(store, "free_bytes", lambda: next(readings))
    state = store.guard_state()
    assert state.refusing and state.text() == "99 MiB free, guard 100 MiB: refusing C-STORE (A700)"
    state = store.guard_state()
    assert not state.refusing and state.text().endswith(": ok")


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record, in order, the link, rename and fsync calls storage makes (fsync: of a file or a directory)."""
    calls: list[str] = []
    real_fsync, real_link, real_replace = os.fsync, os.link, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def link(src: object, dst: object) -> None:
        calls.append("link")
        real_link(src, dst)  # type: ignore[arg-type]

    def replace(src: object, dst: object) -> None:
        calls.append("replace")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    return calls


def _store_with_series_dir(tmp_path: Path) -> InstanceStore:
    """A prepared store whose series directory exists, so publishing makes no directories."""
    store = InstanceStore(tmp_path / "root", 0)
    store.prepare()
    store.absolute(RELATIVE).parent.mkdir(parents=True)
    return store


RELATIVE = instance_path("1.2", "1.2.3", "1.2.3.4")


def _incoming(tmp_path: Path, data: bytes) -> Path:
    """A received file, as pynetdicom leaves it on the storage file system."""
    source = tmp_path / "incoming.dcm"
    source.write_bytes(data)
    return source


def test_a_new_name_is_linked_before_its_data_and_directory_are_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ext4 the file's fsync then also commits the new entry (one journal commit, not two)."""
    store = _store_with_series_dir(tmp_path)
    source = _incoming(tmp_path, b"DICM-new")
    calls = _record_syncs(monkeypatch)
    assert store.publish_new(source, RELATIVE).size == 8  # type: ignore[union-attr]
    assert calls == ["link", "fsync file", "fsync dir"]
    assert store.absolute(RELATIVE).read_bytes() == b"DICM-new" and not source.exists()


def test_a_replacement_is_fsynced_before_it_is_renamed_over_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old file may be recorded: data that is not durable must never replace it."""
    store = _store_with_series_dir(tmp_path)
    store.absolute(RELATIVE).write_bytes(b"DICM-old")
    source = _incoming(tmp_path, b"DICM-newer")
    calls = _record_syncs(monkeypatch)
    assert store.publish(source, RELATIVE).size == 10
    assert calls == ["fsync file", "replace", "fsync dir"]
    assert store.absolute(RELATIVE).read_bytes() == b"DICM-newer"


def test_publish_new_keeps_a_taken_name_and_the_source(tmp_path: Path) -> None:
    store = _store_with_series_dir(tmp_path)
    store.absolute(RELATIVE).write_bytes(b"DICM-first")
    source = _incoming(tmp_path, b"DICM-second")
    assert store.publish_new(source, RELATIVE) is None
    assert store.absolute(RELATIVE).read_bytes() == b"DICM-first" and source.read_bytes() == b"DICM-second"


@pytest.mark.parametrize("failing", ["fsync file", "fsync dir"])
def test_a_failed_fsync_of_a_new_name_leaves_no_file_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    """The name was linked before the fsync: it is taken back, the caller answers a failure."""
    store = _store_with_series_dir(tmp_path)
    source = _incoming(tmp_path, b"DICM-new")
    calls = _record_syncs(monkeypatch)
    recording_fsync = os.fsync

    def fsync(fd: int) -> None:
        recording_fsync(fd)
        if calls[-1] == failing:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError, match="Input/output error"):
        store.publish_new(source, RELATIVE)
    assert not store.absolute(RELATIVE).exists()
    assert list(store.incoming.iterdir()) == []


def test_a_failed_fsync_keeps_a_file_another_writer_put_under_the_name_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A concurrent resend may replace our link before our fsync fails: its file is not ours to remove."""
    store = _store_with_series_dir(tmp_path)
    source = _incoming(tmp_path, b"DICM-ours")
    theirs = tmp_path / "theirs.dcm"
    theirs.write_bytes(b"DICM-theirs")
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        os.replace(theirs, store.absolute(RELATIVE))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(StorageError):
        store.publish_new(source, RELATIVE)
    assert store.absolute(RELATIVE).read_bytes() == b"DICM-theirs"


def test_a_failed_commit_removes_our_file_but_not_a_resend_that_replaced_it(tmp_path: Path) -> None:
    """Association A links the instance; a resend over association B finds the file before
    A's row, takes it for a crash leftover and replaces it; A's commit then fails. A must
    not remove B's file, which B may be recording."""
    store = _store_with_series_dir(tmp_path)
    ours = store.publish_new(_incoming(tmp_path, b"DICM-A"), RELATIVE)
    assert ours is not None
    resend = store.publish(_incoming(tmp_path, b"DICM-B"), RELATIVE)
    store.remove_if_same(RELATIVE, ours)
    assert store.absolute(RELATIVE).read_bytes() == b"DICM-B", "the resend's file was removed"
    store.remove_if_same(RELATIVE, resend)
    assert not store.absolute(RELATIVE).exists(), "our own file, unchanged, is removed"
    store.remove_if_same(RELATIVE, resend)  # already gone: nothing to do
