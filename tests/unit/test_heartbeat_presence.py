"""What ``status`` concludes from the processes' heartbeat rows, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta

from dicom_node.admin.text import node_warning
from dicom_node.db.heartbeat import NodePresence, ProcessSeen, listener_reload_pids

NOW = datetime(2026, 12, 4, 10, 0, 0)


def seen(role: str, pid: int, **extra: object) -> ProcessSeen:
    """A live process seen a second ago."""
    return ProcessSeen(
        role, "host", pid, None, NOW - timedelta(minutes=5), NOW - timedelta(seconds=1), None, alive=True,
        reload_pid=pid, **extra,  # type: ignore[arg-type]
    )


def running(*processes: ProcessSeen) -> NodePresence:
    return NodePresence(NOW, list(processes), None)


def test_a_process_serving_both_roles_counts_for_each_role_whole() -> None:
    both = running(seen("listener+worker", 12))
    assert both.roles() == {"listener", "worker"}
    assert node_warning(both) is None
    assert listener_reload_pids(both) == [12]


def test_a_role_is_compared_whole_not_as_a_part_of_another_name() -> None:
    """A role whose name merely contains "worker" or "listener" is neither."""
    odd = running(seen("listener", 10), seen("networker", 11), seen("listener-probe", 13))
    assert odd.roles() == {"listener", "networker", "listener-probe"}
    assert node_warning(odd) == "no worker runs: studies are received but neither analysed nor sent (start `dicom-node worker`)"
    assert listener_reload_pids(odd) == [10]
