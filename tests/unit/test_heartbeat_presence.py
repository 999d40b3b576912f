"""What ``status`` concludes from the processes' heartbeat rows, without a database."""

from __future__ import annotations

from datetime import datetime, timedelta

from dicom_node.admin.text import config_lines, node_warning, page_lines
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


NODE_FILE = "/etc/dicom-node/dicom-node.toml"


def test_the_web_page_line_names_the_page_the_running_node_serves_and_this_file_s_when_it_differs() -> None:
    configured = "http://127.0.0.1:9120/"
    node = running(seen("listener+worker", 12, page_url="http://127.0.0.1:9110/", config_path=NODE_FILE))
    assert page_lines(configured, node) == [
        "web page: http://127.0.0.1:9110/ (this file says http://127.0.0.1:9120/: the node serves it once restarted with this file)"
    ]
    assert page_lines("http://127.0.0.1:9110/", node) == ["web page: http://127.0.0.1:9110/"]
    assert page_lines(configured, NodePresence(NOW, [], None)) == [f"web page: {configured} (while the node runs)"]
    assert page_lines(None, NodePresence(NOW, [], None)) == []
    # Each process's own page: a worker started alone serves its own port.
    apart = running(seen("listener", 10, page_url="http://127.0.0.1:9110/"), seen("worker", 11, page_url="http://127.0.0.1:9111/"))
    assert page_lines("http://127.0.0.1:9110/", apart) == ["web page: http://127.0.0.1:9110/", "web page: http://127.0.0.1:9111/"]


def test_another_file_than_the_running_node_s_is_said_in_one_line() -> None:
    node = running(seen("listener", 10, config_path=NODE_FILE), seen("worker", 11, config_path=NODE_FILE))
    assert config_lines(NODE_FILE, node) == [f"CONFIG       {NODE_FILE}"]
    other = config_lines("/tmp/other.toml", node)
    assert other == [
        "CONFIG       /tmp/other.toml",
        f"             the running node reads {NODE_FILE}: destinations below are this file's and rejected callers "
        f"are not checked against it (`dicom-node status --config {NODE_FILE}`)",
    ]
