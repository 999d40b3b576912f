"""Listener processes share one listening socket: pynetdicom's server must accept on a socket it
did not bind, and stopping one server must leave the socket to the others.

This leans on pynetdicom's AssociationServer methods that SharedSocketServer overrides
(server_bind, server_activate, server_close, shutdown); if pynetdicom changes them, this fails.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.ingest import scp
from dicom_node.ingest.scp import MAX_ACCEPT_YIELD_S, SharedSocketServer, accept_yield_s
from dicom_node.supervisor import listening_socket


def _server(sock: socket.socket, sharing_processes: int = 2) -> SharedSocketServer:
    ae = AE(ae_title="SHARED")
    ae.add_supported_context(Verification)
    server = ae.make_server(
        ("127.0.0.1", 0), server_class=SharedSocketServer, shared_socket=sock, sharing_processes=sharing_processes
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _echo(port: int) -> bool:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="SHARED")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return getattr(status, "Status", None) == 0


def test_two_servers_on_one_socket_and_one_stopping_leaves_the_other_serving() -> None:
    bound = listening_socket("127.0.0.1", 0)
    port = bound.getsockname()[1]
    first = _server(socket.socket(fileno=bound.dup().detach()))
    second = _server(socket.socket(fileno=bound.dup().detach()))
    try:
        assert first.server_address[1] == second.server_address[1] == port
        assert all(_echo(port) for _ in range(4))
        first.shutdown()
        assert all(_echo(port) for _ in range(4)), "the other server still accepts on the shared socket"
    finally:
        second.shutdown()
        bound.close()


def _wait_for(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_busy_listener_lets_an_idle_one_take_the_next_connection() -> None:
    """Associations opened at once spread over the listener processes (here: two servers in
    one process, as two listener processes would share the socket)."""
    bound = listening_socket("127.0.0.1", 0)
    port = bound.getsockname()[1]
    busy = _server(socket.socket(fileno=bound.dup().detach()))
    clients: list[socket.socket] = []
    idle: SharedSocketServer | None = None
    try:
        for _ in range(4):
            clients.append(socket.create_connection(("127.0.0.1", port)))
        assert _wait_for(lambda: busy.serving() == 4), "the only server took every connection"
        idle = _server(socket.socket(fileno=bound.dup().detach()))
        clients.append(socket.create_connection(("127.0.0.1", port)))
        assert _wait_for(lambda: busy.serving() + idle.serving() == 5)
        assert idle.serving() == 1, "the idle server, not the one serving four, took the new connection"
        for client in clients:
            client.close()
        assert _wait_for(lambda: busy.serving() + idle.serving() == 0), "closed connections are no longer counted"
    finally:
        for client in clients:
            client.close()
        busy.shutdown()
        if idle is not None:
            idle.shutdown()
        bound.close()


def test_the_wait_before_accepting_grows_with_the_associations_served_and_is_bounded() -> None:
    assert accept_yield_s(0) == 0
    assert 0 < accept_yield_s(1) < accept_yield_s(2) <= MAX_ACCEPT_YIELD_S
    assert accept_yield_s(100) == MAX_ACCEPT_YIELD_S


def test_the_only_listener_process_waits_for_nobody(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[int] = []
    monkeypatch.setattr(scp, "accept_yield_s", lambda serving: slept.append(serving) or 0.0)
    bound = listening_socket("127.0.0.1", 0)
    port = bound.getsockname()[1]
    lone = _server(socket.socket(fileno=bound.dup().detach()), sharing_processes=1)
    clients: list[socket.socket] = []
    try:
        for _ in range(3):
            clients.append(socket.create_connection(("127.0.0.1", port)))
            assert _wait_for(lambda: lone.serving() == len(clients))
    finally:
        for client in clients:
            client.close()
        lone.shutdown()
        bound.close()
    assert slept == [], "a lone listener delayed its accepts"
