"""free_port, which every node, peer and Orthanc of the suite gets its ports from, never hands
out a port twice and stays out of the range the kernel gives to sockets of its own choosing."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.support.node import _port_pool, free_port


def test_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(port < ephemeral_low for port in ports)


def test_a_port_someone_else_holds_is_skipped() -> None:
    with socket.create_server(("127.0.0.1", 0)) as held:  # as a node or a peer would
        taken = held.getsockname()[1]
        _port_pool().next_port = taken  # the pool's next candidate
        assert free_port() != taken
